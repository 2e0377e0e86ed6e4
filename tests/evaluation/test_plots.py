"""Plot tables for dvc plots (ROC, calibration, predicted vs true age) and PNG figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc as trapezoid_area
from sklearn.metrics import roc_auc_score

from neurotransfer.evaluation import (
    calibration_points,
    plot_tables,
    roc_points,
    save_figures,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _binary_predictions(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("test", 80), ("ood_test", 50)):
        target = rng.integers(0, 2, n)
        rows.append(
            pd.DataFrame(
                {
                    "subject_id": [f"{split}-{i}" for i in range(n)],
                    "site": "A",
                    "split": split,
                    "target": target,
                    "prediction": np.clip(0.4 * target + 0.6 * rng.random(n), 0, 1),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _age_predictions(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, 60)
    prediction = 0.7 * age + 15 + rng.normal(0, 3, 60)
    return pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(60)],
            "site": "A",
            "split": ["test"] * 40 + ["ood_test"] * 20,
            "target": age,
            "prediction": prediction,
            "prediction_corrected": (prediction - 15) / 0.7,
        }
    )


def test_roc_points_run_from_origin_to_corner_and_enclose_the_auc() -> None:
    frame = _binary_predictions()
    points = roc_points(frame["target"], frame["prediction"])
    assert list(points.columns) == ["fpr", "tpr", "threshold"]
    assert (points["fpr"].iloc[0], points["tpr"].iloc[0]) == (0.0, 0.0)
    assert (points["fpr"].iloc[-1], points["tpr"].iloc[-1]) == (1.0, 1.0)
    assert points["fpr"].is_monotonic_increasing and points["tpr"].is_monotonic_increasing
    area = trapezoid_area(points["fpr"], points["tpr"])
    assert area == pytest.approx(roc_auc_score(frame["target"], frame["prediction"]))


def test_roc_points_of_one_class_are_empty() -> None:
    points = roc_points([0, 0, 0], [0.2, 0.4, 0.6])
    assert points.empty and list(points.columns) == ["fpr", "tpr", "threshold"]


def test_calibration_points_match_scikit_learn_and_count_subjects() -> None:
    frame = _binary_predictions()
    points = calibration_points(frame["target"], frame["prediction"], n_bins=5)
    observed, predicted = calibration_curve(
        frame["target"], frame["prediction"], n_bins=5, strategy="uniform"
    )
    np.testing.assert_allclose(points["observed_fraction"], observed)
    np.testing.assert_allclose(points["mean_predicted"], predicted)
    assert points["count"].sum() == len(frame)
    assert (
        (points["mean_predicted"] >= points["bin_lower"])
        & (points["mean_predicted"] <= points["bin_upper"])
    ).all()


def test_calibration_leaves_empty_bins_out() -> None:
    points = calibration_points([0, 1, 1], [0.05, 0.95, 1.0], n_bins=10)
    assert points["count"].tolist() == [1, 2]
    assert points["bin_lower"].tolist() == pytest.approx([0.0, 0.9])


def test_plot_tables_split_per_split() -> None:
    binary = plot_tables(_binary_predictions(), "binary", n_bins=5)
    assert set(binary) == {"roc", "calibration"}
    assert set(binary["roc"]) == {"test", "ood_test"}
    assert binary["calibration"]["ood_test"]["count"].sum() == 50
    regression = plot_tables(_age_predictions(), "regression")
    table = regression["predicted_vs_true"]["ood_test"]
    assert len(table) == 20
    assert {"subject_id", "target", "prediction", "prediction_corrected"} <= set(table.columns)


@pytest.mark.parametrize(
    ("frame", "kind", "names"),
    [
        (_binary_predictions(), "binary", {"roc", "calibration"}),
        (_age_predictions(), "regression", {"predicted_vs_true"}),
        (
            _age_predictions().drop(columns="prediction_corrected"),
            "regression",
            {"predicted_vs_true"},
        ),
    ],
)
def test_save_figures_writes_png_files_and_no_temporaries(
    tmp_path: Path, frame: pd.DataFrame, kind: str, names: set[str]
) -> None:
    written = save_figures(frame, kind, tmp_path / "plots")
    assert set(written) == names
    for name, path in written.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        content = path.read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5_000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"{name}.png" for name in names
    )


def test_figure_of_a_split_with_one_class_still_renders(tmp_path: Path) -> None:
    frame = _binary_predictions()
    frame.loc[frame["split"] == "ood_test", "target"] = 0
    written = save_figures(frame, "binary", tmp_path)
    assert written["roc"].is_file() and written["calibration"].is_file()
