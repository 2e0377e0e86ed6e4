"""Evaluation science: metrics, subject-level bootstrap intervals, baselines, site probe, plots.

Pure functions over numpy arrays and pandas tables; no files are discovered and no settings
read here (the ``evaluate`` stage, ``stages/evaluate.py``, does that and hands over tables).

- ``metrics``: binary and regression point metrics, the linear brain-age bias correction
- ``bootstrap``: subject-level, class-stratified percentile intervals; per-split, per-site table
- ``baselines``: training-mean predictor and a linear model on downsampled voxels
- ``baseline_comparison``: the baselines scored on the model's subjects, paired model - ridge
- ``scoring``: per-seed fits on validation, ensemble members, site probe, predictions table
- ``folds``: cross-validation folds' predictions put together
- ``site_probe``: logistic-regression site probe on backbone features, OpenBHB combined score
- ``plots``: ROC / calibration / predicted-vs-true tables for ``dvc plots`` and PNG figures
"""

from neurotransfer.evaluation.baselines import (
    downsample_for_baseline,
    mean_predictor_baseline,
    ridge_voxel_baseline,
)
from neurotransfer.evaluation.bootstrap import (
    bootstrap_metrics,
    evaluate_predictions,
    subject_resamples,
)
from neurotransfer.evaluation.metrics import (
    AgeBiasCorrection,
    binary_metrics,
    regression_metrics,
)
from neurotransfer.evaluation.plots import (
    calibration_points,
    plot_tables,
    roc_points,
    save_age_figure,
    save_calibration_figure,
    save_figures,
    save_roc_figure,
)
from neurotransfer.evaluation.site_probe import openbhb_score, site_probe

__all__ = [
    "AgeBiasCorrection",
    "binary_metrics",
    "bootstrap_metrics",
    "calibration_points",
    "downsample_for_baseline",
    "evaluate_predictions",
    "mean_predictor_baseline",
    "openbhb_score",
    "plot_tables",
    "regression_metrics",
    "ridge_voxel_baseline",
    "roc_points",
    "save_age_figure",
    "save_calibration_figure",
    "save_figures",
    "save_roc_figure",
    "site_probe",
    "subject_resamples",
]
