"""Point metrics against scikit-learn / by-hand values, and the brain-age bias correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

from neurotransfer.evaluation import AgeBiasCorrection, binary_metrics, regression_metrics


def test_binary_metrics_match_scikit_learn_on_noisy_scores() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    # Rounded scores create ties, which the rank AUC must count as 1/2 like scikit-learn.
    score = np.round(np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1), 1)
    metrics = binary_metrics(y, score)
    predicted = score >= 0.5
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(y, predicted))
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, score))
    assert metrics["n"] == 300
    assert metrics["n_positive"] == int(y.sum())


def test_perfect_scores_give_auc_one_and_random_scores_auc_near_half() -> None:
    y = np.r_[np.zeros(500), np.ones(500)]
    perfect = binary_metrics(y, np.r_[np.full(500, 0.2), np.full(500, 0.9)])
    assert perfect["auc"] == 1.0
    assert perfect["balanced_accuracy"] == perfect["accuracy"] == perfect["f1"] == 1.0
    random_scores = np.random.default_rng(1).random(1000)
    assert binary_metrics(y, random_scores)["auc"] == pytest.approx(0.5, abs=0.05)
    # Inverted scores rank every negative above every positive.
    assert binary_metrics(y, np.where(y == 1, 0.1, 0.8))["auc"] == 0.0


def test_confusion_metrics_by_hand() -> None:
    # 4 positives: 3 called positive; 6 negatives: 2 called positive.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.7, 0.5, 0.2, 0.6, 0.5, 0.4, 0.3, 0.1, 0.0])
    metrics = binary_metrics(y, score)
    assert metrics["sensitivity"] == pytest.approx(3 / 4)
    assert metrics["specificity"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # A stricter threshold moves the borderline 0.5 scores to negative.
    strict = binary_metrics(y, score, threshold=0.55)
    assert strict["sensitivity"] == pytest.approx(2 / 4)
    assert strict["specificity"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_for_undefined_metrics_without_crashing(label: int) -> None:
    metrics = binary_metrics(np.full(8, label), np.linspace(0.1, 0.9, 8))
    assert math.isnan(metrics["auc"])
    assert math.isnan(metrics["balanced_accuracy"])
    undefined, defined = (
        ("sensitivity", "specificity") if label == 0 else ("specificity", "sensitivity")
    )
    assert math.isnan(metrics[undefined])
    assert not math.isnan(metrics[defined])
    assert not math.isnan(metrics["accuracy"]) and not math.isnan(metrics["brier"])


@pytest.mark.parametrize(
    ("y_true", "y_score", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "must be 0 or 1"),
        ([0, 1, 1], [0.1, 1.2, 0.3], r"probabilities in \[0, 1\]"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "non-finite"),
        ([0, 1], [0.1, 0.2, 0.3], "pair up"),
        ([], [], "empty"),
    ],
)
def test_bad_binary_input_is_rejected_with_the_problem_named(
    y_true: list[float], y_score: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(y_true, y_score)


def test_regression_metrics_by_hand_and_against_scikit_learn() -> None:
    y = np.array([20.0, 30.0, 40.0, 50.0])
    pred = np.array([22.0, 29.0, 43.0, 46.0])  # errors +2, -1, +3, -4
    metrics = regression_metrics(y, pred)
    assert metrics["mae"] == pytest.approx(2.5)
    assert metrics["rmse"] == pytest.approx(np.sqrt((4 + 1 + 9 + 16) / 4))
    assert metrics["mean_error"] == pytest.approx(0.0)
    assert metrics["r2"] == pytest.approx(1 - 30 / 500)
    assert metrics["r"] == pytest.approx(np.corrcoef(y, pred)[0, 1])
    assert metrics["n"] == 4
    rng = np.random.default_rng(2)
    y = rng.uniform(20, 80, 200)
    pred = y + rng.normal(3, 5, 200)
    metrics = regression_metrics(y, pred)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert metrics["r2"] == pytest.approx(r2_score(y, pred))
    assert metrics["mean_error"] == pytest.approx(np.mean(pred - y))
    assert metrics["mean_error"] > 0  # the simulated model over-estimates by 3 years


def test_constant_predictions_or_targets_give_nan_correlation() -> None:
    constant_prediction = regression_metrics([20.0, 30.0, 40.0], [35.0, 35.0, 35.0])
    assert math.isnan(constant_prediction["r"])
    assert constant_prediction["mae"] == pytest.approx((15 + 5 + 5) / 3)
    constant_target = regression_metrics([30.0, 30.0, 30.0], [29.0, 30.0, 32.0])
    assert math.isnan(constant_target["r"]) and math.isnan(constant_target["r2"])


def _biased_predictions(age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Regression to the mean: slope 0.6 towards an intercept of 20 years, plus noise.
    return 0.6 * age + 20.0 + rng.normal(0.0, 2.0, age.size)


def test_bias_correction_recovers_the_linear_bias_and_lowers_held_out_mae() -> None:
    rng = np.random.default_rng(3)
    val_age = rng.uniform(20, 85, 400)
    correction = AgeBiasCorrection.fit(val_age, _biased_predictions(val_age, rng))
    assert correction.slope == pytest.approx(0.6, abs=0.02)
    assert correction.intercept == pytest.approx(20.0, abs=1.0)
    assert correction.fallback_reason is None

    test_age = rng.uniform(20, 85, 400)
    raw = _biased_predictions(test_age, rng)
    corrected = correction.apply(raw)
    assert (
        regression_metrics(test_age, corrected)["mae"]
        < 0.5 * regression_metrics(test_age, raw)["mae"]
    )
    # The age-dependent bias is gone: residuals no longer fall with age.
    assert abs(np.polyfit(test_age, corrected - test_age, 1)[0]) < 0.05
    assert np.polyfit(test_age, raw - test_age, 1)[0] < -0.3


def test_bias_correction_is_frozen() -> None:
    correction = AgeBiasCorrection(slope=0.8, intercept=10.0)
    with pytest.raises(AttributeError):
        correction.slope = 1.0  # type: ignore[misc]
    np.testing.assert_allclose(correction.apply([50.0, 26.0]), [50.0, 20.0])


def test_near_zero_slope_falls_back_to_identity_with_the_reason_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(4)
    age = rng.uniform(20, 80, 100)
    flat = 50.0 + 0.01 * age + rng.normal(0, 1, 100)  # a model that ignores age
    correction = AgeBiasCorrection.fit(age, flat)
    assert (correction.slope, correction.intercept) == (1.0, 0.0)
    assert "barely tracks age" in correction.fallback_reason
    assert "age-bias correction not applied" in caplog.text
    np.testing.assert_array_equal(correction.apply(flat), flat)


def test_single_validation_age_falls_back_to_identity() -> None:
    correction = AgeBiasCorrection.fit([60.0, 60.0, 60.0], [55.0, 61.0, 58.0])
    assert (correction.slope, correction.intercept) == (1.0, 0.0)
    assert "1 distinct age" in correction.fallback_reason


def test_bias_correction_rejects_nan_predictions() -> None:
    with pytest.raises(ValueError, match="y_pred has 1 non-finite"):
        AgeBiasCorrection.fit([20.0, 40.0, 60.0], [25.0, np.nan, 55.0])
