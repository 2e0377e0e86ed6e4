"""Subject-level bootstrap confidence intervals, and the per-split, per-site evaluation table.

Resampling unit: the subject. A subject with several scans keeps all of them together in a
resample, so repeated scans do not pass for independent evidence and narrow the interval. For
binary tasks subjects are drawn within their class (stratified), so every resample has the
class balance of the data and the AUC is defined in all of them.

Interval: the percentile bootstrap (Efron & Tibshirani 1993, ch. 13) around the point estimate
on the full data. A resample in which a metric is undefined (NaN) is left out of that metric's
percentiles.

Every group (a split, a site) is resampled with a generator seeded by `seed` alone, so a site's
interval does not depend on which other sites or splits were scored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from neurotransfer.evaluation.metrics import (
    COUNT_METRICS,
    DEFAULT_THRESHOLD,
    binary_metrics_unchecked,
    check_binary,
    check_kind,
    check_regression,
    check_threshold,
    regression_metrics_unchecked,
)

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = {"raw": "prediction", "corrected": "prediction_corrected"}
EVALUATION_COLUMNS: tuple[str, ...] = ("subject_id", "site", "split", "target", "prediction")
# Below this many subjects a percentile interval mostly reflects which few subjects were drawn:
# the point estimate is still reported, the interval is NaN (null in JSON) with a note.
MIN_SUBJECTS_FOR_CI = 5
# Bias correction is a positive affine map of the prediction, so it leaves Pearson's r unchanged:
# the corrected variant of r would only repeat the raw one.
CORRECTED_METRICS: tuple[str, ...] = ("mae", "rmse", "r2", "mean_error")


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"prediction table lacks column(s) {missing}; it has {list(frame.columns)}"
        )


def split_groups(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(split, rows)`` for every split in order of first appearance; a row without a split is
    an error rather than silently left out (pandas' groupby would drop it)."""
    require_columns(frame, ["split"])
    missing = frame["split"].isna()
    if missing.any():
        raise ValueError(f"column 'split' has {int(missing.sum())} missing value(s)")
    for split, rows in frame.groupby("split", sort=False):
        yield str(split), rows


def _checked_column(frame: pd.DataFrame, kind: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    check = check_binary if kind == "binary" else check_regression
    try:
        return check(frame["target"], frame[column])
    except ValueError as err:
        raise ValueError(f"columns 'target' / {column!r}: {err}") from err


def _validated_arrays(frame: pd.DataFrame, kind: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Target and prediction column(s) as float arrays, failing with the column named."""
    target, raw = _checked_column(frame, kind, PREDICTION_COLUMNS["raw"])
    predictions = {"raw": raw}
    corrected_column = PREDICTION_COLUMNS["corrected"]
    if corrected_column in frame.columns:
        if kind != "regression":
            raise ValueError(
                f"column {corrected_column!r} only applies to regression tasks, not {kind!r}"
            )
        predictions["corrected"] = _checked_column(frame, kind, corrected_column)[1]
    return target, predictions


def _metrics(
    kind: str,
    target: np.ndarray,
    predictions: dict[str, np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    if kind == "binary":
        return binary_metrics_unchecked(target, predictions["raw"], threshold)
    metrics = regression_metrics_unchecked(target, predictions["raw"])
    if "corrected" in predictions:
        corrected = regression_metrics_unchecked(target, predictions["corrected"])
        metrics.update({f"{name}_corrected": corrected[name] for name in CORRECTED_METRICS})
    return metrics


class _SubjectResampler:
    """Draws bootstrap resamples of row indices, subjects with replacement, within strata."""

    def __init__(self, subject_codes: np.ndarray, strata: np.ndarray) -> None:
        # Rows grouped by subject: subject s owns order[starts[s] : starts[s] + counts[s]].
        self.order = np.argsort(subject_codes, kind="stable")
        self.counts = np.bincount(subject_codes)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.members = [np.flatnonzero(strata == s) for s in np.unique(strata)]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        subjects = np.concatenate([rng.choice(m, size=m.size, replace=True) for m in self.members])
        counts = self.counts[subjects]
        # Position i of the output belongs to drawn subject k; its offset within that subject is
        # i - (first output position of k), which is added to the subject's first sorted row.
        first_output = np.cumsum(counts) - counts
        positions = np.arange(counts.sum()) + np.repeat(
            self.starts[subjects] - first_output, counts
        )
        return self.order[positions]


def _resampler(frame: pd.DataFrame, kind: str, group_col: str) -> _SubjectResampler:
    require_columns(frame, [group_col, "target"])
    subject_codes, _ = pd.factorize(frame[group_col], sort=False)
    if subject_codes.size == 0:
        raise ValueError("prediction table is empty: no subjects to resample")
    if (subject_codes < 0).any():
        raise ValueError(f"column {group_col!r} has missing subject identifiers")
    strata = np.zeros(subject_codes.max() + 1, dtype=np.int64)
    if kind == "binary":
        labels = frame["target"].to_numpy()
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("column 'target' must hold 0 or 1 for a binary task")
        # A subject's stratum is positive if any of its rows is (a scan after conversion, say).
        np.maximum.at(strata, subject_codes, labels.astype(np.int64))
    return _SubjectResampler(subject_codes, strata)


def subject_resamples(
    frame: pd.DataFrame, kind: str, n_resamples: int, seed: int, group_col: str = "subject_id"
) -> Iterator[np.ndarray]:
    """Row positions (into `frame`) of `n_resamples` bootstrap resamples.

    Subjects are drawn with replacement, as many as there are; every row of a drawn subject comes
    along. For binary tasks subjects are drawn within their class, so each resample has exactly
    as many positive and negative subjects as `frame`. Paired comparisons (two models scored on
    the same subjects) can use the same resamples for both. Same inputs and seed, same resamples.
    """
    check_kind(kind)
    resampler = _resampler(frame, kind, group_col)
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield resampler.draw(rng)


def bootstrap_metrics(
    frame: pd.DataFrame,
    kind: str,
    n_resamples: int,
    ci_level: float,
    seed: int,
    group_col: str = "subject_id",
    min_subjects: int = MIN_SUBJECTS_FOR_CI,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, dict[str, float]]:
    """Point estimate and percentile bootstrap interval of every metric of `kind`.

    `frame` needs `group_col`, ``target`` and ``prediction`` (a probability for binary tasks,
    years for regression) and, for regression, optionally ``prediction_corrected``, whose
    metrics are added with a ``_corrected`` suffix and resampled together with the raw ones.
    Count metrics (n, n_positive) are not resampled and are left out. Intervals are NaN when
    fewer than `min_subjects` subjects are present. Binary calls are ``score >= threshold``
    (chosen beforehand on validation, see `metrics.choose_threshold`; never on these subjects).
    Same inputs and seed, same result.

    Returns ``{metric: {"value", "ci_low", "ci_high"}}``.
    """
    check_kind(kind)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")
    require_columns(frame, [group_col, "target", "prediction"])
    target, predictions = _validated_arrays(frame, kind)
    check_threshold(threshold)
    point = {
        k: v
        for k, v in _metrics(kind, target, predictions, threshold).items()
        if k not in COUNT_METRICS
    }
    names = list(point)
    result = {
        name: {"value": float(point[name]), "ci_low": float("nan"), "ci_high": float("nan")}
        for name in names
    }
    if frame[group_col].nunique() < min_subjects:
        return result

    draws = np.empty((n_resamples, len(names)))
    for i, rows in enumerate(subject_resamples(frame, kind, n_resamples, seed, group_col)):
        sample = _metrics(
            kind, target[rows], {k: v[rows] for k, v in predictions.items()}, threshold
        )
        draws[i] = [sample[name] for name in names]
    tail = 100.0 * (1.0 - ci_level) / 2.0
    for column, name in enumerate(names):
        defined = draws[:, column][np.isfinite(draws[:, column])]
        if defined.size:
            low, high = np.percentile(defined, [tail, 100.0 - tail])
            result[name]["ci_low"], result[name]["ci_high"] = float(low), float(high)
    return result


def group_counts(frame: pd.DataFrame, kind: str) -> dict[str, int]:
    counts = {"n": len(frame), "n_subjects": int(frame["subject_id"].nunique())}
    if kind == "binary":
        counts["n_positive"] = int((frame["target"] == 1).sum())
    return counts


def site_note(counts: dict[str, int], kind: str) -> str | None:
    notes = []
    if counts["n_subjects"] < MIN_SUBJECTS_FOR_CI:
        notes.append(f"fewer than {MIN_SUBJECTS_FOR_CI} subjects: no bootstrap interval")
    if kind == "binary" and counts["n_positive"] in (0, counts["n"]):
        present = "positive" if counts["n_positive"] else "negative"
        notes.append(
            f"only {present} subjects: AUC, balanced accuracy and "
            f"{'specificity' if counts['n_positive'] else 'sensitivity'} are undefined"
        )
    return "; ".join(notes) or None


def evaluate_predictions(
    frame: pd.DataFrame,
    kind: str,
    n_resamples: int,
    ci_level: float,
    seed: int,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, dict[str, Any]]:
    """Metrics with subject-level bootstrap intervals for every split, overall and per site.

    `frame` has one row per scored scan with columns subject_id, site, split, target and
    prediction (probability for binary tasks, years for regression), and for regression
    optionally prediction_corrected (bias-corrected years; its metrics carry a ``_corrected``
    suffix, so both the raw and the corrected MAE are reported). Binary calls (balanced
    accuracy, sensitivity, ...) are ``prediction >= threshold``.

    Returns, per split in order of appearance::

        {split: {"n", "n_subjects", ["n_positive"],
                 "metrics": {metric: {"value", "ci_low", "ci_high"}},
                 "per_site": {site: {"n", "n_subjects", ["n_positive"], "metrics": {...},
                                     "note": why some values are NaN, or None}}}}

    Sites too small for an interval, or with one class, stay in the table with their counts and
    NaN where a value is undefined (null once passed through `json_ready`).
    """
    check_kind(kind)
    require_columns(frame, EVALUATION_COLUMNS)
    if frame.empty:
        raise ValueError("prediction table is empty: no split to evaluate")
    if frame["site"].isna().any():
        raise ValueError(f"column 'site' has {int(frame['site'].isna().sum())} missing value(s)")

    evaluation: dict[str, dict[str, Any]] = {}
    for split, split_rows in split_groups(frame):
        per_site: dict[str, dict[str, Any]] = {}
        for site, site_rows in split_rows.groupby("site", sort=True):
            counts = group_counts(site_rows, kind)
            per_site[str(site)] = {
                **counts,
                "metrics": bootstrap_metrics(
                    site_rows, kind, n_resamples, ci_level, seed, threshold=threshold
                ),
                "note": site_note(counts, kind),
            }
        evaluation[split] = {
            **group_counts(split_rows, kind),
            "metrics": bootstrap_metrics(
                split_rows, kind, n_resamples, ci_level, seed, threshold=threshold
            ),
            "per_site": per_site,
        }
        log.info(
            "%s: %d subjects in %d site(s) evaluated",
            split,
            evaluation[split]["n_subjects"],
            len(per_site),
        )
    return evaluation
