"""The seed x subject decision rule: pseudo-values, the interval/p rule, refusals, calibration."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from neurotransfer.evaluation.decision import (
    CONSTANT_SHIFT_NOTE,
    NO_VARIATION_NOTE,
    PRIMARY_METRIC,
    PSEUDO_VALUE_METRICS,
    adjust_pvalues,
    auc_subject_variance,
    calls_at_thresholds,
    compare_arms,
    metric_difference,
    pseudo_values,
    seed_subject_estimate,
)
from neurotransfer.evaluation.metrics import binary_metrics, regression_metrics
from neurotransfer.evaluation.paired import delong_components

REPO = Path(__file__).resolve().parents[2]


def brute_jackknife(kind: str, metric: str, target: np.ndarray, row: np.ndarray) -> np.ndarray:
    score = binary_metrics if kind == "binary" else regression_metrics
    n = target.size
    full = score(target, row)[metric]
    left_out = [score(np.delete(target, i), np.delete(row, i))[metric] for i in range(n)]
    return n * full - (n - 1) * np.array(left_out)


@pytest.mark.parametrize("kind", ["binary", "regression"])
def test_pseudo_values_are_the_leave_one_out_jackknife(kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 25
    if kind == "binary":
        target = (rng.random(n) < 0.4).astype(float)
        predictions = np.round(rng.random((2, n)), 1)  # ties, which the AUC counts as 1/2
    else:
        target = rng.uniform(20, 80, n)
        predictions = target + rng.normal(0, 6, (2, n))
    for metric in PSEUDO_VALUE_METRICS[kind]:
        values = pseudo_values(kind, metric, target, predictions)
        assert values.shape == (2, n)
        for row, expected in zip(predictions, values, strict=True):
            np.testing.assert_allclose(
                expected, brute_jackknife(kind, metric, target, row), atol=1e-9, err_msg=metric
            )
    # The primary metrics' pseudo-values average to the metric itself, not an approximation.
    primary = PRIMARY_METRIC[kind]
    score = binary_metrics if kind == "binary" else regression_metrics
    for row in predictions:
        mean = pseudo_values(kind, primary, target, row).mean()
        assert mean == pytest.approx(score(target, row)[primary], abs=1e-12)


def test_pseudo_values_refuse_undefined_input() -> None:
    with pytest.raises(ValueError, match="at least 2 subjects of each class"):
        pseudo_values("binary", "auc", [1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no pseudo-values for regression metric 'auc'"):
        pseudo_values("regression", "auc", [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="probabilities"):
        pseudo_values("binary", "auc", [1, 1, 0, 0], [1.5, 0.1, 0.2, 0.3])


def arms(
    rng: np.random.Generator, n: int, seeds: int, seed_sd: float, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-subject values of two arms: shared subject effects, per-seed shifts, interaction."""
    subject = rng.normal(0, 1, n)
    a = subject + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, 0.5, (seeds, n))
    b = subject + shift + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, 0.5, (seeds, n))
    return a, b


def test_interval_and_p_value_follow_one_rule() -> None:
    rng = np.random.default_rng(1)
    for trial in range(40):
        a, b = arms(rng, 30, 3, seed_sd=0.3, shift=0.4 * (trial % 4) / 3)
        result = compare_arms(a, b)
        t = result.difference / result.se
        assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), result.df))
        assert result.ci_low < result.difference < result.ci_high
        excludes_zero = result.ci_low > 0 or result.ci_high < 0
        assert excludes_zero == (result.p_value < 0.05)
        assert result.n_seeds_a == result.n_seeds_b == 3 and result.n_subjects == 30


def test_seed_noise_widens_the_interval_and_is_recovered() -> None:
    """Two arms that differ only by seed: a subject-only interval would call them different."""
    rng = np.random.default_rng(2)
    a, b = arms(rng, 400, 5, seed_sd=0.5)
    with_seeds = compare_arms(a, b)
    subject_only_se = (b.mean(0) - a.mean(0)).std(ddof=1) / np.sqrt(400)
    assert with_seeds.se > 5 * subject_only_se
    assert 0.2 < with_seeds.seed_sd < 1.0  # true 0.5, estimated from 8 df
    assert with_seeds.df < 20  # the few seeds, not the 400 subjects, set the precision


def test_identical_arms_have_nothing_to_decide() -> None:
    rng = np.random.default_rng(3)
    a, _ = arms(rng, 20, 3, seed_sd=0.2)
    result = compare_arms(a, a.copy())
    assert result.difference == 0.0 and result.p_value == 1.0


def test_both_arms_perfect_is_undetermined_not_certain() -> None:
    """AUC 1 for every seed of both arms: all pseudo-values equal, se 0. No interval, p 1."""
    rng = np.random.default_rng(30)
    target = np.repeat([1.0, 0.0], 10)

    def perfect() -> np.ndarray:
        return np.where(target == 1.0, rng.uniform(0.6, 1.0, (3, 20)), rng.uniform(0, 0.4, (3, 20)))

    a, b = perfect(), perfect()
    for metric in ("auc", "balanced_accuracy", "accuracy", "sensitivity"):
        result = metric_difference("binary", metric, target, a, b)
        assert result.difference == 0.0 and result.p_value == 1.0, metric
        assert np.isnan(result.ci_low) and np.isnan(result.ci_high), metric
        assert result.note == NO_VARIATION_NOTE
    # Brier still varies (probabilities differ): an ordinary interval, no note.
    brier = metric_difference("binary", "brier", target, a, b)
    assert brier.note is None and brier.ci_low < brier.difference < brier.ci_high


def test_identical_rankings_rounding_is_not_a_zero_width_interval() -> None:
    """Seeds ranking every subject alike (AUC < 1) give pseudo-values equal up to rounding:
    the A/A case that printed "-0.000 [-0.000, +0.000]"."""
    rng = np.random.default_rng(31)
    target = (rng.random(17) < 0.5).astype(float)
    order = np.argsort(target + rng.normal(0, 0.6, 17))

    def same_ranking() -> np.ndarray:
        rows = np.empty((3, 17))
        for row in rows:
            row[order] = np.sort(rng.uniform(0, 1, 17))
        return rows

    result = metric_difference("binary", "auc", target, same_ranking(), same_ranking())
    assert 0.5 < binary_metrics(target, same_ranking()[0])["auc"] < 1.0
    assert result.difference == 0.0 and np.copysign(1.0, result.difference) == 1.0
    assert result.p_value == 1.0 and np.isnan(result.ci_low) and np.isnan(result.ci_high)
    assert result.note == NO_VARIATION_NOTE


def test_a_noise_free_shift_has_no_p_value() -> None:
    """Every subject 1 better in every seed: se 0 but delta 1; not p = 0, not a certainty."""
    subject = np.random.default_rng(32).normal(0, 1, 20)
    a = np.tile(subject, (3, 1))
    result = compare_arms(a, a + 1.0)
    assert result.difference == pytest.approx(1.0)
    assert np.isnan(result.p_value) and np.isnan(result.ci_low) and np.isnan(result.ci_high)
    assert result.note == CONSTANT_SHIFT_NOTE
    # Untestable entries stay out of the family; a p of 1.0 counts in it.
    np.testing.assert_allclose(
        adjust_pvalues([result.p_value, 1.0, 0.01], "holm"), [np.nan, 1.0, 0.02], equal_nan=True
    )
    np.testing.assert_allclose(
        adjust_pvalues([result.p_value, 1.0, 0.01], "bh"), [np.nan, 1.0, 0.02], equal_nan=True
    )


def test_ordinary_data_have_no_note() -> None:
    rng = np.random.default_rng(33)
    a, b = arms(rng, 30, 3, seed_sd=0.3, shift=0.2)
    result = compare_arms(a, b)
    assert result.note is None and np.isfinite(result.ci_low) and result.se > 0


def test_calls_at_thresholds_cut_each_seed_at_its_own_threshold() -> None:
    scores = np.array([[0.2, 0.4, 0.6], [0.2, 0.4, 0.6]])
    calls = calls_at_thresholds("binary", "balanced_accuracy", scores, [0.3, 0.5])
    np.testing.assert_array_equal(calls, [[0, 1, 1], [0, 0, 1]])
    # Threshold-free metrics (and regression) are left as they are.
    np.testing.assert_array_equal(calls_at_thresholds("binary", "auc", scores, [0.3, 0.5]), scores)
    np.testing.assert_array_equal(calls_at_thresholds("regression", "mae", scores, [0, 0]), scores)
    with pytest.raises(ValueError, match="one threshold per seed"):
        calls_at_thresholds("binary", "f1", scores, [0.3])
    # The 0/1 calls' pseudo-values are the jackknife of the metric at each seed's own cut.
    target = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    probabilities = np.tile([0.35, 0.45, 0.8, 0.1, 0.32, 0.6], (2, 1))
    cuts = [0.3, 0.7]
    calls = calls_at_thresholds("binary", "balanced_accuracy", probabilities, cuts)
    values = pseudo_values("binary", "balanced_accuracy", target, calls)
    for row, cut in zip(values, cuts, strict=True):
        expected = brute_jackknife(
            "binary", "balanced_accuracy", target, (probabilities[0] >= cut).astype(float)
        )
        np.testing.assert_allclose(row, expected)
    assert not np.allclose(values[0], values[1])  # the two cuts call differently


def test_one_seed_is_refused_unless_the_arm_is_deterministic() -> None:
    rng = np.random.default_rng(4)
    a, b = arms(rng, 20, 3, seed_sd=0.2)
    with pytest.raises(ValueError, match=r"single fine-tuning seed.*finetune\.seeds"):
        compare_arms(a[:1], b)
    with pytest.raises(ValueError, match="arm B has a single"):
        compare_arms(a, b[0])
    # A ridge baseline is deterministic: its one row carries no seed noise; B's seeds do.
    ridge = compare_arms(a[0], b, deterministic_a=True)
    assert "A deterministic" in ridge.method and ridge.n_seeds_a == 1
    flagged = compare_arms(a[0], b[0], allow_one_seed=True)
    assert "one seed" in flagged.method
    with pytest.raises(ValueError, match="same subjects"):
        compare_arms(a, b[:, :10])


def test_seed_subject_estimate_of_one_arm() -> None:
    rng = np.random.default_rng(5)
    values, _ = arms(rng, 50, 4, seed_sd=0.4)
    estimate = seed_subject_estimate(values)
    assert estimate.value == pytest.approx(values.mean())
    assert estimate.n_seeds == 4 and estimate.n_subjects == 50
    single = seed_subject_estimate(values[0])
    assert "one seed" in single.method
    half = stats.t.ppf(0.975, 49) * values[0].std(ddof=1) / np.sqrt(50)
    assert single.ci_high - single.ci_low == pytest.approx(2 * half)
    assert estimate.ci_high - estimate.ci_low > single.ci_high - single.ci_low


def test_metric_difference_detects_a_better_model_in_years() -> None:
    rng = np.random.default_rng(6)
    age = rng.uniform(20, 80, 60)
    hard = rng.normal(0, 3, 60)
    a = age + hard + rng.normal(0, 6, (3, 60))
    b = age + hard + rng.normal(0, 2, (3, 60))
    result = metric_difference("regression", "mae", age, a, b)
    assert result.difference < 0 and result.ci_high < 0 and result.p_value < 0.01


def test_auc_subject_variance_removes_delongs_small_sample_bias() -> None:
    """One seed per arm: the corrected variance sits below DeLong's, and both estimate it."""
    rng = np.random.default_rng(7)
    target = np.repeat([1.0, 0.0], 10)
    u = rng.normal(0, 1, (3000, 1, 20))
    scores = 1 / (1 + np.exp(-((2 * target - 1) + u + 0.5 * rng.normal(size=(3000, 2, 20)))))
    corrected = auc_subject_variance(target, scores[:, :1], scores[:, 1:]) / 20
    aucs, v10, v01 = delong_components(target, scores.reshape(-1, 20))
    differences = aucs.reshape(3000, 2) @ [-1.0, 1.0]
    v10 = np.diff(v10.reshape(3000, 2, -1), axis=1)[:, 0]  # B's placements minus A's
    v01 = np.diff(v01.reshape(3000, 2, -1), axis=1)[:, 0]
    delong = v10.var(axis=1, ddof=1) / 10 + v01.var(axis=1, ddof=1) / 10
    true_variance = differences.var(ddof=1)
    assert np.all(corrected <= delong + 1e-12)
    assert corrected.mean() == pytest.approx(true_variance, rel=0.1)
    assert delong.mean() > 1.1 * true_variance  # DeLong is biased upward at 10 + 10


def test_adjust_pvalues_holm_and_bh() -> None:
    raw = [0.01, 0.04, 0.03, float("nan"), 0.5]
    # Holm: sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, running max.
    np.testing.assert_allclose(
        adjust_pvalues(raw, "holm"), [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True
    )
    # BH: 0.01*4/1, 0.03*4/2, 0.04*4/3, 0.5*4/4, running min from the top.
    np.testing.assert_allclose(
        adjust_pvalues(raw, "bh"), [0.04, 0.16 / 3, 0.16 / 3, np.nan, 0.5], equal_nan=True
    )
    assert adjust_pvalues([0.6, 0.7], "holm").max() == 1.0
    with pytest.raises(ValueError, match="unknown adjustment"):
        adjust_pvalues([0.1], "bonferroni")


def calibration_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "benchmarks"))
    import decision_calibration

    return decision_calibration


@pytest.mark.parametrize("kind", ["regression", "binary"])
def test_false_positive_rate_is_calibrated_and_power_is_real(kind: str) -> None:
    """1,200 simulated A/A comparisons per cell (subject + seed + subject-by-seed noise): the
    primary decision's false-positive rate lies in [2.5%, 6.5%] at n = 20 and 100 with 3 and 5
    seeds per arm, and a planted effect is found far more often than that."""
    bench = calibration_module()
    rng = np.random.default_rng(11)
    for n in (20, 100):
        for seeds in (3, 5):
            fpr = bench.rejection_rate(kind, n, seeds, 1200, 0.0, 3.0, rng)
            power = bench.rejection_rate(kind, n, seeds, 400, bench.EFFECT[kind], 3.0, rng)
            assert 0.025 <= fpr <= 0.065, (kind, n, seeds, fpr)
            assert power > 2 * fpr, (kind, n, seeds, fpr, power)
