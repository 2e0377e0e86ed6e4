"""DVC stage `scaling`: data-scaling curves (metric vs training subjects) per task.

Writes ``reports/scaling/<task>.csv`` (one row per fraction, seed and split: n_train,
fraction, seed, split, metric, value, ci_low, ci_high), ``reports/scaling/<task>.png`` and
``metrics/scaling.json``. With ``scaling.enabled: false`` it writes a note instead of curves.

For every seed of ``scaling.seeds`` the task's training subjects are subsampled into nested
fractions (``neurotransfer.train.scaling.nested_subsets``); each (fraction, seed) model is
trained by :func:`neurotransfer.train.finetune.train_task` (the initial backbone of
``initial_backbone``, the recipe of ``finetune`` with ``scaling.max_epochs`` and the seed
replaced) and scored on ``test`` and ``ood_test`` with the evaluate stage's subject-level
bootstrap intervals; regression predictions are bias-corrected with a fit on the validation
split, as in ``evaluate``. Validation, test and ood_test splits are never subsampled.

With cross-validation (``data.splits.mode: kfold``) the curve is measured on the first fold's
splits (``SCALING_FOLD``): a curve per fold would multiply the stage's cost by k.

The CLI imports this module to build its parser, so numpy, pandas, torch and the science
packages are imported inside the functions that use them: ``neurotransfer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotransfer.atomic import write_json_atomic, write_text_atomic
from neurotransfer.config import Settings, SettingsError

if TYPE_CHECKING:
    import pandas as pd

    from neurotransfer.data.datamodule import TaskDataModule

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "ood_test")
# The curve's metric per task kind (as the study table's headline).
SCALING_METRIC = {"binary": "auc", "regression": "mae_corrected"}
CURVE_COLUMNS = (
    "task",
    "n_train",
    "fraction",
    "seed",
    "split",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_eval",
)
SCALING_FOLD = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        help="only this task (repeatable; default: "
        "scaling.tasks, or every task when that is empty)",
    )


def run(settings: Settings, args: argparse.Namespace) -> None:
    sc = settings.scaling
    out_dir, metrics_path = Path(sc.out_dir), Path(sc.metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not sc.enabled:
        write_text_atomic(
            out_dir / "README.md", "Data-scaling curves are off (`scaling.enabled: false`).\n"
        )
        write_json_atomic(metrics_path, {"enabled": False})
        return
    # After the note: curves off costs no torch or Lightning import.
    from neurotransfer.runtime import json_ready
    from neurotransfer.train.scaling import plot_curve

    tasks = args.task or sc.tasks or list(settings.tasks)
    unknown = sorted(set(tasks) - set(settings.tasks))
    if unknown:
        raise SettingsError(f"unknown task(s) {unknown}; tasks: {sorted(settings.tasks)}")
    curves = {}
    for task in tasks:
        curve = run_scaling_task(settings, task, Path("."))
        curves[task] = curve
        write_text_atomic(out_dir / f"{task}.csv", curve.to_csv(index=False))
        plot_curve(curve, out_dir / f"{task}.png")
    write_json_atomic(metrics_path, json_ready({"enabled": True, **scaling_summary(curves)}))


def score_splits(
    module: Any,
    datamodule: TaskDataModule,
    kind: str,
    n_resamples: int,
    ci_level: float,
    seed: int,
    device: str = "cpu",
    flip_tta: bool = False,
) -> list[dict[str, Any]]:
    """Headline metric with bootstrap interval on each evaluated split that has subjects."""
    from neurotransfer.evaluation.bootstrap import bootstrap_metrics
    from neurotransfer.evaluation.metrics import AgeBiasCorrection
    from neurotransfer.train.predict import predict_frame

    def predict(split: str) -> pd.DataFrame:
        loader = datamodule.dataloader(split, augment=False, shuffle=False)
        return predict_frame(module, loader, split, device, flip_tta)[0]

    correction = None
    if kind == "regression":
        val = predict("val")
        correction = AgeBiasCorrection.fit(val["target"], val["prediction"])
    metric = SCALING_METRIC[kind]
    rows = []
    for split in EVAL_SPLITS:
        if datamodule.frame(split).empty:
            continue
        frame = predict(split)
        if correction is not None:
            frame["prediction_corrected"] = correction.apply(frame["prediction"].to_numpy())
        result = bootstrap_metrics(frame, kind, n_resamples, ci_level, seed)[metric]
        rows.append({"split": split, "metric": metric, "n_eval": len(frame), **result})
    return rows


def run_scaling_task(
    settings: Settings, task_name: str, root: Path = Path("."), trainer_overrides: Any = None
) -> pd.DataFrame:
    """The curve of one task: one row per (fraction, seed, split), columns CURVE_COLUMNS."""
    import pandas as pd

    from neurotransfer.runtime import resolve_device
    from neurotransfer.train.finetune import task_datamodule, task_settings, train_task
    from neurotransfer.train.scaling import nested_subsets

    task = task_settings(settings, task_name)
    sc, ev = settings.scaling, settings.evaluate
    device = str(resolve_device(settings.finetune.accelerator, "finetune.accelerator"))
    rows: list[dict[str, Any]] = []
    for seed in sc.seeds:
        finetune = settings.finetune.model_copy(
            update={"seed": seed, "max_epochs": sc.max_epochs or settings.finetune.max_epochs}
        )
        fold = SCALING_FOLD if settings.data.splits.mode == "kfold" else None
        base = task_datamodule(settings, task_name, root, finetune, fold)
        train_frame = base.frame("train")
        subsets = nested_subsets(train_frame, task.kind, sc.fractions, seed)
        n_subjects = train_frame["subject_id"].nunique()
        for fraction, subjects in subsets.items():
            log.info(
                "scaling %s: seed %d, fraction %g: %d of %d training subjects",
                task_name,
                seed,
                fraction,
                len(subjects),
                n_subjects,
            )
            datamodule = base.with_train_subjects(subjects)
            trained = train_task(
                settings,
                task_name,
                root,
                finetune=finetune,
                datamodule=datamodule,
                enable_progress_bar=False,
                **(trainer_overrides or {}),
            )
            scores = score_splits(
                trained.module,
                datamodule,
                task.kind,
                ev.bootstrap_samples,
                ev.ci_level,
                ev.seed,
                device,
                ev.flip_tta,
            )
            for score in scores:
                rows.append(
                    {
                        "task": task_name,
                        "n_train": len(subjects),
                        "fraction": fraction,
                        "seed": seed,
                        **score,
                    }
                )
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def scaling_summary(curves: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """``metrics/scaling.json``: per task and fraction, n_train and the metric's seed mean/sd."""
    import numpy as np

    summary: dict[str, Any] = {}
    for task, curve in curves.items():
        per_fraction: dict[str, Any] = {}
        for fraction, rows in curve.groupby("fraction", sort=True):
            entry: dict[str, Any] = {
                "fraction": float(fraction),
                "n_train": int(rows["n_train"].max()),
            }
            for (split, metric), values in rows.groupby(["split", "metric"], sort=False):
                v = values["value"].to_numpy(dtype=float)
                entry[str(split)] = {
                    str(metric): float(np.mean(v)),
                    f"{metric}_sd": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
                    "n_seeds": int(v.size),
                }
            per_fraction[f"frac{round(100 * float(fraction)):03d}"] = entry
        summary[task] = per_fraction
    return summary
