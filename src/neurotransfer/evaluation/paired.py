"""Paired comparison of two models scored on the same subjects.

Two fine-tuned models (two initialisations, say) evaluated on the same test subjects are not
independent samples: a subject that is hard for one is usually hard for the other. Comparing
their two unpaired confidence intervals wastes that pairing and is badly conservative, so the
difference is resampled directly:

- ``paired_bootstrap``: subjects are resampled once per replicate (stratified by class for binary
  tasks, every scan of a drawn subject kept together, exactly as ``bootstrap.subject_resamples``
  draws them) and both models are scored on the same resample, giving a percentile interval of
  the difference ``B - A``. The two-sided p-value is the inversion of that same percentile
  interval, ``2 min(P(d* <= 0), P(d* >= 0))`` (Efron & Tibshirani 1993, sec. 15.4; Davison &
  Hinkley 1997, sec. 4.4): the interval excludes 0 exactly when p < 1 - level, so the two never
  disagree. It models subject sampling only, with one model per side: two seeds of the same
  configuration can come out "significantly" different. `compare` decides with
  `evaluation.decision` instead (seeds and subjects; calibrated at n = 20 by simulation).
- ``delong_test``: the asymptotic test of DeLong, DeLong & Clarke-Pearson (1988) for two
  correlated ROC AUCs, with the O(N log N) algorithm of Sun & Xu (2014, IEEE Signal Processing
  Letters 21:1389) that computes the structural components from mid-ranks instead of all
  (positive, negative) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from neurotransfer.evaluation.bootstrap import (
    CORRECTED_METRICS,
    require_columns,
    subject_resamples,
)
from neurotransfer.evaluation.metrics import (
    COUNT_METRICS,
    binary_metrics_unchecked,
    check_binary,
    check_kind,
    check_regression,
    regression_metrics_unchecked,
)

# Metrics for which a larger value is better; the others (errors, Brier) are better when lower.
HIGHER_IS_BETTER: frozenset[str] = frozenset(
    {"auc", "balanced_accuracy", "f1", "sensitivity", "specificity", "accuracy", "r", "r2"}
)
# The headline metrics of a comparison table, per task kind (every metric is still computed).
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "balanced_accuracy", "brier"),
    "regression": ("mae", "mae_corrected", "r"),
}
KEY_COLUMNS = ("subject_id", "target")


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float  # auc_b - auc_a
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis with ties given their average rank (Sun & Xu's mid-ranks)."""
    return stats.rankdata(x, axis=-1)


def delong_components(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of `k` score vectors on the same subjects.

    `scores` is ``[k, n]``. Returns ``(aucs [k], v10 [k, m], v01 [k, n_neg])`` where ``v10[r, i]``
    is the fraction of negatives that positive ``i`` outranks under score ``r`` (ties count 1/2)
    and ``v01[r, j]`` the fraction of positives that outrank negative ``j``.
    """
    truth = np.asarray(y_true, dtype=np.float64)
    values = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if values.shape[1] != truth.size:
        raise ValueError(f"scores have {values.shape[1]} columns but y_true has {truth.size}")
    positive = truth == 1.0
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes: AUC is undefined otherwise")
    x, y = values[:, positive], values[:, ~positive]
    tx, ty = _midranks(x), _midranks(y)
    tz = _midranks(np.concatenate([x, y], axis=1))
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    # A positive's rank among all minus its rank among positives counts the negatives below it.
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``[k]`` and their DeLong covariance matrix ``[k, k]``."""
    aucs, v10, v01 = delong_components(y_true, scores)
    m, n = v10.shape[1], v01.shape[1]
    # With a single subject in a class its variance term is 0 (np.cov would return NaN).
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


def delong_test(
    y_true: npt.ArrayLike,
    score_a: npt.ArrayLike,
    score_b: npt.ArrayLike,
    ci_level: float = 0.95,
) -> DeLongResult:
    """DeLong's test of ``AUC_b - AUC_a = 0`` for two scores of the same subjects.

    Returns both AUCs, the difference, its standard error, z, the two-sided p-value and a Wald
    interval of the difference. Identical scores give se 0: z and p are NaN (nothing to test).
    """
    truth, a = check_binary(y_true, score_a)
    _, b = check_binary(truth, score_b)
    aucs, cov = delong_covariance(truth, np.vstack([a, b]))
    contrast = np.array([-1.0, 1.0])
    difference = float(aucs[1] - aucs[0])
    variance = float(contrast @ cov @ contrast)
    se = float(np.sqrt(max(variance, 0.0)))
    if se > 0:
        z = difference / se
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    else:
        z = p_value = float("nan")
    half = float(stats.norm.ppf(0.5 + ci_level / 2.0)) * se
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        se=se,
        z=float(z),
        p_value=p_value,
        ci_low=difference - half,
        ci_high=difference + half,
    )


def align_predictions(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> pd.DataFrame:
    """Rows of two prediction tables for the same scans, side by side.

    Scans are matched on subject and occurrence within the subject (a subject with two scans
    pairs its first with the other table's first). Only subjects in both tables are kept, and
    they must have the same target in both: otherwise the models were not scored on the same
    data and the comparison would be meaningless. Columns: subject_id, target, prediction_a,
    prediction_b (and prediction_corrected_a/_b when both tables have bias-corrected ages).
    """
    keyed = []
    for frame in (frame_a, frame_b):
        require_columns(frame, ["subject_id", "target", "prediction"])
        keyed.append(frame.assign(_occurrence=frame.groupby("subject_id").cumcount()))
    columns = ["prediction"]
    if all("prediction_corrected" in f.columns for f in (frame_a, frame_b)):
        columns.append("prediction_corrected")
    merged = keyed[0][["subject_id", "_occurrence", "target", *columns]].merge(
        keyed[1][["subject_id", "_occurrence", "target", *columns]],
        on=["subject_id", "_occurrence"],
        suffixes=("_a", "_b"),
        validate="one_to_one",
    )
    if merged.empty:
        raise ValueError("the two prediction tables share no subject: nothing to compare")
    differs = ~np.isclose(merged["target_a"], merged["target_b"])
    if differs.any():
        raise ValueError(
            f"{int(differs.sum())} shared subject(s) have different targets in the two tables "
            f"(e.g. {merged.loc[differs, 'subject_id'].head(3).tolist()}): not the same test data"
        )
    return merged.drop(columns=["_occurrence", "target_b"]).rename(columns={"target_a": "target"})


def _scores(kind: str, target: np.ndarray, predictions: dict[str, np.ndarray]) -> dict[str, float]:
    if kind == "binary":
        metrics = binary_metrics_unchecked(target, predictions["prediction"])
    else:
        metrics = regression_metrics_unchecked(target, predictions["prediction"])
        if "prediction_corrected" in predictions:
            corrected = regression_metrics_unchecked(target, predictions["prediction_corrected"])
            metrics.update({f"{k}_corrected": corrected[k] for k in CORRECTED_METRICS})
    return {k: float(v) for k, v in metrics.items() if k not in COUNT_METRICS}


def _validated(kind: str, paired: pd.DataFrame, side: str) -> dict[str, np.ndarray]:
    check = check_binary if kind == "binary" else check_regression
    arrays = {}
    for column in ("prediction", "prediction_corrected"):
        if f"{column}_{side}" in paired.columns:
            arrays[column] = check(paired["target"], paired[f"{column}_{side}"])[1]
    return arrays


def percentile_p_value(draws: np.ndarray) -> float:
    """Two-sided p-value that inverts the percentile interval: twice the smaller share of the
    bootstrap draws on either side of 0, so the level-(1 - alpha) percentile interval excludes
    0 exactly when p < alpha (up to the Monte-Carlo +1, which keeps p above 0)."""
    below = np.count_nonzero(draws <= 0.0)
    above = np.count_nonzero(draws >= 0.0)
    return float(min(1.0, 2.0 * (min(below, above) + 1) / (draws.size + 1)))


def paired_bootstrap(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    kind: str,
    n_resamples: int = 2000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of models A and B on their shared subjects, and the paired difference B - A.

    Returns ``{"n_subjects", "n", ["n_positive"], "metrics": {metric: {"a", "b", "difference",
    "ci_low", "ci_high", "p_value", "higher_is_better"}}}``. For binary tasks the AUC entry also
    carries DeLong's ``delong_p_value``, ``delong_ci_low`` and ``delong_ci_high``. Replicates in
    which a metric is undefined are left out of its interval and p-value. Same inputs and seed,
    same result.
    """
    check_kind(kind)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")
    paired = align_predictions(frame_a, frame_b)
    target = (check_binary if kind == "binary" else check_regression)(
        paired["target"], paired["prediction_a"]
    )[0]
    arrays = {"a": _validated(kind, paired, "a"), "b": _validated(kind, paired, "b")}
    point = {side: _scores(kind, target, arrays[side]) for side in arrays}
    names = [name for name in point["a"] if name in point["b"]]

    differences = np.empty((n_resamples, len(names)))
    resamples = subject_resamples(paired, kind, n_resamples, seed)
    for i, rows in enumerate(resamples):
        a = _scores(kind, target[rows], {k: v[rows] for k, v in arrays["a"].items()})
        b = _scores(kind, target[rows], {k: v[rows] for k, v in arrays["b"].items()})
        differences[i] = [b[name] - a[name] for name in names]

    tail = 100.0 * (1.0 - ci_level) / 2.0
    metrics: dict[str, dict[str, Any]] = {}
    for column, name in enumerate(names):
        difference = point["b"][name] - point["a"][name]
        draws = differences[:, column][np.isfinite(differences[:, column])]
        entry: dict[str, Any] = {
            "a": point["a"][name],
            "b": point["b"][name],
            "difference": difference,
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": float("nan"),
            "higher_is_better": name.removesuffix("_corrected") in HIGHER_IS_BETTER,
        }
        if draws.size and np.isfinite(difference):
            low, high = np.percentile(draws, [tail, 100.0 - tail])
            entry["ci_low"], entry["ci_high"] = float(low), float(high)
            entry["p_value"] = percentile_p_value(draws)
        metrics[name] = entry

    if kind == "binary" and 0 < target.sum() < target.size:
        delong = delong_test(target, arrays["a"]["prediction"], arrays["b"]["prediction"], ci_level)
        metrics["auc"].update(
            delong_p_value=delong.p_value,
            delong_ci_low=delong.ci_low,
            delong_ci_high=delong.ci_high,
        )
    counts: dict[str, Any] = {"n": len(paired), "n_subjects": int(paired["subject_id"].nunique())}
    if kind == "binary":
        counts["n_positive"] = int(target.sum())
    return {**counts, "metrics": metrics}
