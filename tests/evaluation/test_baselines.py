"""Mean-predictor and voxel ridge baselines, and the block-mean downsampling they use."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from neurotransfer.evaluation import (
    binary_metrics,
    downsample_for_baseline,
    mean_predictor_baseline,
    regression_metrics,
    ridge_voxel_baseline,
)


def test_downsampling_averages_blocks() -> None:
    volume = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    small = downsample_for_baseline(volume, 2)
    assert small.shape == (2, 2, 2) and small.dtype == np.float32
    assert small[0, 0, 0] == pytest.approx(volume[:2, :2, :2].mean())
    assert small[1, 0, 1] == pytest.approx(volume[2:, :2, 2:].mean())
    assert small.mean() == pytest.approx(volume.mean())
    np.testing.assert_array_equal(downsample_for_baseline(volume, 1), volume)


def test_downsampling_crops_partial_blocks_and_keeps_leading_axes() -> None:
    volume = np.ones((1, 7, 9, 5), dtype=np.float16)
    volume[0, 6, :, :] = 100.0  # the partial block along the first spatial axis is dropped
    small = downsample_for_baseline(volume, 2)
    assert small.shape == (1, 3, 4, 2)
    np.testing.assert_allclose(small, 1.0)


@pytest.mark.parametrize(
    ("shape", "factor", "message"),
    [((4, 4), 2, "3 spatial axes"), ((4, 4, 4), 0, "positive integer"), ((2, 8, 8), 3, "block")],
)
def test_downsampling_rejects_bad_input(shape: tuple[int, ...], factor: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        downsample_for_baseline(np.zeros(shape), factor)


def _eval_frame(target: np.ndarray) -> pd.DataFrame:
    half = len(target) // 2
    return pd.DataFrame(
        {"split": ["test"] * half + ["ood_test"] * (len(target) - half), "target": target}
    )


def test_mean_predictor_regression_predicts_the_training_mean() -> None:
    train = np.array([30.0, 40.0, 50.0])  # mean 40
    frame = _eval_frame(np.array([35.0, 45.0, 20.0, 60.0]))
    result = mean_predictor_baseline(train, frame, "regression")
    assert list(result) == ["test", "ood_test"]
    assert result["test"]["mae"] == pytest.approx(5.0)
    assert result["ood_test"]["mae"] == pytest.approx(20.0)
    assert result["ood_test"]["mean_error"] == pytest.approx(0.0)
    assert math.isnan(result["test"]["r"])  # a constant has no correlation


def test_mean_predictor_binary_uses_the_training_prevalence() -> None:
    train = np.array([1, 0, 0, 0])  # prevalence 0.25: everyone called negative at 0.5
    frame = _eval_frame(np.array([1, 0, 1, 0, 0, 1]))
    result = mean_predictor_baseline(train, frame, "binary")
    assert result["test"]["auc"] == pytest.approx(0.5)
    assert result["test"]["balanced_accuracy"] == pytest.approx(0.5)
    assert result["test"]["sensitivity"] == 0.0
    assert result["test"]["brier"] == pytest.approx(np.mean((0.25 - np.array([1, 0, 1])) ** 2))


def _linear_voxels(n: int, rng: np.random.Generator, weights: np.ndarray) -> tuple:
    age = rng.uniform(20, 80, n)
    voxels = rng.normal(0.0, 1.0, (n, weights.size)) + np.outer((age - 50) / 15, weights)
    return voxels, age


def test_ridge_baseline_beats_the_mean_on_a_linear_signal() -> None:
    rng = np.random.default_rng(0)
    weights = np.zeros(400)
    weights[:40] = 0.5  # 40 of 400 voxels carry age
    x_train, y_train = _linear_voxels(80, rng, weights)
    x_val, y_val = _linear_voxels(30, rng, weights)
    x_eval, y_eval = _linear_voxels(60, rng, weights)
    predicted = ridge_voxel_baseline(x_train, y_train, x_val, y_val, x_eval, "regression", seed=0)
    assert predicted.shape == (60,)
    ridge_mae = regression_metrics(y_eval, predicted)["mae"]
    mean_mae = mean_predictor_baseline(
        y_train, pd.DataFrame({"split": "test", "target": y_eval}), "regression"
    )["test"]["mae"]
    assert ridge_mae < 0.5 * mean_mae


def _over_50(age: np.ndarray) -> np.ndarray:
    return (age > 50).astype(int)


def test_logistic_baseline_returns_probabilities_that_discriminate() -> None:
    rng = np.random.default_rng(1)
    weights = np.zeros(300)
    weights[:30] = 0.5
    x_train, age_train = _linear_voxels(80, rng, weights)
    x_val, age_val = _linear_voxels(30, rng, weights)
    x_eval, age_eval = _linear_voxels(60, rng, weights)
    probability = ridge_voxel_baseline(
        x_train, _over_50(age_train), x_val, _over_50(age_val), x_eval, "binary", seed=0
    )
    assert probability.shape == (60,)
    assert ((probability >= 0) & (probability <= 1)).all()
    assert binary_metrics(_over_50(age_eval), probability)["auc"] > 0.85


def test_ridge_baseline_rejects_mismatched_or_one_class_input() -> None:
    x = np.zeros((10, 5))
    y = np.arange(10.0)
    with pytest.raises(ValueError, match="X_val has 4 features but X_train has 5"):
        ridge_voxel_baseline(x, y, np.zeros((3, 4)), y[:3], x, "regression", 0)
    with pytest.raises(ValueError, match="y_train has 9 values for 10 rows"):
        ridge_voxel_baseline(x, y[:9], x, y, x, "regression", 0)
    with pytest.raises(ValueError, match="both classes"):
        ridge_voxel_baseline(x, np.zeros(10), x, np.r_[np.zeros(5), np.ones(5)], x, "binary", 0)
