"""Tiny settings for the synth tests, and the einops requirement of MONAI's diffusion UNet."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from monai.utils import optional_import

from neurotransfer.config import Settings, settings_from_dict

_, HAS_EINOPS = optional_import("einops")
needs_einops = pytest.mark.skipif(
    not HAS_EINOPS,
    reason="MONAI's DiffusionModelUNet needs the einops package, which is not installed",
)

SHAPE = (16, 16, 16)
SPACING = (4.0, 4.0, 4.0)

TINY_SYNTHESIZE: dict[str, Any] = {
    # the settings' pretrain.source is scratch: train anyway (the stage's own tests)
    "when": "always",
    "accelerator": "cpu",
    "precision": "32",
    "autoencoder": {
        "net": {"channels": [8, 16], "attention_levels": [False, False], "norm_num_groups": 8},
        "epochs": 2,
        "batch_size": 8,
        "lr": 2e-3,
    },
    "diffusion": {
        "net": {
            "channels": [16, 32],
            "attention_levels": [False, True],
            "num_head_channels": [0, 16],
            "norm_num_groups": 8,
        },
        "epochs": 2,
        "batch_size": 16,
        "lr": 2e-3,
    },
    "sampling": {"n_samples": 6, "ddim_steps": 5, "batch_size": 4},
    "quality": {
        "holdout_fraction": 0.25,
        "ms_ssim_pairs": 10,
        "ms_ssim_kernel_size": 3,
        "feature_batch_size": 8,
        "montage_columns": 4,
    },
}


def _merge(base: dict, edits: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_settings(shape: tuple[int, int, int] = SHAPE, **synthesize: Any) -> Settings:
    """Full settings around a tiny `synthesize` block (edits merged into TINY_SYNTHESIZE)."""
    raw = {
        "data": {
            "name": "phantom",
            "datasets": {"pool": {"path": "data/raw/pool", "role": "pool"}},
            "preprocess": {"shape": list(shape), "spacing": list(SPACING)},
        },
        "tasks": {"age": {"kind": "regression", "target": "age", "datasets": ["pool"]}},
        # A narrow SFCN: the default one max-pools 5 times, too often for 16^3 volumes.
        "model": {"name": "sfcn", "options": {"channels": [4, 8, 8]}},
        "synthesize": _merge(TINY_SYNTHESIZE, synthesize),
    }
    return settings_from_dict(raw, source="tiny test settings")


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every weight with seeded noise: MONAI zero-initialises the UNet's output layer,
    so a freshly built UNet would predict zeros whatever its input."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for tensor in module.state_dict().values():
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return module
