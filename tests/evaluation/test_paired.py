"""Paired comparison: DeLong's test against the pairwise definition, the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from neurotransfer.evaluation.paired import (
    align_predictions,
    delong_components,
    delong_covariance,
    delong_test,
    paired_bootstrap,
)


def brute_force_delong(
    y: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) straight from the definition: the kernel over every pair.

    Returns (auc_a, auc_b, var of auc_b - auc_a, two-sided p).
    """
    positive = y == 1
    comps = []
    for score in (a, b):
        x, z = score[positive], score[~positive]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = int(positive.sum()), int((~positive).sum())
    s10 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.vstack([comps[0][2], comps[1][2]]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (comps[1][0] - comps[0][0]) / np.sqrt(var)
    return comps[0][0], comps[1][0], var, 2 * stats.norm.sf(abs(z))


def correlated_scores(n: int, seed: int, gap: float = 0.6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    shared = rng.normal(size=n)  # both models see the same hard subjects: correlated errors
    a = 1 / (1 + np.exp(-(y * 1.0 + shared + 0.7 * rng.normal(size=n))))
    b = 1 / (1 + np.exp(-(y * (1.0 + gap) + shared + 0.7 * rng.normal(size=n))))
    return y, a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_the_pairwise_definition(seed: int) -> None:
    y, a, b = correlated_scores(150, seed)
    # Rounded scores have ties, which both forms must count as 1/2.
    a, b = np.round(a, 2), np.round(b, 2)
    auc_a, auc_b, var, p = brute_force_delong(y, a, b)
    result = delong_test(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_a == pytest.approx(auc_a, abs=1e-12)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert result.se**2 == pytest.approx(var, rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.ci_low < result.difference < result.ci_high


def test_delong_known_value() -> None:
    """A hand-checkable case: 3 positives, 3 negatives.

    Score A ranks the positives (0.9, 0.6, 0.4) against negatives (0.5, 0.3, 0.2): 8 of 9 pairs
    right, AUC 8/9. Score B gets every pair right, AUC 1. Structural components of A: positives
    beat (1, 1, 2/3) of the negatives, negatives are beaten by (2/3, 1, 1) of the positives;
    B's are all 1, so var(B - A) = var(A) = (1/27)/3 + (1/27)/3 = 2/81 (sample variances with
    n - 1 = 2: each component vector has variance 1/27).
    """
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.5, 0.3, 0.2])
    b = np.array([0.9, 0.8, 0.7, 0.5, 0.3, 0.2])
    aucs, v10, v01 = delong_components(y, np.vstack([a, b]))
    np.testing.assert_allclose(aucs, [8 / 9, 1.0])
    np.testing.assert_allclose(v10[0], [1, 1, 2 / 3])
    np.testing.assert_allclose(v01[0], [2 / 3, 1, 1])
    result = delong_test(y, a, b)
    assert result.difference == pytest.approx(1 / 9)
    assert result.se == pytest.approx(np.sqrt(2 / 81))
    assert result.z == pytest.approx((1 / 9) / np.sqrt(2 / 81))


def test_delong_of_identical_scores_has_nothing_to_test() -> None:
    y, a, _ = correlated_scores(60, 0)
    result = delong_test(y, a, a)
    assert result.difference == 0.0 and result.se == 0.0
    assert np.isnan(result.p_value)


def test_delong_covariance_diagonal_is_each_auc_variance() -> None:
    y, a, b = correlated_scores(200, 3)
    _, cov = delong_covariance(y, np.vstack([a, b]))
    assert cov[0, 1] > 0  # shared subject difficulty: positively correlated AUCs
    assert np.all(np.linalg.eigvalsh(cov) >= -1e-15)


def test_delong_p_value_is_roughly_uniform_under_the_null() -> None:
    rng = np.random.default_rng(0)
    pvalues = []
    for _ in range(300):
        y = (rng.random(80) < 0.5).astype(float)
        shared = rng.normal(size=80)
        a = 1 / (1 + np.exp(-(y + shared + rng.normal(size=80))))
        b = 1 / (1 + np.exp(-(y + shared + rng.normal(size=80))))
        pvalues.append(delong_test(y, a, b).p_value)
    rejection = np.mean(np.array(pvalues) < 0.05)
    assert 0.01 <= rejection <= 0.10


def frames(n: int, seed: int, kind: str, gap: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"sub-{i:03d}" for i in range(n)]
    if kind == "binary":
        y, a, b = correlated_scores(n, seed, gap)
        extra_a: dict[str, np.ndarray] = {}
        extra_b: dict[str, np.ndarray] = {}
    else:
        y = rng.uniform(20, 80, n)
        shared = rng.normal(0, 4, n)
        a = y + shared + rng.normal(0, 4 + gap, n)
        b = y + shared + rng.normal(0, 4, n)
        extra_a = {"prediction_corrected": a + 1.0}
        extra_b = {"prediction_corrected": b + 1.0}
    frame_a = pd.DataFrame({"subject_id": ids, "target": y, "prediction": a, **extra_a})
    frame_b = pd.DataFrame({"subject_id": ids, "target": y, "prediction": b, **extra_b})
    return frame_a, frame_b


def test_paired_bootstrap_detects_a_real_auc_gain_and_agrees_with_delong() -> None:
    a, b = frames(200, 0, "binary", gap=1.5)
    result = paired_bootstrap(a, b, "binary", n_resamples=400, seed=0)
    auc = result["metrics"]["auc"]
    assert auc["b"] == pytest.approx(roc_auc_score(b["target"], b["prediction"]))
    assert auc["difference"] == pytest.approx(auc["b"] - auc["a"])
    assert 0 < auc["ci_low"] < auc["difference"] < auc["ci_high"]
    assert auc["p_value"] < 0.05 and auc["delong_p_value"] < 0.05
    assert auc["higher_is_better"] and not result["metrics"]["brier"]["higher_is_better"]
    # The paired interval is much narrower than the one an unpaired view would suggest.
    assert auc["ci_high"] - auc["ci_low"] == pytest.approx(
        auc["delong_ci_high"] - auc["delong_ci_low"], rel=0.35
    )
    assert result["n_subjects"] == 200 and result["n_positive"] == int(a["target"].sum())


def test_paired_bootstrap_of_the_same_model_is_null() -> None:
    a, _ = frames(80, 1, "binary", gap=0.0)
    result = paired_bootstrap(a, a.copy(), "binary", n_resamples=100, seed=0)
    for entry in result["metrics"].values():
        assert entry["difference"] == 0.0
        assert entry["ci_low"] == entry["ci_high"] == 0.0
        assert entry["p_value"] == 1.0


def test_paired_bootstrap_regression_is_deterministic_and_has_corrected_metrics() -> None:
    a, b = frames(120, 2, "regression", gap=4.0)
    first = paired_bootstrap(a, b, "regression", n_resamples=200, seed=5)
    assert first == paired_bootstrap(a, b, "regression", n_resamples=200, seed=5)
    mae = first["metrics"]["mae"]
    assert mae["difference"] < 0 and mae["ci_high"] < 0  # B has the smaller error
    assert not mae["higher_is_better"] and first["metrics"]["r"]["higher_is_better"]
    assert "mae_corrected" in first["metrics"] and "r_corrected" not in first["metrics"]


def test_only_shared_subjects_are_compared_and_targets_must_agree() -> None:
    a, b = frames(50, 3, "binary", gap=1.0)
    aligned = align_predictions(a.iloc[:40], b.iloc[10:])
    assert len(aligned) == 30
    assert list(aligned.columns) == ["subject_id", "target", "prediction_a", "prediction_b"]
    bad = b.copy()
    bad.loc[0, "target"] = 1 - bad.loc[0, "target"]
    with pytest.raises(ValueError, match="different targets"):
        align_predictions(a, bad)
    with pytest.raises(ValueError, match="share no subject"):
        align_predictions(a.iloc[:10], b.iloc[10:])


def test_subjects_with_several_scans_pair_scan_by_scan() -> None:
    a = pd.DataFrame(
        {"subject_id": ["s1", "s1", "s2"], "target": [1.0, 1.0, 0.0], "prediction": [0.9, 0.8, 0.1]}
    )
    aligned = align_predictions(a, a.assign(prediction=[0.7, 0.6, 0.2]))
    assert aligned["prediction_b"].tolist() == [0.7, 0.6, 0.2]


@pytest.mark.parametrize("gap", [0.0, 0.3, 0.8, 1.5])
def test_bootstrap_p_value_and_interval_follow_one_rule(gap: float) -> None:
    """The percentile interval excludes 0 exactly when p < 1 - level (one rule, not two)."""
    a, b = frames(60, 4, "binary", gap=gap)
    result = paired_bootstrap(a, b, "binary", n_resamples=400, seed=1)
    for name, entry in result["metrics"].items():
        if not np.isfinite(entry["p_value"]):
            continue
        excludes_zero = entry["ci_low"] > 0 or entry["ci_high"] < 0
        assert excludes_zero == (entry["p_value"] < 0.05), name
