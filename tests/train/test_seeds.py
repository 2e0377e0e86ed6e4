"""Fine-tuning seeds (`finetune.seeds`): one model per seed value inside one run, saved together,
scored per seed and over seeds by `evaluate`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurotransfer.config import FinetuneSettings, Settings
from neurotransfer.evaluation.metrics import binary_metrics, choose_threshold
from neurotransfer.train.checkpoint import MODEL_FILE, load_seed_models
from tests.train.cached_cohort import (
    cohort_settings,
    finetune_and_evaluate,
    write_cohort,
)

TASK = SimpleNamespace(task="ad")
SEED_VALUES = [3, 4, 5]  # finetune.seed 1 x seeds 3: 1 * 3 + k


def test_seed_values_are_disjoint_across_runs_and_at_least_one() -> None:
    assert FinetuneSettings(seed=0, seeds=3).seed_values() == [0, 1, 2]
    assert FinetuneSettings(seed=1, seeds=3).seed_values() == SEED_VALUES
    assert FinetuneSettings(seed=7).seed_values() == [7]  # one seed: the seed itself
    with pytest.raises(ValueError, match="seeds"):
        FinetuneSettings(seeds=0)


def seed_settings(max_epochs: int = 3, seed_processes: int = 1) -> Settings:
    return cohort_settings(
        finetune={
            "max_epochs": max_epochs,
            "seed": 1,
            "seeds": 3,
            "seed_processes": seed_processes,
        },
        evaluate={"bootstrap_samples": 50},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cohort with the three seeds of `seed_settings` fine-tuned and evaluated once."""
    root = tmp_path_factory.mktemp("seeds")
    write_cohort(root, n_train=48, signal=0.6)
    # One torch thread, as each seed process has: the side-by-side test then compares runs that
    # differ only in where they ran (with the worker's own thread count, reductions summed in
    # another order drifted the best validation loss by up to 1.2e-3 relative under xdist).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune_and_evaluate(root, seed_settings())
    finally:
        torch.set_num_threads(threads)
    yield root


@pytest.mark.slow
def test_every_seed_value_trains_and_keeps_its_own_model_and_log(trained: Path) -> None:
    run_dir = trained / "models/finetuned/ad"
    assert sorted(p.name for p in run_dir.iterdir()) == ["meta.json", "seed3", "seed4", "seed5"]
    assert json.loads((run_dir / "meta.json").read_text())["seeds"] == SEED_VALUES
    seed_models, _ = load_seed_models(run_dir)
    assert [m.seed for m in seed_models] == SEED_VALUES
    assert [m.meta["members"][0]["seed"] for m in seed_models] == SEED_VALUES
    weights = [load_file(str(run_dir / f"seed{v}" / MODEL_FILE)) for v in SEED_VALUES]
    for i in range(3):
        for j in range(i + 1, 3):
            assert any(not torch.equal(weights[i][k], weights[j][k]) for k in weights[i])

    # The first seed logs where dvc.yaml declares the curves, the others beneath it.
    logs = trained / "dvclive/finetune/ad"
    assert (logs / "metrics.json").is_file()
    assert sorted(p.name for p in (logs / "seeds").iterdir()) == ["seed4", "seed5"]
    assert all((logs / "seeds" / name / "metrics.json").is_file() for name in ("seed4", "seed5"))

    recorded = json.loads((trained / "metrics/finetune/ad.json").read_text())
    assert recorded["n_seeds"] == 3
    assert [entry["seed"] for entry in recorded["seeds"].values()] == SEED_VALUES
    key = f"best_{recorded['monitor']}"
    per_seed = [entry[key] for entry in recorded["seeds"].values()]
    assert recorded[key] == pytest.approx(np.mean(per_seed))


@pytest.mark.slow
def test_evaluate_scores_every_seed_and_reports_their_mean_with_an_interval(
    trained: Path,
) -> None:
    predictions = pd.read_csv(trained / "reports/eval/ad/predictions.csv")
    columns = [f"prediction_seed{v}" for v in SEED_VALUES]
    assert list(predictions.columns[:6]) == [
        "subject_id",
        "dataset",
        "site",
        "split",
        "target",
        "prediction",
    ]
    assert set(columns) <= set(predictions.columns)
    np.testing.assert_allclose(
        predictions["prediction"], predictions[columns].mean(axis=1), rtol=1e-5
    )
    scores = json.loads((trained / "metrics/eval/ad.json").read_text())
    assert scores["n_seeds"] == 3
    val = predictions[predictions["split"] == "val"]
    for split in ("test", "ood_test"):
        headline = scores["model_metrics"][split]
        assert headline["n_seeds"] == 3
        rows = predictions[predictions["split"] == split]
        for metric in ("auc", "balanced_accuracy", "brier"):
            entry = headline["metrics"][metric]
            per_seed = [scores["seeds"][f"seed{v}"][split][metric] for v in SEED_VALUES]
            assert entry["value"] == pytest.approx(np.mean(per_seed))
            assert entry["seed_sd"] == pytest.approx(np.std(per_seed, ddof=1))
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        for value in SEED_VALUES:
            # The threshold is chosen on that seed's validation predictions, recorded, and
            # applied to the scored splits (never chosen on them).
            record = scores["seeds"][f"seed{value}"]
            column = f"prediction_seed{value}"
            chosen = choose_threshold(val["target"], val[column]).threshold
            assert record["threshold"] == pytest.approx(chosen)
            expected = binary_metrics(rows["target"], rows[column], threshold=chosen)
            assert record[split]["balanced_accuracy"] == pytest.approx(
                expected["balanced_accuracy"]
            )
    compared = scores["model_minus_ridge"]["test"]
    assert compared["n_seeds"] == 3
    auc = compared["metrics"]["auc"]
    assert auc["b"] == pytest.approx(scores["model_metrics"]["test"]["metrics"]["auc"]["value"])
    assert auc["ci_low"] <= auc["difference"] <= auc["ci_high"]
    assert 0.0 <= auc["p_value"] <= 1.0


@pytest.mark.slow
def test_seeds_trained_side_by_side_in_processes_match_the_in_process_run(
    trained: Path, tmp_path: Path
) -> None:
    """finetune.seed_processes=3: the three seeds train in forked one-thread processes, every
    seed keeps its model, log and record, and each seed's run is the in-process one (both on one
    torch thread)."""
    import shutil

    from neurotransfer.stages import finetune

    for folder in ("data", "models/pretrained"):
        shutil.copytree(trained / folder, tmp_path / folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        finetune.run(seed_settings(seed_processes=3), TASK)
    in_process = json.loads((trained / "metrics/finetune/ad.json").read_text())
    side_by_side = json.loads((tmp_path / "metrics/finetune/ad.json").read_text())
    assert side_by_side["seed_processes"] == 3 and in_process["seed_processes"] == 1
    assert side_by_side["train_wall_seconds"] > 0
    for key, entry in in_process["seeds"].items():
        other = side_by_side["seeds"][key]
        assert other["seed"] == entry["seed"] and other["epochs_run"] == entry["epochs_run"]
        assert other["best_val_loss"] == pytest.approx(entry["best_val_loss"], rel=1e-6)
    assert load_seed_models(tmp_path / "models/finetuned/ad")[0] is not None
    logs = tmp_path / "dvclive/finetune/ad"
    assert sorted(p.name for p in (logs / "seeds").iterdir()) == ["seed4", "seed5"]


def test_seed_processes_need_a_single_cpu_device() -> None:
    with pytest.raises(ValueError, match=r"seed_processes 2 .*accelerator 'cpu'"):
        FinetuneSettings(seed_processes=2, accelerator="gpu")
    with pytest.raises(ValueError, match="seed_processes"):
        FinetuneSettings(seed_processes=2, accelerator="cpu", strategy="ddp")
    assert FinetuneSettings(seed_processes=2, accelerator="cpu").seed_processes == 2


@pytest.mark.slow
def test_a_seed_process_that_dies_stops_the_stage_naming_the_setting(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from neurotransfer.stages import finetune
    from neurotransfer.train import finetune as finetune_module

    run_dir = trained / "models/finetuned/ad"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    def killed(*args: object, **kwargs: object) -> None:
        os._exit(137)  # what the kernel's OOM killer leaves: no exception, no result

    monkeypatch.setattr(finetune_module, "train_task", killed)
    monkeypatch.chdir(trained)
    with pytest.raises(
        RuntimeError,
        match=r"finetune ad: a seed-training process died.*"
        r"finetune\.seed_processes=1",
    ):
        finetune.run(seed_settings(max_epochs=1, seed_processes=2), TASK)
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
@pytest.mark.parametrize("seed_processes", [1, 3])
def test_a_later_seed_that_fails_leaves_the_previous_models_whole(
    trained: Path, monkeypatch: pytest.MonkeyPatch, seed_processes: int
) -> None:
    from neurotransfer.stages import finetune
    from neurotransfer.train import finetune as finetune_module

    run_dir = trained / "models/finetuned/ad"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    metrics_before = (trained / "metrics/finetune/ad.json").read_bytes()
    real_train_task = finetune_module.train_task

    def third_seed_fails(settings: Settings, task_name: str, root: Path, **kwargs: object):
        if kwargs["finetune"].seed == SEED_VALUES[2]:  # type: ignore[attr-defined]
            raise RuntimeError("out of memory while training the third seed")
        return real_train_task(settings, task_name, root, **kwargs)

    monkeypatch.setattr(finetune_module, "train_task", third_seed_fails)
    monkeypatch.chdir(trained)
    with pytest.raises(RuntimeError, match="third seed"):
        finetune.run(seed_settings(max_epochs=1, seed_processes=seed_processes), TASK)
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # every seed's model of the previous run, byte for byte
    assert (trained / "metrics/finetune/ad.json").read_bytes() == metrics_before
    assert not list(run_dir.parent.glob(".ad.*")), "a temporary model folder was left behind"


def test_an_old_single_model_folder_is_refused_with_what_to_run(tmp_path: Path) -> None:
    folder = tmp_path / "models/finetuned/ad"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"kind": "binary", "model": "sfcn"}))
    (folder / MODEL_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match=r"no fine-tuning seeds.*dvc repro finetune@ad"):
        load_seed_models(folder)
