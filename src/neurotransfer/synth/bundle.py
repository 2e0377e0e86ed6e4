"""Load the published brain LDM: the MONAI model-zoo bundle
``brain_image_synthesis_latent_diffusion_model`` (Pinaya et al. 2022), from local files.

The bundle ships ``models/autoencoder.pt`` and ``models/model.pt``: plain state dicts written by
the old MONAI GenerativeModels package, whose attention and upsampling layers were renamed when
the networks moved into MONAI core. MONAI converts them with ``load_old_state_dict`` (what the
bundle's ``load_old: 1`` does); that method copies whatever keys it finds and keeps the random
initialisation of the rest, so before calling it this module checks the file's keys against the
configured architecture and refuses a file that does not fit it, naming the keys.

Files are read without pickle (``torch.load(weights_only=True)``) or as safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from neurotransfer.config import PretrainedLDMSettings
from neurotransfer.models.weights import read_state_dict as read_weights_file
from neurotransfer.synth.networks import build_autoencoder, build_unet

Layout = Literal["auto", "generative", "monai"]


def legacy_key(key: str) -> str:
    """The GenerativeModels name of a MONAI-core ``AutoencoderKL``/``DiffusionModelUNet`` key.

    The inverse of the renames MONAI's ``load_old_state_dict`` undoes: self-attention
    projections lost their ``attn.`` level and ``out_proj`` was ``proj_attn``; the cross-
    attention output was ``to_out.0``; upsampling convolutions were ``conv``, not ``postconv``.
    """
    if ".transformer_blocks." in key and ".out_proj." in key:
        return key.replace(".out_proj.", ".to_out.0.")
    for projection in ("to_q", "to_k", "to_v"):
        if f".attn.{projection}." in key:
            return key.replace(f".attn.{projection}.", f".{projection}.")
    if ".attn.out_proj." in key:
        return key.replace(".attn.out_proj.", ".proj_attn.")
    if ".postconv." in key:
        return key.replace(".postconv.", ".conv.")
    return key


def to_legacy_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MONAI-core state dict renamed to the GenerativeModels layout the bundle files use."""
    return {legacy_key(k): v for k, v in state_dict.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A bundle file's state dict: safetensors or weights-only torch, pickle refused, a
    ``{"state_dict": ...}`` checkpoint unwrapped
    (:func:`neurotransfer.models.weights.read_state_dict`)."""
    return read_weights_file(path, unwrap_checkpoint=True)


def _mismatch(path: Path, what: str, expected: set[str], found: set[str], layout: str) -> str:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    return (
        f"{path}: weights do not fit the configured {what} architecture ({layout} layout): "
        f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) "
        f"{unexpected[:5]}; check synthesize.pretrained.{what} against the bundle's "
        "configs/inference.json"
    )


def load_weights(model: nn.Module, path: Path, layout: Layout, what: str) -> str:
    """Load ``path`` into ``model`` in the given (or detected) layout; return the layout used."""
    state = read_state_dict(path)
    monai_keys = set(model.state_dict())
    legacy_keys = {legacy_key(k) for k in monai_keys}
    found = set(state)
    if layout == "auto":
        if found == monai_keys:
            layout = "monai"
        elif found == legacy_keys:
            layout = "generative"
        else:
            closest = min(
                (("monai", monai_keys), ("generative", legacy_keys)),
                key=lambda item: len(item[1] ^ found),
            )
            raise ValueError(_mismatch(path, what, closest[1], found, closest[0]))
    expected = monai_keys if layout == "monai" else legacy_keys
    if found != expected:
        raise ValueError(_mismatch(path, what, expected, found, layout))
    try:
        if layout == "monai" or legacy_keys == monai_keys:
            model.load_state_dict(state)
        else:
            model.load_old_state_dict(state)  # type: ignore[operator]
    except RuntimeError as exc:  # tensor shapes that do not fit the architecture
        raise ValueError(f"{path}: cannot load into the configured {what}: {exc}") from exc
    return layout


def load_pretrained_ldm(
    settings: PretrainedLDMSettings, root: Path
) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    """Build the configured networks and load the bundle's (or compatible) weights into them."""
    autoencoder = build_autoencoder(settings.autoencoder)
    unet = build_unet(settings.diffusion, settings.autoencoder.latent_channels)
    layouts = {
        "autoencoder": load_weights(
            autoencoder, root / settings.autoencoder_path, settings.layout, "autoencoder"
        ),
        "diffusion": load_weights(unet, root / settings.unet_path, settings.layout, "diffusion"),
    }
    return autoencoder.eval(), unet.eval(), layouts
