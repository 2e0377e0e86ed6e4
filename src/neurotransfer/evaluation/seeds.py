"""Metrics of a model trained with several fine-tuning seeds: per-seed figures, their mean, and
an interval that accounts for both the seeds and the test subjects.

A prediction table carries one column per seed value k, ``prediction_seed<k>`` (for brain age
also ``prediction_corrected_seed<k>``, each seed with its own validation-fitted bias
correction). For every metric:

- each seed's point estimate on the group's subjects (binary calls at that seed's threshold,
  chosen on validation: `metrics.choose_threshold`);
- ``value``: their mean over seeds, and ``seed_sd``: their standard deviation (0 for one seed);
- ``ci_low`` / ``ci_high``: ``value ± t(df) · se``, where ``se`` and ``df`` come from the
  two-way (seed × subject) random-effects estimate of ``decision.seed_subject_estimate`` on
  per-subject jackknife pseudo-values (``decision.pseudo_values``). With one seed that is a
  subject-only interval (``interval`` says so). The bounds are clipped to the metric's range
  (e.g. [0, 1] for AUC). Groups with fewer than ``MIN_SUBJECTS_FOR_CI`` subjects, or where the
  pseudo-values are undefined (a site with one class has no AUC), get no interval (NaN).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from neurotransfer.evaluation.bootstrap import (
    CORRECTED_METRICS,
    MIN_SUBJECTS_FOR_CI,
    group_counts,
    require_columns,
    site_note,
    split_groups,
)
from neurotransfer.evaluation.decision import pseudo_values, seed_subject_estimate
from neurotransfer.evaluation.metrics import (
    COUNT_METRICS,
    DEFAULT_THRESHOLD,
    THRESHOLDED_METRICS,
    binary_metrics_unchecked,
    check_binary,
    check_kind,
    check_regression,
    regression_metrics_unchecked,
)
from neurotransfer.train.columns import seed_column

log = logging.getLogger(__name__)

CORRECTED_SUFFIX = "_corrected"
# Each metric's possible range: interval bounds are clipped to it.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "auc": (0.0, 1.0),
    "balanced_accuracy": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "sensitivity": (0.0, 1.0),
    "specificity": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "brier": (0.0, 1.0),
    "mae": (0.0, np.inf),
    "rmse": (0.0, np.inf),
    "r": (-1.0, 1.0),
    "r2": (-np.inf, 1.0),
    "mean_error": (-np.inf, np.inf),
}


def corrected_seed_column(seed_value: int) -> str:
    """Bias-corrected brain-age column of seed value `seed_value` (its own correction)."""
    return f"prediction_corrected_seed{seed_value}"


def seed_key(seed_value: int) -> str:
    """Key of one seed's entry in metrics JSON (dicts, not lists: ``dvc metrics`` flattens
    them into one column per value)."""
    return f"seed{seed_value}"


def point_metrics(
    kind: str,
    target: np.ndarray,
    prediction: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    corrected: np.ndarray | None = None,
) -> dict[str, float]:
    """Every (non-count) metric of one prediction vector; for brain age with `corrected` also
    the bias-corrected ones, suffixed ``_corrected``."""
    if kind == "binary":
        truth, score = check_binary(target, prediction)
        metrics = binary_metrics_unchecked(truth, score, threshold)
    else:
        truth, years = check_regression(target, prediction)
        metrics = regression_metrics_unchecked(truth, years)
        if corrected is not None:
            adjusted = regression_metrics_unchecked(truth, check_regression(truth, corrected)[1])
            metrics.update({f"{k}{CORRECTED_SUFFIX}": adjusted[k] for k in CORRECTED_METRICS})
    return {k: float(v) for k, v in metrics.items() if k not in COUNT_METRICS}


def _seed_inputs(
    rows: pd.DataFrame, kind: str, metric: str, seed_values: Sequence[int], thresholds: Mapping
) -> np.ndarray:
    """``(n_seeds, n)`` predictions whose pseudo-values give `metric`: the corrected columns for
    ``*_corrected`` metrics, and for thresholded binary metrics each seed's calls at its own
    threshold as 0/1 (``decision.pseudo_values`` calls at 0.5, which keeps 0/1 calls as they
    are)."""
    if metric.endswith(CORRECTED_SUFFIX):
        return np.stack([rows[corrected_seed_column(s)].to_numpy(float) for s in seed_values])
    raw = np.stack([rows[seed_column(s)].to_numpy(float) for s in seed_values])
    if kind == "binary" and metric in THRESHOLDED_METRICS:
        cut = np.array([thresholds[s] for s in seed_values], dtype=float)[:, None]
        return (raw >= cut).astype(float)
    return raw


def _interval(
    rows: pd.DataFrame,
    kind: str,
    metric: str,
    value: float,
    seed_values: Sequence[int],
    thresholds: Mapping,
    ci_level: float,
) -> dict[str, float]:
    base = metric.removesuffix(CORRECTED_SUFFIX)
    target = rows["target"].to_numpy(float)
    try:
        values = pseudo_values(
            kind, base, target, _seed_inputs(rows, kind, metric, seed_values, thresholds)
        )
        estimate = seed_subject_estimate(values, ci_level)
    except ValueError as err:  # undefined here (one class, constant predictions): no interval
        log.debug("no interval for %s: %s", metric, err)
        return {}
    half = float(stats.t.ppf(0.5 + ci_level / 2.0, estimate.df)) * estimate.se
    if not np.isfinite(half):
        half = 0.0 if estimate.se == 0.0 else float("nan")
    low, high = METRIC_RANGES.get(base, (-np.inf, np.inf))
    return {
        "ci_low": float(np.clip(value - half, low, high)),
        "ci_high": float(np.clip(value + half, low, high)),
        "se": float(estimate.se),
        "df": float(estimate.df),
    }


def interval_method(n_seeds: int) -> str:
    """How the intervals of a table with `n_seeds` seeds were built (recorded beside them)."""
    if n_seeds < 2:
        return (
            "subject-only t interval on jackknife pseudo-values (one fine-tuning seed: "
            "training noise not estimated)"
        )
    return (
        "seed x subject random effects on jackknife pseudo-values, Satterthwaite t "
        "(decision.seed_subject_estimate), centred on the mean over seeds"
    )


def seed_metric_estimates(
    rows: pd.DataFrame,
    kind: str,
    seed_values: Sequence[int],
    thresholds: Mapping[int, float] | None = None,
    ci_level: float = 0.95,
    min_subjects: int = MIN_SUBJECTS_FOR_CI,
) -> tuple[dict[str, dict[str, float]], dict[int, dict[str, float]]]:
    """Every metric of one group of subjects over seeds, and each seed's point estimates.

    Returns ``({metric: {"value", "seed_sd", "ci_low", "ci_high", "se", "df"}},
    {seed: {metric: value}})``; see the module docstring for what each is.
    """
    check_kind(kind)
    if not seed_values:
        raise ValueError("no fine-tuning seed to evaluate")
    thresholds = thresholds or {}
    cuts = {s: float(thresholds.get(s, DEFAULT_THRESHOLD)) for s in seed_values}
    columns = [seed_column(s) for s in seed_values]
    corrected = kind == "regression" and corrected_seed_column(seed_values[0]) in rows.columns
    if corrected:
        columns += [corrected_seed_column(s) for s in seed_values]
    require_columns(rows, ["subject_id", "target", *columns])
    target = rows["target"].to_numpy(float)
    per_seed = {
        s: point_metrics(
            kind,
            target,
            rows[seed_column(s)].to_numpy(float),
            cuts[s],
            rows[corrected_seed_column(s)].to_numpy(float) if corrected else None,
        )
        for s in seed_values
    }
    enough = rows["subject_id"].nunique() >= min_subjects
    estimates: dict[str, dict[str, float]] = {}
    for metric in per_seed[seed_values[0]]:
        values = np.array([per_seed[s][metric] for s in seed_values])
        value = float(values.mean())
        entry = {
            "value": value,
            "seed_sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "se": float("nan"),
            "df": float("nan"),
        }
        if enough and np.isfinite(value):
            entry.update(_interval(rows, kind, metric, value, seed_values, cuts, ci_level))
        estimates[metric] = entry
    return estimates, per_seed


def evaluate_seed_predictions(
    frame: pd.DataFrame,
    kind: str,
    seed_values: Sequence[int],
    thresholds: Mapping[int, float] | None = None,
    ci_level: float = 0.95,
) -> tuple[dict[str, dict[str, Any]], dict[int, dict[str, dict[str, float]]]]:
    """`bootstrap.evaluate_predictions`'s table for several seeds, and each seed's figures.

    Returns ``(evaluation, per_seed)``: ``evaluation[split]`` has the counts, ``n_seeds``,
    ``interval`` (how the intervals were built), ``metrics`` (`seed_metric_estimates`) and
    ``per_site`` (the same per site, with a ``note`` where values are undefined);
    ``per_seed[seed][split]`` has that seed's point estimates on the whole split.
    """
    require_columns(frame, ["subject_id", "site", "split", "target"])
    if frame.empty:
        raise ValueError("prediction table is empty: no split to evaluate")
    if frame["site"].isna().any():
        raise ValueError(f"column 'site' has {int(frame['site'].isna().sum())} missing value(s)")
    evaluation: dict[str, dict[str, Any]] = {}
    per_seed: dict[int, dict[str, dict[str, float]]] = {s: {} for s in seed_values}
    for split, split_rows in split_groups(frame):
        metrics, seed_points = seed_metric_estimates(
            split_rows, kind, seed_values, thresholds, ci_level
        )
        for seed, points in seed_points.items():
            per_seed[seed][split] = points
        per_site: dict[str, dict[str, Any]] = {}
        for site, site_rows in split_rows.groupby("site", sort=True):
            counts = group_counts(site_rows, kind)
            per_site[str(site)] = {
                **counts,
                "metrics": seed_metric_estimates(
                    site_rows, kind, seed_values, thresholds, ci_level
                )[0],
                "note": site_note(counts, kind),
            }
        evaluation[split] = {
            **group_counts(split_rows, kind),
            "n_seeds": len(seed_values),
            "interval": interval_method(len(seed_values)),
            "metrics": metrics,
            "per_site": per_site,
        }
    return evaluation, per_seed
