"""Subject-level bootstrap intervals and the per-split, per-site evaluation table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from neurotransfer.evaluation import (
    bootstrap_metrics,
    evaluate_predictions,
    subject_resamples,
)
from neurotransfer.runtime import json_ready

N_RESAMPLES = 300


def regression_frame(n: int, seed: int = 0, noise: float = 5.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    return pd.DataFrame(
        {
            "subject_id": [f"sub-{i:04d}" for i in range(n)],
            "site": rng.choice(["A", "B"], n),
            "split": "test",
            "target": age,
            "prediction": age + rng.normal(0, noise, n),
        }
    )


def binary_frame(n: int, seed: int = 0, prevalence: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    target = (rng.random(n) < prevalence).astype(int)
    return pd.DataFrame(
        {
            "subject_id": [f"sub-{i:04d}" for i in range(n)],
            "site": rng.choice(["A", "B", "C"], n),
            "split": "test",
            "target": target,
            "prediction": np.clip(0.3 * target + 0.7 * rng.random(n), 0, 1),
        }
    )


def width(interval: dict[str, float]) -> float:
    return interval["ci_high"] - interval["ci_low"]


@pytest.mark.parametrize(
    ("frame", "kind"), [(regression_frame(120), "regression"), (binary_frame(160), "binary")]
)
def test_intervals_contain_the_point_estimate(frame: pd.DataFrame, kind: str) -> None:
    result = bootstrap_metrics(frame, kind, N_RESAMPLES, 0.95, seed=0)
    expected = {
        "regression": {"mae", "rmse", "r", "r2", "mean_error"},
        "binary": {
            "auc",
            "balanced_accuracy",
            "f1",
            "sensitivity",
            "specificity",
            "accuracy",
            "brier",
        },
    }[kind]
    assert set(result) == expected  # counts (n, n_positive) are not bootstrapped
    for name, interval in result.items():
        assert interval["ci_low"] <= interval["value"] <= interval["ci_high"], name
        assert interval["ci_low"] < interval["ci_high"], name


def test_intervals_shrink_with_more_subjects() -> None:
    small = bootstrap_metrics(regression_frame(40), "regression", N_RESAMPLES, 0.95, seed=0)
    large = bootstrap_metrics(regression_frame(640), "regression", N_RESAMPLES, 0.95, seed=0)
    # 16x the subjects: about a quarter of the width; require at least a halving.
    assert width(large["mae"]) < 0.5 * width(small["mae"])
    assert width(large["r"]) < 0.5 * width(small["r"])


def test_higher_confidence_gives_wider_intervals() -> None:
    frame = regression_frame(100)
    narrow = bootstrap_metrics(frame, "regression", N_RESAMPLES, 0.80, seed=0)
    wide = bootstrap_metrics(frame, "regression", N_RESAMPLES, 0.99, seed=0)
    assert width(wide["mae"]) > width(narrow["mae"])


def test_same_seed_same_intervals_and_other_seed_other_intervals() -> None:
    frame = binary_frame(120)
    first = bootstrap_metrics(frame, "binary", N_RESAMPLES, 0.95, seed=7)
    assert bootstrap_metrics(frame, "binary", N_RESAMPLES, 0.95, seed=7) == first
    other = bootstrap_metrics(frame, "binary", N_RESAMPLES, 0.95, seed=8)
    assert other["auc"]["value"] == first["auc"]["value"]
    assert other["auc"]["ci_low"] != first["auc"]["ci_low"]


def test_subjects_with_repeated_scans_are_resampled_as_units() -> None:
    frame = regression_frame(60)
    # Every subject scanned three times with identical predictions: rows carry no more
    # information than subjects, so the interval must be exactly that of one row per subject.
    # Resampling rows would have shrunk it by about sqrt(3).
    repeated = frame.loc[frame.index.repeat(3)].reset_index(drop=True)
    once = bootstrap_metrics(frame, "regression", N_RESAMPLES, 0.95, seed=3)
    thrice = bootstrap_metrics(repeated, "regression", N_RESAMPLES, 0.95, seed=3)
    assert thrice["mae"]["value"] == pytest.approx(once["mae"]["value"])
    assert thrice["mae"]["ci_low"] == pytest.approx(once["mae"]["ci_low"])
    assert thrice["mae"]["ci_high"] == pytest.approx(once["mae"]["ci_high"])


def test_resamples_draw_whole_subjects_within_their_class() -> None:
    # 12 subjects, 3 of them positive, with 1 to 3 scans each.
    scans = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    labels = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    frame = pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i, k in enumerate(scans) for _ in range(k)],
            "target": [y for y, k in zip(labels, scans, strict=True) for _ in range(k)],
        }
    )
    scans_of = frame.groupby("subject_id").size()
    resamples = list(subject_resamples(frame, "binary", 200, seed=0))
    assert len(resamples) == 200
    drawn_subject_counts = set()
    for rows in resamples:
        drawn = frame.iloc[rows]
        per_subject = drawn.groupby("subject_id").size()
        # A subject drawn k times contributes k times all of its scans, never a subset.
        assert (per_subject % scans_of[per_subject.index] == 0).all()
        subjects_drawn = per_subject // scans_of[per_subject.index]
        positives = drawn.groupby("subject_id")["target"].first()
        assert subjects_drawn[positives == 1].sum() == 3  # class sizes preserved
        assert subjects_drawn[positives == 0].sum() == 9
        drawn_subject_counts.add(len(per_subject))
    assert len(drawn_subject_counts) > 1  # with replacement: some subjects repeat
    again = list(subject_resamples(frame, "binary", 200, seed=0))
    assert all(np.array_equal(a, b) for a, b in zip(resamples, again, strict=True))


def test_rare_class_keeps_a_defined_auc_in_every_resample() -> None:
    # Two positives among 30: unstratified, about 13% of resamples ((28/30)^30) would have none.
    frame = binary_frame(30, seed=1, prevalence=0.0)
    frame.loc[[0, 1], "target"] = 1
    for rows in subject_resamples(frame, "binary", 300, seed=0):
        assert frame["target"].iloc[rows].sum() == 2
    result = bootstrap_metrics(frame, "binary", N_RESAMPLES, 0.95, seed=0)
    assert all(math.isfinite(result["auc"][k]) for k in ("value", "ci_low", "ci_high"))


def test_too_few_subjects_report_the_value_without_an_interval() -> None:
    result = bootstrap_metrics(regression_frame(4), "regression", N_RESAMPLES, 0.95, seed=0)
    assert math.isfinite(result["mae"]["value"])
    assert math.isnan(result["mae"]["ci_low"]) and math.isnan(result["mae"]["ci_high"])


def test_corrected_predictions_are_scored_alongside_raw_ones() -> None:
    frame = regression_frame(80)
    frame["prediction_corrected"] = frame["target"] + 0.5 * (frame["prediction"] - frame["target"])
    result = bootstrap_metrics(frame, "regression", N_RESAMPLES, 0.95, seed=0)
    assert {"mae_corrected", "rmse_corrected", "r2_corrected", "mean_error_corrected"} <= set(
        result
    )
    assert result["mae_corrected"]["value"] == pytest.approx(0.5 * result["mae"]["value"])


def test_evaluate_predictions_reports_every_split_and_site() -> None:
    test = binary_frame(90, seed=0)
    ood = binary_frame(60, seed=1).assign(split="ood_test", site="D")
    ood["subject_id"] = "ood-" + ood["subject_id"]
    # A site with three negative subjects only: kept, with counts, NaN AUC and a note.
    tiny = pd.DataFrame(
        {
            "subject_id": ["t1", "t2", "t3"],
            "site": "E",
            "split": "ood_test",
            "target": 0,
            "prediction": [0.1, 0.6, 0.3],
        }
    )
    frame = pd.concat([test, ood, tiny], ignore_index=True)
    result = evaluate_predictions(frame, "binary", N_RESAMPLES, 0.95, seed=0)

    assert list(result) == ["test", "ood_test"]
    assert result["test"]["n"] == 90 and result["test"]["n_subjects"] == 90
    assert result["test"]["n_positive"] == int(test["target"].sum())
    assert set(result["test"]["per_site"]) == {"A", "B", "C"}
    assert set(result["ood_test"]["per_site"]) == {"D", "E"}
    site_e = result["ood_test"]["per_site"]["E"]
    assert (site_e["n"], site_e["n_subjects"], site_e["n_positive"]) == (3, 3, 0)
    assert math.isnan(site_e["metrics"]["auc"]["value"])
    assert site_e["metrics"]["specificity"]["value"] == pytest.approx(2 / 3)
    assert "fewer than 5 subjects" in site_e["note"]
    assert "only negative subjects" in site_e["note"]
    assert result["test"]["per_site"]["A"]["note"] is None

    # NaN survives as null in strict JSON.
    text = json.dumps(json_ready(result), allow_nan=False)
    assert json.loads(text)["ood_test"]["per_site"]["E"]["metrics"]["auc"]["value"] is None


def test_evaluate_predictions_regression_reports_raw_and_corrected_mae() -> None:
    frame = regression_frame(60)
    frame["prediction_corrected"] = frame["prediction"] - 1.0
    result = evaluate_predictions(frame, "regression", N_RESAMPLES, 0.95, seed=0)
    metrics = result["test"]["metrics"]
    assert metrics["mae"]["value"] == pytest.approx(
        np.mean(np.abs(frame["prediction"] - frame["target"]))
    )
    assert metrics["mae_corrected"]["value"] == pytest.approx(
        np.mean(np.abs(frame["prediction_corrected"] - frame["target"]))
    )
    assert "mae_corrected" in result["test"]["per_site"]["A"]["metrics"]


def test_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['site'\]"):
        evaluate_predictions(regression_frame(10).drop(columns="site"), "regression", 10, 0.95, 0)


@pytest.mark.parametrize("column", ["split", "site"])
def test_rows_without_split_or_site_are_rejected_not_dropped(column: str) -> None:
    frame = regression_frame(10)
    frame[column] = frame[column].astype(object)
    frame.loc[2, column] = None
    with pytest.raises(ValueError, match=f"column '{column}' has 1 missing value"):
        evaluate_predictions(frame, "regression", 10, 0.95, 0)


def test_nan_prediction_is_rejected_naming_the_column() -> None:
    frame = regression_frame(10)
    frame["prediction_corrected"] = frame["prediction"]
    frame.loc[3, "prediction_corrected"] = np.nan
    with pytest.raises(ValueError, match=r"'prediction_corrected'.*non-finite"):
        evaluate_predictions(frame, "regression", 10, 0.95, 0)


def test_unknown_kind_and_bad_ci_level_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown task kind 'multiclass'"):
        evaluate_predictions(regression_frame(10), "multiclass", 10, 0.95, 0)
    with pytest.raises(ValueError, match="ci_level"):
        bootstrap_metrics(regression_frame(10), "regression", 10, 95, 0)
