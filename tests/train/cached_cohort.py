"""A small cached cohort (manifest + fp16 volumes) whose volumes carry the AD label, for tests
that run the fine-tuning recipe through the real data module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import Settings, settings_from_dict

CONF = Path(__file__).resolve().parents[2] / "conf"
SHAPE = (16, 16, 16)


def write_cohort(root: Path, n_train: int = 64, signal: float = 0.5, seed: int = 0) -> None:
    """A manifest + fp16 volumes: AD subjects are brighter by `signal` on average, blurred by a
    per-volume intensity offset (sd 0.3), so the classes overlap and data helps."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * n_train + ["val"] * 24 + ["test"] * 30 + ["ood_test"] * 30
    rows = []
    for i, split in enumerate(splits):
        ad = i % 2 == 0
        site = "siteC" if split == "ood_test" else ("siteA" if i % 3 else "siteB")
        volume = rng.normal(0.0, 1.0, SHAPE) + (signal if ad else 0.0)
        volume += rng.normal(0.0, 0.3)
        rel = Path("data/processed/adni") / f"sub-{i:03d}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, volume.astype(np.float16))
        rows.append(
            {
                "subject_id": f"sub-{i:03d}",
                "dataset": "adni",
                "site": site,
                "role": "downstream",
                "age": float(rng.uniform(55, 85)),
                "sex": "M" if i % 4 < 2 else "F",
                "diagnosis": "AD" if ad else "CN",
                "split": split,
                "path": rel.as_posix(),
                "exclusion_reason": "",
            }
        )
    pd.DataFrame(rows).to_csv(root / "data/processed/manifest.csv", index=False)


def cohort_settings(
    finetune: dict[str, Any], evaluate: dict[str, Any], scaling: dict[str, Any] | None = None
) -> Settings:
    """The real composed params shrunk to the cohort of `write_cohort`: its grid, no
    augmentation, a small SFCN, a short constant-LR fine-tuning updated by `finetune`, and the
    `evaluate` (and `scaling`) sections updated as given."""
    raw = yaml.safe_load(compose_params([], CONF))
    raw["data"]["preprocess"]["shape"] = list(SHAPE)
    raw["data"]["augment"]["enabled"] = False
    raw["model"]["options"] = {"channels": [4, 8, 8], "dropout": 0.0}
    raw["finetune"].update(
        {"early_stopping_patience": 0, "lr": 1e-2, "warmup_epochs": 0, **finetune}
    )
    raw["evaluate"].update(evaluate)
    raw["scaling"].update(scaling or {})
    return settings_from_dict(raw)


def finetune_and_evaluate(root: Path, settings: Settings, task: str = "ad") -> None:
    """Save a scratch backbone for `settings` under `root`, then run the real finetune and
    evaluate stages of `task` there (the cohort must already be written)."""
    from types import SimpleNamespace

    import pytest

    from neurotransfer.models import build_backbone, save_backbone
    from neurotransfer.stages import evaluate, finetune

    backbone = build_backbone(settings.model.name, SHAPE, **settings.model.options)
    save_backbone(backbone, root / settings.pretrain.out_dir, {"source": "scratch"})
    args = SimpleNamespace(task=task)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        finetune.run(settings, args)
        evaluate.run(settings, args)
