"""Data-scaling curves: the fine-tuning recipe on nested fractions of a task's training set.

For every seed, the task's training subjects are put in one random order, stratified so that
every prefix keeps the label (binary tasks) and site mix of the whole as closely as possible;
the subset for fraction ``f`` is the first ``ceil(f * n)`` subjects of that order. Subsets of
one seed are therefore nested (a smaller fraction's subjects are a subset of a larger one's),
and a curve measures the value of more data rather than of different data. Validation, test and
ood_test splits are never subsampled: early stopping and the scores use the same subjects at
every fraction.

Each (fraction, seed) model is trained by :func:`neurotransfer.train.finetune.train_task` (the
initial backbone of ``initial_backbone``, the recipe of ``finetune`` with ``scaling.max_epochs``
and the seed replaced) and scored on ``test`` and ``ood_test`` with the evaluate stage's
subject-level bootstrap intervals; regression predictions are bias-corrected with a fit on
the validation split, as in ``evaluate``.

With cross-validation (``data.splits.mode: kfold``) the curve is measured on the first fold's
splits (``SCALING_FOLD``): a curve per fold would multiply the stage's cost by k.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurotransfer.config import Settings
from neurotransfer.runtime import resolve_device

if TYPE_CHECKING:
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


def _strata(frame: pd.DataFrame, kind: str) -> pd.Series:
    """One stratum label per subject: label x site for binary tasks, site for regression."""
    per_subject = frame.groupby("subject_id", sort=True).first()
    if kind == "binary":
        return per_subject["target"].astype(int).astype(str) + "|" + per_subject["site"].astype(str)
    return per_subject["site"].astype(str)


def subject_order(frame: pd.DataFrame, kind: str, seed: int) -> list[str]:
    """The training subjects in one random order whose every prefix is stratified.

    Within each stratum the subjects are shuffled; the i-th of a stratum of n gets the key
    ``(i + u) / n`` (u uniform in [0, 1)), and sorting by key interleaves the strata in
    proportion to their sizes.
    """
    strata = _strata(frame, kind)
    rng = np.random.default_rng(seed)
    keys: dict[str, float] = {}
    for _, members in strata.groupby(strata, sort=True):
        subjects = list(members.index)
        rng.shuffle(subjects)
        offsets = rng.random(len(subjects))
        for i, (subject, u) in enumerate(zip(subjects, offsets, strict=True)):
            keys[str(subject)] = (i + u) / len(subjects)
    return sorted(keys, key=lambda s: (keys[s], s))


def nested_subsets(
    frame: pd.DataFrame, kind: str, fractions: Sequence[float], seed: int
) -> dict[float, list[str]]:
    """Subject ids for each fraction: prefixes of one stratified order, hence nested.

    A subset has at least two subjects and, for binary tasks, both classes (the prefix grows
    until it has them). Raises ValueError naming the fraction when that is impossible.
    """
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {list(fractions)}")
    order = subject_order(frame, kind, seed)
    n = len(order)
    label = frame.groupby("subject_id")["target"].first()
    subsets: dict[float, list[str]] = {}
    for fraction in sorted(fractions):
        size = min(n, max(2, math.ceil(fraction * n - 1e-9)))
        if kind == "binary":
            while size < n and label.loc[order[:size]].nunique() < 2:
                size += 1
            if label.loc[order[:size]].nunique() < 2:
                raise ValueError(
                    f"fraction {fraction}: the training split has one class only ({n} subjects)"
                )
        if size < 2:
            raise ValueError(f"fraction {fraction}: fewer than 2 training subjects ({n})")
        subsets[fraction] = order[:size]
    return subsets


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


SCALING_FOLD = 0


def run_scaling_task(
    settings: Settings, task_name: str, root: Path = Path("."), trainer_overrides: Any = None
) -> pd.DataFrame:
    """The curve of one task: one row per (fraction, seed, split), columns CURVE_COLUMNS."""

    from neurotransfer.train.finetune import task_datamodule, task_settings, train_task

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


def plot_curve(curve: pd.DataFrame, path: Path) -> None:
    """Metric vs training subjects, one line per split (seed mean, interval band of the mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for split, rows in curve.groupby("split", sort=False):
        means = rows.groupby("n_train", sort=True)[["value", "ci_low", "ci_high"]].mean()
        ax.plot(means.index, means["value"], marker="o", label=str(split))
        ax.fill_between(means.index, means["ci_low"], means["ci_high"], alpha=0.2)
    metric = str(curve["metric"].iloc[0]) if not curve.empty else "metric"
    task = str(curve["task"].iloc[0]) if not curve.empty else ""
    ax.set_xlabel("training subjects")
    better = "lower" if metric.startswith(("mae", "rmse", "brier")) else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title(f"{task}: data scaling")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
