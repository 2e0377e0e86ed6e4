"""The options checks of the shipped backbones' external weights, without torch.

Each model module registers its external counterparts (``@register_backbone(..., external=[...])``)
with these checks; ``config.py`` runs the same functions when it validates ``pretrain.source``
against ``model`` for a shipped backbone, so loading the settings (every stage does, first) never
has to import torch and the model families (about 8 s) to say that a ViT is the wrong size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# torchvision's vit_b_16: the sizes a vit3d must share to take its weights (fewer layers do).
VIT_B_16 = {"hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "num_layers": 12}


def vit_size_problem(model: Mapping[str, Any], source: Mapping[str, int]) -> str:
    """Why a vit3d of ``model`` sizes cannot take the weights of a ViT of ``source`` sizes
    ('' when it can), naming the ``model.options`` to change and the values to set."""
    wrong = [
        f"{key} {model[key]} (vit_b_16: {source[key]})"
        for key in ("hidden_size", "mlp_dim", "num_heads")
        if model[key] != source[key]
    ]
    if model["num_layers"] > source["num_layers"]:
        wrong.append(
            f"num_layers {model['num_layers']} (vit_b_16 has {source['num_layers']}; "
            "fewer are fine)"
        )
    if not wrong:
        return ""
    return (
        "pretrain=imagenet initialises vit3d from torchvision's vit_b_16, whose sizes the model "
        f"must share; model.options has {', '.join(wrong)}: set "
        f"hidden_size={source['hidden_size']}, mlp_dim={source['mlp_dim']}, "
        f"num_heads={source['num_heads']}, num_layers<={source['num_layers']}"
    )


def resnet18_encoder_problem(options: Mapping[str, Any]) -> str:
    """Why slice2d with ``options`` cannot take ImageNet resnet18 weights ('' when it can)."""
    if options["encoder"] == "resnet18":
        return ""
    return (
        "pretrain=imagenet initialises slice2d's ResNet18 slice encoder, but "
        f"model.options.encoder is {options['encoder']!r}; set it to 'resnet18'"
    )


def vit_b_16_problem(options: Mapping[str, Any]) -> str:
    """Why vit3d with ``options`` cannot take torchvision's ImageNet vit_b_16 ('' when it can)."""
    return vit_size_problem(options, VIT_B_16)
