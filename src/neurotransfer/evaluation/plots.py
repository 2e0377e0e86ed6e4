"""Plot data for ``dvc plots`` (ROC, calibration, predicted vs true age) and PNG figures.

The tables are what the stage writes as CSV for ``dvc plots show``; the figures are for people
reading a report. Figures are drawn on a bare ``matplotlib.figure.Figure``, which renders with
the Agg backend without touching pyplot's global state, and written atomically.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from neurotransfer.evaluation.bootstrap import require_columns, split_groups
from neurotransfer.evaluation.metrics import check_binary, check_kind, rank_auc

log = logging.getLogger(__name__)

ROC_COLUMNS = ["fpr", "tpr", "threshold"]
CALIBRATION_COLUMNS = ["bin_lower", "bin_upper", "mean_predicted", "observed_fraction", "count"]
# The two splits every task has get fixed colours so figures of different runs compare at a glance.
SPLIT_COLOURS = {"test": "tab:blue", "ood_test": "tab:orange"}
OTHER_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive")
FIGURE_DPI = 120


def roc_points(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> pd.DataFrame:
    """ROC curve as (fpr, tpr, threshold) rows, from scikit-learn's ``roc_curve``.

    The first row (fpr = tpr = 0) has threshold +inf: no score reaches it. With one class the
    curve is undefined and the table is empty (a warning is logged).
    """
    truth, score = check_binary(y_true, y_score)
    if np.unique(truth).size < 2:
        log.warning("ROC curve undefined: only class %d among %d subjects", truth[0], truth.size)
        return pd.DataFrame({column: pd.Series(dtype=float) for column in ROC_COLUMNS})
    fpr, tpr, thresholds = roc_curve(truth, score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def calibration_points(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike, n_bins: int = 10
) -> pd.DataFrame:
    """Reliability diagram: equal-width probability bins, empty bins left out.

    Binning matches ``sklearn.calibration.calibration_curve(strategy="uniform")`` (a score on an
    inner edge goes to the upper bin, 1.0 to the last), with the bin bounds and subject counts
    that it does not return.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    truth, score = check_binary(y_true, y_score)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], score, side="right")
    count = np.bincount(bins, minlength=n_bins)
    filled = count > 0
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1][filled],
            "bin_upper": edges[1:][filled],
            "mean_predicted": np.bincount(bins, weights=score, minlength=n_bins)[filled]
            / count[filled],
            "observed_fraction": np.bincount(bins, weights=truth, minlength=n_bins)[filled]
            / count[filled],
            "count": count[filled],
        }
    )


def plot_tables(
    frame: pd.DataFrame, kind: str, n_bins: int = 10
) -> dict[str, dict[str, pd.DataFrame]]:
    """Per-split tables for ``dvc plots``: ``{plot: {split: table}}``.

    Binary: ``roc`` (`roc_points`) and ``calibration`` (`calibration_points`). Regression:
    ``predicted_vs_true`` with subject_id, site, target, prediction and, when present,
    prediction_corrected. `frame` is the per-subject prediction table of `evaluate_predictions`.
    """
    check_kind(kind)
    require_columns(frame, ["split", "target", "prediction"])
    if kind == "binary":
        return {
            "roc": {s: roc_points(r["target"], r["prediction"]) for s, r in split_groups(frame)},
            "calibration": {
                s: calibration_points(r["target"], r["prediction"], n_bins)
                for s, r in split_groups(frame)
            },
        }
    columns = [
        c
        for c in ("subject_id", "site", "target", "prediction", "prediction_corrected")
        if c in frame.columns
    ]
    return {
        "predicted_vs_true": {s: r[columns].reset_index(drop=True) for s, r in split_groups(frame)}
    }


def _split_colour(split: str, index: int) -> str:
    return SPLIT_COLOURS.get(split, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def save_figure_atomic(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as PNG via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=FIGURE_DPI)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_roc_figure(frame: pd.DataFrame, path: str | Path, title: str = "ROC") -> Path:
    """One ROC curve per split, AUC and counts in the legend, chance diagonal."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, (split, rows) in enumerate(split_groups(frame)):
        points = roc_points(rows["target"], rows["prediction"])
        if points.empty:
            continue
        auc = rank_auc(rows["target"].to_numpy(float), rows["prediction"].to_numpy(float))
        axes.plot(
            points["fpr"],
            points["tpr"],
            color=_split_colour(split, index),
            label=f"{split} (AUC {auc:.3f}, n={len(rows)})",
        )
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, aspect="equal")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="lower right")
    return save_figure_atomic(figure, path)


def save_calibration_figure(
    frame: pd.DataFrame, path: str | Path, n_bins: int = 10, title: str = "calibration"
) -> Path:
    """Reliability diagram per split (marker area ~ subjects in the bin), identity line."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfectly calibrated")
    for index, (split, rows) in enumerate(split_groups(frame)):
        points = calibration_points(rows["target"], rows["prediction"], n_bins)
        colour = _split_colour(split, index)
        axes.plot(
            points["mean_predicted"],
            points["observed_fraction"],
            color=colour,
            label=f"{split} (n={len(rows)})",
        )
        axes.scatter(
            points["mean_predicted"],
            points["observed_fraction"],
            s=12 + 120 * points["count"] / points["count"].max(),
            color=colour,
        )
    axes.set(
        xlabel="mean predicted probability",
        ylabel="observed fraction positive",
        title=title,
        aspect="equal",
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    return save_figure_atomic(figure, path)


def _age_panel(axes: Axes, frame: pd.DataFrame, column: str, title: str) -> None:
    for index, (split, rows) in enumerate(split_groups(frame)):
        mae = float(np.mean(np.abs(rows[column] - rows["target"])))
        axes.scatter(
            rows["target"],
            rows[column],
            s=14,
            alpha=0.7,
            color=_split_colour(split, index),
            label=f"{split} (MAE {mae:.2f}, n={len(rows)})",
        )
    axes.set(xlabel="true age (years)", ylabel="predicted age (years)", title=title)
    axes.legend(loc="upper left")


def save_age_figure(frame: pd.DataFrame, path: str | Path) -> Path:
    """Predicted vs true age per split with the identity line; a second panel for the
    bias-corrected prediction when the frame has ``prediction_corrected``."""
    columns = [("prediction", "predicted age")]
    if "prediction_corrected" in frame.columns:
        columns.append(("prediction_corrected", "bias-corrected predicted age"))
    figure = Figure(figsize=(5 * len(columns), 5), layout="constrained")
    panels = figure.subplots(1, len(columns), squeeze=False, sharex=True, sharey=True)[0]
    values = frame[["target", *(c for c, _ in columns)]].to_numpy(float)
    margin = 0.05 * (values.max() - values.min() or 1.0)
    limits = (values.min() - margin, values.max() + margin)
    for axes, (column, title) in zip(panels, columns, strict=True):
        axes.plot(limits, limits, linestyle="--", color="0.6", label="identity")
        _age_panel(axes, frame, column, title)
        axes.set_xlim(limits)
        axes.set_ylim(limits)
        axes.set_aspect("equal")
    return save_figure_atomic(figure, path)


def save_figures(
    frame: pd.DataFrame, kind: str, out_dir: str | Path, n_bins: int = 10
) -> dict[str, Path]:
    """Every figure of a task's per-subject predictions into `out_dir`: ``roc.png`` and
    ``calibration.png`` for binary tasks, ``predicted_vs_true.png`` for regression."""
    check_kind(kind)
    require_columns(frame, ["split", "target", "prediction"])
    out_dir = Path(out_dir)
    if kind == "binary":
        return {
            "roc": save_roc_figure(frame, out_dir / "roc.png"),
            "calibration": save_calibration_figure(frame, out_dir / "calibration.png", n_bins),
        }
    return {"predicted_vs_true": save_age_figure(frame, out_dir / "predicted_vs_true.png")}
