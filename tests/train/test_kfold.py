"""Subject-level k-fold cross-validation (``data.splits.mode: kfold``): folds assigned once in
preprocess, every fold trained per seed by finetune, and evaluate's pooled out-of-fold table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from neurotransfer.config import Settings, SettingsError, SplitSettings, settings_from_dict
from neurotransfer.data.splits import (
    CV_SPLIT,
    SplitError,
    assign_folds,
    assign_splits,
    check_pool_disjoint,
    fold_split,
)
from neurotransfer.data.tasks import TaskDataError
from neurotransfer.evaluation.folds import FoldPredictions, combine_folds
from tests.train.cached_cohort import (
    cohort_settings,
    finetune_and_evaluate,
    write_cohort,
)

TASK = SimpleNamespace(task="ad")
K = 3


def _scans(n: int, sites: tuple[str, ...] = ("a", "b", "c")) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": [f"s{i:03d}" for i in range(n)],
            "dataset": "d",
            "role": "downstream",
            "site": [sites[i % len(sites)] for i in range(n)],
            "diagnosis": ["AD" if (i // 3) % 2 else "CN" for i in range(n)],
            "sex": ["M" if i % 4 < 2 else "F" for i in range(n)],
            "exclusion_reason": "",
        }
    )


def test_folds_are_stratified_balanced_deterministic_and_keep_held_out_sites() -> None:
    scans = _scans(90)
    settings = SplitSettings(mode="kfold", k=5, seed=2, ood_sites=["c"])
    split = assign_splits(scans, settings)
    fold = assign_folds(scans.assign(split=split), settings)

    held_out = scans["site"] == "c"
    assert set(split[held_out]) == {"ood_test"} and fold[held_out].isna().all()
    assert set(split[~held_out]) == {CV_SPLIT}
    assert sorted(fold[~held_out].unique()) == [0, 1, 2, 3, 4]
    sizes = fold[~held_out].value_counts()
    assert sizes.max() - sizes.min() <= 1
    # Every fold holds both diagnoses at both in-distribution sites (stratified dealing).
    for _, group in scans[~held_out].groupby(["site", "diagnosis"]):
        assert fold[group.index].nunique() == 5

    again = assign_folds(scans.assign(split=assign_splits(scans, settings)), settings)
    assert again.equals(fold)
    other = SplitSettings(mode="kfold", k=5, seed=3, ood_sites=["c"])
    assert not assign_folds(scans.assign(split=split), other).equals(fold)


def test_each_subject_is_tested_once_validated_once_and_trained_on_otherwise() -> None:
    scans = _scans(30)
    settings = SplitSettings(mode="kfold", k=K)
    split = assign_splits(scans, settings)
    fold = assign_folds(scans.assign(split=split), settings)
    per_fold = pd.DataFrame({f: fold_split(split, fold, K, f) for f in range(K)})
    assert (per_fold == "test").sum(axis=1).eq(1).all()
    assert (per_fold == "val").sum(axis=1).eq(1).all()
    assert (per_fold == "train").sum(axis=1).eq(K - 2).all()
    with pytest.raises(ValueError, match="out of range"):
        fold_split(split, fold, K, K)


def test_pool_subjects_stay_in_training_and_never_enter_a_fold() -> None:
    scans = _scans(30)
    pool = scans.iloc[:6].assign(dataset="pool", role="pool")
    both = pd.concat([scans, pool], ignore_index=True)
    settings = SplitSettings(mode="kfold", k=K)
    split = assign_splits(both, settings)
    assert set(split[:6]) == {"train"} and set(split[6:30]) == {CV_SPLIT}
    fold = assign_folds(both.assign(split=split), settings)
    assert fold[:6].isna().all()
    # The leak check counts a cross-validated subject as tested.
    leaked = both.assign(split=split)
    leaked.loc[30, "split"] = "pool"
    leaked.loc[30, "subject_id"] = "s010"
    with pytest.raises(SplitError, match="s010"):
        check_pool_disjoint(leaked)


def test_bad_k_stops_naming_the_key() -> None:
    with pytest.raises(ValueError, match="k"):
        SplitSettings(mode="kfold", k=2)
    raw = cohort_settings({}, {}).model_dump(mode="json")
    raw["data"]["splits"].update({"mode": "kfold", "k": 1})
    with pytest.raises(SettingsError, match=r"data\.splits\.k"):
        settings_from_dict(raw)
    scans = _scans(4)
    settings = SplitSettings(mode="kfold", k=5)
    with pytest.raises(SplitError, match=r"data\.splits\.k is 5 but only 4 subject"):
        assign_folds(scans.assign(split=assign_splits(scans, settings)), settings)


def test_combined_folds_test_every_subject_once_and_average_held_out_sites() -> None:
    def fold_table(split: str, subjects: list[str], values: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "subject_id": subjects,
                "split": split,
                "target": 1.0,
                "prediction_seed0": values,
                "prediction": values,
            }
        )

    folds = []
    for f in range(K):
        frames = {
            "val": fold_table("val", [f"v{f}"], [0.1 * f]),
            "test": fold_table("test", [f"t{f}"], [0.2 * f]),
            "ood_test": fold_table("ood_test", ["o1", "o2"], [f, 10.0 * f]),
        }
        members = {s: {0: frame[["prediction_seed0"]].to_numpy()} for s, frame in frames.items()}
        folds.append(FoldPredictions(frames, {}, members))
    combined = combine_folds(folds)
    assert list(combined.frames["test"]["subject_id"]) == ["t0", "t1", "t2"]
    assert list(combined.frames["test"]["fold"]) == [0, 1, 2]
    assert list(combined.frames["val"]["subject_id"]) == ["v0", "v1", "v2"]
    np.testing.assert_allclose(combined.frames["ood_test"]["prediction_seed0"], [1.0, 10.0])
    np.testing.assert_allclose(combined.members["ood_test"][0][:, 0], [1.0, 10.0])


def kfold_settings(k: int = K, max_epochs: int = 2) -> Settings:
    settings = cohort_settings(
        finetune={"max_epochs": max_epochs, "seed": 0, "seeds": 2},
        evaluate={"bootstrap_samples": 50},
    )
    raw = settings.model_dump(mode="json")
    raw["data"]["splits"].update({"mode": "kfold", "k": k, "ood_sites": ["siteC"]})
    return settings_from_dict(raw)


def write_kfold_cohort(root: Path, settings: Settings, n_train: int = 36) -> pd.DataFrame:
    """`write_cohort`'s volumes, its in-distribution subjects dealt into folds as preprocess
    would deal them."""
    write_cohort(root, n_train=n_train, signal=0.6)
    path = root / "data/processed/manifest.csv"
    manifest = pd.read_csv(path, keep_default_na=False)
    manifest["split"] = assign_splits(manifest, settings.data.splits)
    manifest["fold"] = assign_folds(manifest, settings.data.splits)
    manifest.to_csv(path, index=False)
    return manifest


@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("kfold")
    settings = kfold_settings()
    write_kfold_cohort(root, settings)
    finetune_and_evaluate(root, settings)
    yield root


@pytest.mark.slow
def test_every_fold_trains_every_seed_and_evaluate_pools_the_out_of_fold_predictions(
    cross_validated: Path,
) -> None:
    models = cross_validated / "models/finetuned/ad"
    assert sorted(p.name for p in models.iterdir()) == ["fold0", "fold1", "fold2", "meta.json"]
    meta = json.loads((models / "meta.json").read_text())
    assert meta["folds"] == K and meta["seeds"] == [0, 1]
    for fold in range(K):
        assert sorted(p.name for p in (models / f"fold{fold}").iterdir()) == [
            "meta.json",
            "seed0",
            "seed1",
        ]
    trained = json.loads((cross_validated / "metrics/finetune/ad.json").read_text())
    assert trained["n_folds"] == K and sorted(trained["folds"]) == ["fold0", "fold1", "fold2"]
    logs = cross_validated / "dvclive/finetune/ad"
    assert sorted(p.name for p in (logs / "folds").iterdir()) == ["fold1", "fold2"]

    manifest = pd.read_csv(cross_validated / "data/processed/manifest.csv")
    cv_subjects = set(manifest.loc[manifest["split"] == CV_SPLIT, "subject_id"])
    ood_subjects = set(manifest.loc[manifest["split"] == "ood_test", "subject_id"])
    predictions = pd.read_csv(cross_validated / "reports/eval/ad/predictions.csv")
    for split in ("val", "test"):
        rows = predictions[predictions["split"] == split]
        # Every cross-validated subject once, from the fold that held it out.
        assert sorted(rows["subject_id"]) == sorted(cv_subjects)
        truth = manifest.set_index("subject_id")["fold"]
        expected = [
            (truth[s] if split == "test" else (truth[s] - 1) % K) for s in rows["subject_id"]
        ]
        assert list(rows["fold"]) == expected
    ood = predictions[predictions["split"] == "ood_test"]
    assert sorted(ood["subject_id"]) == sorted(ood_subjects)
    assert not any(c.startswith("baseline_") for c in predictions.columns)

    scores = json.loads((cross_validated / "metrics/eval/ad.json").read_text())
    assert scores["n_folds"] == K and scores["n_seeds"] == 2
    assert scores["n"]["test"] == len(cv_subjects)
    test = scores["model_metrics"]["test"]
    assert test["n_subjects"] == len(cv_subjects)
    auc = test["metrics"]["auc"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert scores["baselines"]["ridge_voxels"]["test"]["n_subjects"] == len(cv_subjects)
    assert "auc" in scores["model_minus_ridge"]["test"]["metrics"]


@pytest.mark.slow
def test_a_fold_without_both_classes_stops_finetune_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurotransfer.stages import finetune
    from neurotransfer.train import finetune as finetune_module

    settings = kfold_settings(k=K)
    manifest = write_kfold_cohort(tmp_path, settings, n_train=36)
    # Keep only two AD subjects among the cross-validated ones: one fold has none.
    cv_ad = manifest[(manifest["split"] == CV_SPLIT) & (manifest["diagnosis"] == "AD")]
    manifest = manifest.drop(cv_ad.index[2:])
    manifest.to_csv(tmp_path / "data/processed/manifest.csv", index=False)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the folds were checked")

    monkeypatch.setattr(finetune_module, "fit_task_model", no_training)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskDataError, match=r"cross-validation fold \d of 3.*data\.splits\.k"):
        finetune.run(settings, TASK)
