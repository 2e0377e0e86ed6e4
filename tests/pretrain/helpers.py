"""A tiny fake project for the pretrain tests: a phantom pool, a synthetic dataset, settings.

The pool comes from the synth tests' phantom writer (manifest + fp16 arrays, ages that change
the anatomy); the synthetic dataset is written with the synthesize stage's own writer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurotransfer.config import Settings, settings_from_dict
from neurotransfer.synth.store import write_synthetic_dataset
from tests.synth.phantoms import phantom_volume, write_phantom_pool

SHAPE = (16, 16, 16)
SPACING = (4.0, 4.0, 4.0)
TINY_SFCN = {"name": "sfcn", "options": {"channels": [4, 8, 8], "dropout": 0.0}}


def write_synthetic(root: Path, n: int, shape: tuple[int, int, int] = SHAPE, seed: int = 1) -> Path:
    """``data/synthetic`` as the synthesize stage writes it (volumes + participants.tsv)."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 90, n).round(2)
    sexes = np.where(np.arange(n) % 2 == 0, "F", "M")
    volumes = torch.from_numpy(
        np.stack([phantom_volume(shape, a, s, rng) for a, s in zip(ages, sexes, strict=True)])
    )[:, None]
    participants = pd.DataFrame(
        {
            "participant_id": [f"sub-synth{i + 1:04d}" for i in range(n)],
            "age": ages,
            "sex": sexes,
            "sex_scaled": (sexes == "M").astype(float),
            "age_scaled": (ages - 20) / 70,
            "csf_volume_ml": rng.uniform(20, 80, n).round(2),
            "brain_volume_ml": rng.uniform(1000, 1400, n).round(2),
        }
    )
    folder = root / "data" / "synthetic"
    write_synthetic_dataset(folder, volumes, participants, SPACING, {"Name": "test"})
    return folder


def make_project(root: Path, n_pool: int = 12, n_synthetic: int = 0) -> Path:
    write_phantom_pool(root, n_pool=n_pool, shape=SHAPE)
    if n_synthetic:
        write_synthetic(root, n_synthetic)
    return root


def raw_settings(pretrain: dict[str, Any], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameter mapping of :func:`settings` (what a params.yaml would hold)."""
    return {
        "data": {
            "name": "phantom",
            "datasets": {"pool": {"path": "data/raw/pool", "role": "pool"}},
            "preprocess": {"shape": list(SHAPE), "spacing": list(SPACING)},
        },
        "tasks": {"age": {"kind": "regression", "target": "age", "datasets": ["pool"]}},
        "model": copy.deepcopy(model or TINY_SFCN),
        "pretrain": {"accelerator": "cpu", "precision": "32", **pretrain},
    }


def settings(pretrain: dict[str, Any], model: dict[str, Any] | None = None) -> Settings:
    return settings_from_dict(raw_settings(pretrain, model), source="tiny pretrain test settings")
