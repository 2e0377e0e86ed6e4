"""The comparison of the model (every fine-tuning seed) with the ridge baseline on the same
subjects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurotransfer.evaluation.baseline_comparison import paired_against_baseline

SEEDS = [0, 1, 2]


def predictions(noise_sd: float, seed: int, seeds: list[int] | None = None) -> pd.DataFrame:
    """Brain-age predictions (truth + noise) for 40 test and 30 ood_test subjects; with `seeds`,
    one column per seed value (the same subject noise plus a little seed noise)."""
    rng = np.random.default_rng(0)
    split = ["test"] * 40 + ["ood_test"] * 30
    age = rng.uniform(20, 80, len(split))
    noise = np.random.default_rng(seed).normal(0.0, noise_sd, len(split))
    frame = pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(len(split))],
            "site": "HH",
            "split": split,
            "target": age,
            "prediction": age + noise,
        }
    )
    seed_noise = np.random.default_rng(seed + 100)
    for value in seeds or []:
        frame[f"prediction_seed{value}"] = age + noise + seed_noise.normal(0.0, 0.5, len(split))
    return frame


def test_a_clearly_better_model_has_a_negative_mae_difference_per_split() -> None:
    ridge, model = predictions(10.0, seed=1), predictions(3.0, seed=2, seeds=SEEDS)
    compared = paired_against_baseline(ridge, model, "regression", SEEDS, 0.95)
    assert list(compared) == ["test", "ood_test"]
    assert compared["test"]["n_subjects"] == 40
    assert compared["test"]["n_seeds"] == 3
    for split in ("test", "ood_test"):
        mae = compared[split]["metrics"]["mae"]
        assert mae["difference"] < 0 and mae["ci_high"] < 0, mae  # model - ridge: lower error
        assert mae["p_value"] < 0.05
        assert "seed" in mae["method"]
        assert "mae_corrected" not in compared[split]["metrics"]  # the ridge has no correction


def test_one_seed_is_compared_on_subjects_only_and_says_so() -> None:
    ridge, model = predictions(10.0, seed=1), predictions(3.0, seed=2, seeds=[4])
    mae = paired_against_baseline(ridge, model, "regression", [4], 0.95)["test"]["metrics"]["mae"]
    assert mae["ci_high"] < 0
    assert "one seed" in mae["method"]


def test_a_binary_comparison_uses_each_seeds_threshold() -> None:
    rng = np.random.default_rng(3)
    target = np.repeat([0.0, 1.0], 30)
    frame = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(60)], "site": "HH", "split": "test"}
    ).assign(target=target)
    ridge = frame.assign(
        prediction=np.clip(0.5 + 0.1 * (target - 0.5) + rng.normal(0, 0.2, 60), 0, 1)
    )
    # Every seed separates the classes perfectly, but all its probabilities lie below 0.5 (as
    # an undertrained model's do): only a threshold chosen on validation calls anyone positive.
    model = frame.assign(prediction=0.0)
    for value in SEEDS:
        model[f"prediction_seed{value}"] = 0.44 + 0.01 * target + rng.uniform(0, 0.005, 60)
    at_half = paired_against_baseline(ridge, model, "binary", SEEDS, 0.95)["test"]["metrics"]
    assert at_half["balanced_accuracy"]["b"] == pytest.approx(0.5)
    chosen = {value: 0.445 for value in SEEDS}
    compared = paired_against_baseline(ridge, model, "binary", SEEDS, 0.95, chosen)["test"]
    assert compared["metrics"]["balanced_accuracy"]["b"] == pytest.approx(1.0)
    auc = compared["metrics"]["auc"]
    assert auc["difference"] > 0 and auc["ci_low"] > 0
    assert auc["p_value"] < 0.05
