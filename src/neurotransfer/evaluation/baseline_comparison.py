"""The model against its baselines on the same subjects: the baselines' scores and the paired
difference model - ridge (``decision.metric_difference``).

The baselines' predictions travel beside the model's in the prediction tables, as the columns
:data:`MEAN_COLUMN` and :data:`RIDGE_COLUMN` (fitted per fold on its training subjects by the
``evaluate`` stage; dropped from the predictions it writes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from neurotransfer.evaluation.baselines import scored_point_metrics
from neurotransfer.evaluation.bootstrap import evaluate_predictions, require_columns, split_groups
from neurotransfer.evaluation.decision import metric_difference
from neurotransfer.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    THRESHOLDED_METRICS,
    choose_threshold,
)
from neurotransfer.evaluation.paired import DEFAULT_METRICS, HIGHER_IS_BETTER
from neurotransfer.evaluation.seeds import CORRECTED_SUFFIX, point_metrics, seed_column

# Columns the baselines' predictions are carried in beside the model's (dropped from the output).
MEAN_COLUMN = "baseline_mean"
RIDGE_COLUMN = "baseline_ridge"

# The fields of a paired difference in metrics JSON, in order; those set to NaN (with a
# ``note``) where the metric is undefined on the subjects.
RESULT_FIELDS = ("difference", "ci_low", "ci_high", "p_value", "se", "df", "method")
NAN_FIELDS = ("difference", "ci_low", "ci_high", "p_value")


def _aligned(baseline: pd.DataFrame, model: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Model rows with the baseline's ``prediction`` beside them as ``prediction_baseline``,
    matched on subject (and scan occurrence within a subject); both must have the same targets."""
    keyed = [
        frame.assign(_occurrence=frame.groupby("subject_id").cumcount())
        for frame in (baseline, model)
    ]
    merged = keyed[1][["subject_id", "_occurrence", "target", *columns]].merge(
        keyed[0][["subject_id", "_occurrence", "target", "prediction"]].rename(
            columns={"prediction": "prediction_baseline", "target": "target_baseline"}
        ),
        on=["subject_id", "_occurrence"],
        how="inner",
        validate="one_to_one",
    )
    if len(merged) != len(model):
        raise ValueError(
            f"the baseline has predictions for {len(merged)} of the model's {len(model)} scans: "
            "they must be scored on the same subjects"
        )
    if not np.allclose(merged["target"], merged["target_baseline"]):
        raise ValueError("the baseline and the model have different targets for the same subjects")
    return merged


def _difference(
    kind: str,
    name: str,
    target: np.ndarray,
    arm_a: np.ndarray,
    arm_b: np.ndarray,
    ci_level: float,
    one_seed: bool,
) -> dict[str, Any]:
    """``decision.metric_difference`` of a deterministic arm `arm_a` and the seeds' `arm_b` as
    metrics JSON fields; NaN with a ``note`` where the metric is undefined on these subjects."""
    try:
        result = metric_difference(
            kind,
            name,
            target,
            arm_a,
            arm_b,
            ci_level,
            deterministic_a=True,
            allow_one_seed=one_seed,
        )
    except ValueError as err:  # undefined on these subjects (e.g. one class)
        return {**dict.fromkeys(NAN_FIELDS, float("nan")), "note": str(err)}
    return {field: getattr(result, field) for field in RESULT_FIELDS}


def paired_against_baseline(
    baseline: pd.DataFrame,
    model: pd.DataFrame,
    kind: str,
    seed_values: list[int],
    ci_level: float,
    thresholds: dict[int, float] | None = None,
    baseline_threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Per split, the headline metrics' difference model - baseline on the same subjects.

    The model's arm is every seed's predictions (``prediction_seed<k>`` of `model`), the
    baseline's is one deterministic prediction (``prediction`` of `baseline`, e.g. the ridge):
    ``decision.metric_difference(..., deterministic_a=True)``, whose interval and p-value come
    from one rule that accounts for the model's seeds and the subjects (with one seed, subjects
    only; ``method`` says which). Positive is better for AUC, balanced accuracy and r, negative
    for MAE and Brier score. Thresholded metrics use each seed's threshold and
    `baseline_threshold`. Metrics the baseline lacks (the bias-corrected MAE) are left out.
    """
    thresholds = thresholds or {}
    cuts = {s: float(thresholds.get(s, DEFAULT_THRESHOLD)) for s in seed_values}
    columns = [seed_column(s) for s in seed_values]
    require_columns(model, ["subject_id", "split", "target", *columns])
    require_columns(baseline, ["subject_id", "split", "target", "prediction"])
    compared: dict[str, Any] = {}
    for split, model_rows in split_groups(model):
        rows = _aligned(baseline[baseline["split"] == split], model_rows, columns)
        target = rows["target"].to_numpy(float)
        seeds = rows[columns].to_numpy(float).T  # (n_seeds, n)
        reference = rows["prediction_baseline"].to_numpy(float)
        model_points = [
            point_metrics(kind, target, seeds[i], cuts[s]) for i, s in enumerate(seed_values)
        ]
        baseline_points = point_metrics(kind, target, reference, baseline_threshold)
        metrics: dict[str, Any] = {}
        for name in DEFAULT_METRICS[kind]:
            if name.endswith(CORRECTED_SUFFIX) or name not in baseline_points:
                continue
            arm_a, arm_b = reference[None, :], seeds
            if kind == "binary" and name in THRESHOLDED_METRICS:
                arm_a = (arm_a >= baseline_threshold).astype(float)
                cut = np.array([cuts[s] for s in seed_values])[:, None]
                arm_b = (arm_b >= cut).astype(float)
            entry: dict[str, Any] = {
                "a": baseline_points[name],
                "b": float(np.mean([p[name] for p in model_points])),
                "higher_is_better": name in HIGHER_IS_BETTER,
            }
            entry.update(
                _difference(kind, name, target, arm_a, arm_b, ci_level, len(seed_values) == 1)
            )
            metrics[name] = entry
        compared[split] = {
            "n_subjects": int(rows["subject_id"].nunique()),
            "n_seeds": len(seed_values),
            "metrics": metrics,
        }
    return compared


def baseline_metrics(
    val: pd.DataFrame,
    evaluated: pd.DataFrame,
    kind: str,
    seed_values: list[int],
    thresholds: dict[int, float],
    *,
    ridge: bool,
    bootstrap_samples: int,
    ci_level: float,
    seed: int,
) -> dict[str, Any]:
    """The baselines' metrics on exactly the model's subjects (``baselines``), the ridge's
    threshold, and the paired model - ridge differences (``model_minus_ridge``).

    `evaluated` holds the scored rows (``test``, ``ood_test``) and `val` the validation rows,
    both with the baselines' columns; `thresholds` are the seeds' own (binary tasks). Without
    `ridge` only the mean predictor is scored. The ridge's interval uses `bootstrap_samples`
    subject resamples drawn with `seed`.
    """
    keys = ["subject_id", "dataset", "site", "split", "target"]
    mean_frame = evaluated[keys].assign(prediction=evaluated[MEAN_COLUMN])
    out: dict[str, Any] = {"baselines": {"mean_predictor": scored_point_metrics(mean_frame, kind)}}
    if not ridge:
        return out
    ridge_threshold = DEFAULT_THRESHOLD
    if kind == "binary":
        ridge_threshold = choose_threshold(val["target"], val[RIDGE_COLUMN]).threshold
        out["baseline_thresholds"] = {"ridge_voxels": ridge_threshold}
    ridge_frame = evaluated[keys].assign(prediction=evaluated[RIDGE_COLUMN])
    out["baselines"]["ridge_voxels"] = evaluate_predictions(
        ridge_frame, kind, bootstrap_samples, ci_level, seed, threshold=ridge_threshold
    )
    # Two unpaired intervals overlap long before a difference is doubtful: the paired
    # difference (model - ridge) on the same subjects answers "does the model beat it?".
    out["model_minus_ridge"] = paired_against_baseline(
        ridge_frame, evaluated, kind, seed_values, ci_level, thresholds, ridge_threshold
    )
    return out
