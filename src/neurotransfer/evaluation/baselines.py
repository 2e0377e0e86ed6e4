"""Baselines a fine-tuned network must beat: the training mean, and a linear model on voxels.

The ridge baseline (logistic regression for binary tasks) sees the same data in the same roles
as the network: its regularisation strength is chosen on the validation split, like the
network's early stopping, and it is then refitted on train + val with that strength. The final
refit uses more data than the network's weights saw, which makes the bar slightly higher,
never lower.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from neurotransfer.evaluation.bootstrap import require_columns, split_groups
from neurotransfer.evaluation.metrics import binary_metrics, check_kind, regression_metrics

log = logging.getLogger(__name__)

# Penalty grid, relative to the number of voxels: on standardised voxels the Gram matrix X X^T
# scales with the number of features, so ``alpha = n_features * 10^k`` spans the same range at
# any downsampling. Its ends approach the two limits of the model, the minimum-norm fit (with
# more voxels than subjects; validation scores flatten there) at k = -5 and the training-mean
# predictor at k = 4, so a choice at either end is a limit reached, not a grid cut short.
RELATIVE_PENALTIES = 10.0 ** np.arange(-5.0, 4.5, 0.5)
LOGISTIC_MAX_ITER = 1000


def downsample_for_baseline(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over `factor`³ voxels of the last three (spatial) axes, as float32.

    Leading axes (a channel axis, say) are kept. Trailing voxels that do not fill a whole block
    are cropped; preprocessed volumes have background there.
    """
    if factor < 1:
        raise ValueError(f"downsampling factor must be a positive integer, got {factor}")
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim < 3:
        raise ValueError(f"expected a volume with 3 spatial axes, got shape {array.shape}")
    spatial = array.shape[-3:]
    if min(spatial) < factor:
        raise ValueError(f"volume of shape {array.shape} is smaller than one {factor}³ block")
    kept = tuple(size - size % factor for size in spatial)
    cropped = array[(..., *(slice(0, size) for size in kept))]
    blocks = cropped.reshape(
        *array.shape[:-3], *(x for size in kept for x in (size // factor, factor))
    )
    return blocks.mean(axis=(-5, -3, -1), dtype=np.float64).astype(np.float32)


def mean_predictor_baseline(
    train_target: npt.ArrayLike, eval_frame: pd.DataFrame, kind: str
) -> dict[str, dict[str, float]]:
    """Point metrics, per split of `eval_frame`, of predicting the training mean for everyone.

    For binary tasks the training mean is the prevalence, used as every subject's probability:
    its AUC is 0.5 and its Brier score is the one to beat with calibrated probabilities.
    Returns ``{split: metrics}`` like `binary_metrics` / `regression_metrics`.
    """
    check_kind(kind)
    require_columns(eval_frame, ["split", "target"])
    train = np.asarray(train_target, dtype=np.float64)
    if train.size == 0 or not np.isfinite(train).all():
        raise ValueError("train_target must be a non-empty array of finite values")
    return scored_point_metrics(eval_frame.assign(prediction=float(train.mean())), kind)


def scored_point_metrics(frame: pd.DataFrame, kind: str) -> dict[str, dict[str, float]]:
    """Point metrics (no intervals), per split of `frame`, of its ``prediction`` column: a
    baseline's figures (with cross-validation the mean predictor's constant differs by fold)."""
    check_kind(kind)
    require_columns(frame, ["split", "target", "prediction"])
    score = binary_metrics if kind == "binary" else regression_metrics
    return {
        split: score(rows["target"].to_numpy(), rows["prediction"].to_numpy(float))
        for split, rows in split_groups(frame)
    }


def _checked_matrix(x: npt.ArrayLike, name: str, n_features: int | None = None) -> np.ndarray:
    matrix = np.asarray(x, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty [subjects, features] matrix, got {matrix.shape}"
        )
    if n_features is not None and matrix.shape[1] != n_features:
        raise ValueError(f"{name} has {matrix.shape[1]} features but X_train has {n_features}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} has non-finite values")
    return matrix


def _checked_target(y: npt.ArrayLike, name: str, n_rows: int, kind: str) -> np.ndarray:
    target = np.asarray(y, dtype=np.float64).reshape(-1)
    if target.size != n_rows:
        raise ValueError(f"{name} has {target.size} values for {n_rows} rows of features")
    if not np.isfinite(target).all():
        raise ValueError(f"{name} has non-finite values")
    if kind == "binary" and set(np.unique(target)) != {0.0, 1.0}:
        raise ValueError(
            f"{name} must hold both classes 0 and 1 to fit a classifier, found "
            f"{np.unique(target).tolist()}"
        )
    return target


def ridge_voxel_baseline(
    X_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    X_val: npt.ArrayLike,
    y_val: npt.ArrayLike,
    X_eval: npt.ArrayLike,
    kind: str,
    seed: int,
) -> np.ndarray:
    """Predictions for `X_eval` of a standardised linear model on flattened voxels.

    Regression: ridge regression, penalty chosen by validation MAE. Binary: L2 logistic
    regression, penalty chosen by validation log-loss (a proper scoring rule, less noisy than
    the AUC on a small validation set); returns probabilities of the positive class. Penalties
    come from `RELATIVE_PENALTIES` times the number of features; the chosen one is logged.
    Rows are subjects, columns voxels (see `downsample_for_baseline`).
    """
    check_kind(kind)
    x_train = _checked_matrix(X_train, "X_train")
    n_features = x_train.shape[1]
    x_val = _checked_matrix(X_val, "X_val", n_features)
    x_eval = _checked_matrix(X_eval, "X_eval", n_features)
    target_train = _checked_target(y_train, "y_train", len(x_train), kind)
    target_val = _checked_target(y_val, "y_val", len(x_val), kind)

    penalties = n_features * RELATIVE_PENALTIES
    if kind == "regression":
        model = Ridge(random_state=seed)
        param, values, scoring = "alpha", penalties, "neg_mean_absolute_error"
    else:
        # scikit-learn's C multiplies the data term instead of dividing the penalty: C = 1/alpha.
        model = LogisticRegression(max_iter=LOGISTIC_MAX_ITER, random_state=seed)
        param, values, scoring = "C", 1.0 / penalties, "neg_log_loss"
    pipeline = Pipeline([("standardise", StandardScaler()), ("model", model)])
    # One fold: fit on train (-1), score on val (0); refit=True then refits on both.
    validation_fold = np.r_[np.full(len(x_train), -1), np.zeros(len(x_val))]
    search = GridSearchCV(
        pipeline,
        {f"model__{param}": values},
        scoring=scoring,
        cv=PredefinedSplit(validation_fold),
        refit=True,
    )
    search.fit(np.vstack([x_train, x_val]), np.r_[target_train, target_val])
    chosen = search.best_params_[f"model__{param}"]
    log.info(
        "voxel baseline (%s): %s = %.3g chosen on validation (%s %.4g), %d features",
        kind,
        param,
        chosen,
        scoring,
        search.best_score_,
        n_features,
    )
    if kind == "binary":
        return search.predict_proba(x_eval)[:, 1]
    return search.predict(x_eval)
