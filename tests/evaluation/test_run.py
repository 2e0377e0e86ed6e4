"""The evaluate stage's comparison of the model with the ridge baseline on the same subjects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neurotransfer.evaluation.run import paired_against_baseline


def predictions(noise_sd: float, seed: int) -> pd.DataFrame:
    """Brain-age predictions (truth + noise) for 40 test and 30 ood_test subjects."""
    rng = np.random.default_rng(0)
    split = ["test"] * 40 + ["ood_test"] * 30
    age = rng.uniform(20, 80, len(split))
    noise = np.random.default_rng(seed).normal(0.0, noise_sd, len(split))
    return pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(len(split))],
            "site": "HH",
            "split": split,
            "target": age,
            "prediction": age + noise,
        }
    )


def test_a_clearly_better_model_has_a_negative_mae_difference_per_split() -> None:
    ridge, model = predictions(10.0, seed=1), predictions(3.0, seed=2)
    compared = paired_against_baseline(ridge, model, "regression", 500, 0.95, 0)
    assert list(compared) == ["test", "ood_test"]
    assert compared["test"]["n_subjects"] == 40
    for split in ("test", "ood_test"):
        mae = compared[split]["metrics"]["mae"]
        assert mae["difference"] < 0 and mae["ci_high"] < 0, mae  # model - ridge: lower error
        assert mae["p_value"] < 0.05
        assert "mae_corrected" not in compared[split]["metrics"]  # the ridge has no correction


def test_a_binary_comparison_reports_auc_with_delong() -> None:
    rng = np.random.default_rng(3)
    target = np.repeat([0.0, 1.0], 30)
    frame = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(60)], "site": "HH", "split": "test"}
    ).assign(target=target)
    ridge = frame.assign(
        prediction=np.clip(0.5 + 0.1 * (target - 0.5) + rng.normal(0, 0.2, 60), 0, 1)
    )
    model = frame.assign(
        prediction=np.clip(0.5 + 0.6 * (target - 0.5) + rng.normal(0, 0.2, 60), 0, 1)
    )
    auc = paired_against_baseline(ridge, model, "binary", 500, 0.95, 0)["test"]["metrics"]["auc"]
    assert auc["difference"] > 0 and auc["ci_low"] > 0
    assert auc["delong_p_value"] < 0.05
