"""Options that make each registered backbone small enough to train a step on CPU in tests."""

from __future__ import annotations

from typing import Any

import pytest
from monai.utils import optional_import

_, HAS_EINOPS = optional_import("einops")

# Non-cubic on purpose, so a mix-up of axes changes shapes and fails.
TEST_SHAPE = (16, 20, 12)

TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "sfcn": {"channels": [4, 8, 8], "dropout": 0.0},
    "densenet121": {"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 2},
    "vit3d": {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 2, "num_heads": 2},
    "slice2d": {
        "encoder": "cnn",
        "cnn_channels": [4, 8],
        "embed_dim": 8,
        "pooling": "attention",
        "attention_heads": 2,
    },
    "r3d_18": {"layers": [1, 1, 1, 1]},
    "r2plus1d_18": {"layers": [1, 1, 1, 1]},
    "swin3d_t": {
        "embed_dim": 8,
        "depths": [1, 1],
        "num_heads": [1, 2],
        "window_size": [2, 2, 2],
        "stochastic_depth_prob": 0.0,
    },
    "mvit_v2_s": {
        "embed_dim": 8,
        "depths": [1, 1],
        "num_heads": 1,
        "kv_stride": 2,
        "stochastic_depth_prob": 0.0,
    },
}

NEEDS_EINOPS = pytest.mark.skipif(
    not HAS_EINOPS, reason="vit3d needs the einops package (MONAI's ViT), which is not installed"
)


def backbone_params(names: list[str]) -> list[Any]:
    """``pytest.param`` per backbone name, skipping vit3d when einops is missing."""
    return [
        pytest.param(name, id=name, marks=[NEEDS_EINOPS] if name == "vit3d" else [])
        for name in names
    ]
