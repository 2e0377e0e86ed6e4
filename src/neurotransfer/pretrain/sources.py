"""Which initialisation source works with which architecture, and where its weights come from.

``scratch``, ``synthetic`` and ``ssl`` work with every backbone (they start from the
architecture's own initialisation). The external sources need a torchvision counterpart:

- ``imagenet`` (2D ImageNet-1k weights): ``slice2d`` with its ResNet18 encoder (used directly),
  ``r3d_18`` (inflated from ``resnet18``), ``densenet121`` (inflated from ``densenet121``) and
  ``vit3d`` (from ``vit_b_16``);
- ``kinetics`` (Kinetics-400 video weights): ``r3d_18``, ``r2plus1d_18``, ``swin3d_t``,
  ``mvit_v2_s``.

:func:`check_source` runs before any data or weights are read, so an impossible combination
stops the stage at start with the architectures that would work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neurotransfer.config import SettingsError

TRAINED_SOURCES = ("synthetic", "ssl")
EXTERNAL_SOURCES = ("imagenet", "kinetics")


@dataclass(frozen=True)
class Counterpart:
    """The torchvision model whose weights initialise a backbone, and its default weights."""

    model: str  # torchvision model name, for torchvision.models.get_model_weights
    default_weights: str  # member of its weights enum


COUNTERPARTS: dict[str, dict[str, Counterpart]] = {
    "imagenet": {
        "slice2d": Counterpart("resnet18", "IMAGENET1K_V1"),
        "r3d_18": Counterpart("resnet18", "IMAGENET1K_V1"),
        "densenet121": Counterpart("densenet121", "IMAGENET1K_V1"),
        "vit3d": Counterpart("vit_b_16", "IMAGENET1K_V1"),
    },
    "kinetics": {
        "r3d_18": Counterpart("r3d_18", "KINETICS400_V1"),
        "r2plus1d_18": Counterpart("r2plus1d_18", "KINETICS400_V1"),
        "swin3d_t": Counterpart("swin3d_t", "KINETICS400_V1"),
        "mvit_v2_s": Counterpart("mvit_v2_s", "KINETICS400_V1"),
    },
}


def counterpart(source: str, architecture: str) -> Counterpart:
    """The torchvision model behind ``source`` for ``architecture`` (external sources only)."""
    check_source(source, architecture, {})
    return COUNTERPARTS[source][architecture]


def check_source(source: str, architecture: str, options: Mapping[str, Any]) -> None:
    """Fail with a :class:`SettingsError` when ``source`` cannot initialise ``architecture``."""
    if source not in EXTERNAL_SOURCES:
        return
    supported = COUNTERPARTS[source]
    if architecture not in supported:
        raise SettingsError(
            f"pretrain={source} has no weights for model {architecture!r}: it supports "
            f"{sorted(supported)} (choose one of them with `-S model=<name>`, or another "
            "pretrain source: scratch, synthetic, ssl)"
        )
    if source == "imagenet" and architecture == "vit3d":
        _check_vit_b_16_sizes(options)
    if architecture == "slice2d" and options.get("encoder", "resnet18") != "resnet18":
        raise SettingsError(
            f"pretrain={source} initialises slice2d's ResNet18 slice encoder, but "
            f"model.options.encoder is {options.get('encoder')!r}; set it to 'resnet18'"
        )


# torchvision's vit_b_16: the sizes a vit3d must share to take its weights.
VIT_B_16 = {"hidden_size": 768, "mlp_dim": 3072, "num_heads": 12}
VIT_B_16_LAYERS = 12


def _check_vit_b_16_sizes(options: Mapping[str, Any]) -> None:
    from neurotransfer.models import backbone_options

    resolved = {**backbone_options("vit3d"), **options}
    wrong = [f"{k} {resolved[k]} (vit_b_16: {v})" for k, v in VIT_B_16.items() if resolved[k] != v]
    if resolved["num_layers"] > VIT_B_16_LAYERS:
        wrong.append(f"num_layers {resolved['num_layers']} (vit_b_16 has {VIT_B_16_LAYERS})")
    if wrong:
        raise SettingsError(
            "pretrain=imagenet initialises vit3d from torchvision's vit_b_16, whose sizes the "
            f"model must share; model.options has {', '.join(wrong)}: set hidden_size=768, "
            "mlp_dim=3072, num_heads=12, num_layers<=12"
        )
