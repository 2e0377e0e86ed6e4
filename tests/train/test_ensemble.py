"""Deep ensembles (`finetune.ensemble_size`) within a fine-tuning seed: member seeds, saved
layout, averaged predictions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurotransfer.config import FinetuneSettings, Settings
from neurotransfer.train.checkpoint import (
    MODEL_FILE,
    load_task_models,
    member_file,
    save_task_model,
)
from neurotransfer.train.columns import member_column
from tests.train.cached_cohort import SHAPE, cohort_settings, write_cohort

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_member_seeds_are_disjoint_across_seeds_and_one_member_keeps_the_seed() -> None:
    assert FinetuneSettings(seed=3).member_seeds() == [3]
    first = FinetuneSettings(seed=0, ensemble_size=3).member_seeds()
    second = FinetuneSettings(seed=1, ensemble_size=3).member_seeds()
    assert first == [0, 1, 2] and second == [3, 4, 5]
    with pytest.raises(ValueError, match="ensemble_size"):
        FinetuneSettings(ensemble_size=0)


def test_ensembles_of_every_seed_value_share_no_training_seed() -> None:
    settings = FinetuneSettings(seed=1, seeds=3, ensemble_size=4)
    assert settings.seed_values() == [3, 4, 5]
    members = [settings.member_seeds(value) for value in settings.seed_values()]
    assert members[0] == [12, 13, 14, 15]
    # Nor with the runs of the other values of `seed` (a sweep over finetune.seed).
    other = FinetuneSettings(seed=0, seeds=3, ensemble_size=4)
    every = members + [other.member_seeds(v) for v in other.seed_values()]
    flat = [seed for group in every for seed in group]
    assert len(set(flat)) == len(flat) == 24


def ensemble_settings(ensemble_size: int, seed: int) -> Settings:
    return cohort_settings(
        finetune={"max_epochs": 4, "seed": seed, "seeds": 1, "ensemble_size": ensemble_size},
        evaluate={"bootstrap_samples": 100, "ridge_baseline": False},
    )


@pytest.fixture
def cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from neurotransfer.models import build_backbone, save_backbone

    write_cohort(tmp_path, n_train=48, signal=0.6)
    monkeypatch.chdir(tmp_path)
    settings = ensemble_settings(1, 0)
    backbone = build_backbone(settings.model.name, SHAPE, **settings.model.options)
    save_backbone(backbone, tmp_path / settings.pretrain.out_dir, {"source": "scratch"})
    return tmp_path


def test_ensemble_trains_saves_and_averages_its_members(cohort: Path) -> None:
    from neurotransfer.stages import evaluate, finetune

    task = SimpleNamespace(task="ad")
    finetune.run(ensemble_settings(2, 1), task)

    # One seed (value 1), an ensemble of two: member seeds 1 * 2 + 0 and 1 * 2 + 1.
    run_dir = cohort / "models/finetuned/ad"
    assert sorted(p.name for p in run_dir.iterdir()) == ["meta.json", "seed1"]
    model_dir = run_dir / "seed1"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "meta.json",
        "model-1.safetensors",
        MODEL_FILE,
    ]
    meta = json.loads((model_dir / "meta.json").read_text())
    assert [m["seed"] for m in meta["members"]] == [2, 3]
    recorded = json.loads((cohort / "metrics/finetune/ad.json").read_text())
    assert recorded["ensemble_size"] == 2
    assert [m["seed"] for m in recorded["seeds"]["seed1"]["members"].values()] == [2, 3]
    member_log = cohort / "dvclive/finetune/ad/members/1/metrics.json"
    assert member_log.is_file()
    member0 = load_file(str(model_dir / MODEL_FILE))
    member1 = load_file(str(model_dir / member_file(1)))
    assert any(not torch.equal(member0[k], member1[k]) for k in member0)  # different seeds

    evaluate.run(ensemble_settings(2, 1), task)
    predictions = pd.read_csv(cohort / "reports/eval/ad/predictions.csv")
    members = predictions[[member_column(0), member_column(1)]].to_numpy()
    np.testing.assert_allclose(predictions["prediction"], members.mean(axis=1), rtol=1e-5)
    assert not np.allclose(members[:, 0], members[:, 1])
    scores = json.loads((cohort / "metrics/eval/ad.json").read_text())
    member_scores = scores["seeds"]["seed1"]["members"]
    assert [m["seed"] for m in member_scores.values()] == [2, 3]
    assert list(member_scores) == ["member0", "member1"]
    for split in ("test", "ood_test"):
        auc = scores["model_metrics"][split]["metrics"]["auc"]["value"]
        assert auc > 0.7, (split, auc)  # the members learned the label, and so does their mean

    # Member 0 is the single model of its training seed: same data, same recipe, same weights.
    finetune.run(ensemble_settings(1, 2), task)
    single = load_file(str(run_dir / "seed2" / MODEL_FILE))
    assert single.keys() == member0.keys()
    assert all(torch.equal(single[k], member0[k]) for k in single)
    assert sorted(p.name for p in run_dir.iterdir()) == ["meta.json", "seed2"]
    assert sorted(p.name for p in (run_dir / "seed2").iterdir()) == ["meta.json", MODEL_FILE]
    # The larger ensemble's member logs are gone with it.
    assert not (cohort / "dvclive/finetune/ad/members").exists()
    assert "ensemble_size" not in json.loads((cohort / "metrics/finetune/ad.json").read_text())


def test_a_missing_member_file_is_named(tmp_path: Path) -> None:
    from neurotransfer.models import TaskHead, build_backbone
    from neurotransfer.train.module import OptimConfig, TaskModule

    options = {"channels": [4, 8, 8], "dropout": 0.0}
    modules = []
    for _ in range(2):
        backbone = build_backbone("sfcn", SHAPE, **options)
        modules.append(
            TaskModule(backbone, TaskHead(backbone.out_features), "binary", OptimConfig())
        )
    meta = {
        "kind": "binary",
        "model": "sfcn",
        "model_options": options,
        "input_shape": list(SHAPE),
        "members": [{"seed": 0}, {"seed": 1}],
    }
    with pytest.raises(ValueError, match="2 ensemble members but meta"):
        save_task_model(modules, tmp_path / "ad", {**meta, "members": [{"seed": 0}]})
    save_task_model(modules, tmp_path / "ad", meta)
    loaded, _ = load_task_models(tmp_path / "ad")
    assert len(loaded) == 2
    (tmp_path / "ad" / member_file(1)).unlink()
    with pytest.raises(FileNotFoundError, match=r"model-1\.safetensors.*member 1 of 2"):
        load_task_models(tmp_path / "ad")
