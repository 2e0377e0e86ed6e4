"""Evaluate one fine-tuned task model: ID and OOD metrics with CIs, baselines, site probe.

This is the orchestration behind the ``evaluate@<task>`` stage: it runs the saved model over the
task's splits, fits the brain-age bias correction on validation data only, scores ``test`` and
``ood_test`` (overall and per site) with subject-level bootstrap CIs, scores two baselines on
the same subjects (mean predictor, ridge on voxels), and probes the backbone's features for site.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurotransfer.config import Settings
from neurotransfer.evaluation.baselines import (
    downsample_for_baseline,
    mean_predictor_baseline,
    ridge_voxel_baseline,
)
from neurotransfer.evaluation.bootstrap import evaluate_predictions, split_groups
from neurotransfer.evaluation.metrics import (
    AgeBiasCorrection,
    binary_metrics,
    regression_metrics,
)
from neurotransfer.evaluation.paired import DEFAULT_METRICS, paired_bootstrap
from neurotransfer.evaluation.site_probe import openbhb_score, site_probe

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "ood_test")
BASELINE_DOWNSAMPLE = 2


@dataclass
class TaskEvaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame


def _volumes(predictions: pd.DataFrame, rows: pd.DataFrame, root: Path, factor: int) -> np.ndarray:
    """Downsampled cached volumes, flattened, in the row order of `predictions`."""
    from neurotransfer.data import load_cached_volume

    frame = predictions[["subject_id"]].merge(
        rows[["subject_id", "path"]], on="subject_id", how="left", validate="one_to_one"
    )
    return np.stack(
        [
            downsample_for_baseline(
                np.asarray(load_cached_volume(root / p), np.float32), factor
            ).reshape(-1)
            for p in frame["path"]
        ]
    )


def member_point_metrics(evaluated: pd.DataFrame, column: str, kind: str) -> dict[str, Any]:
    """Headline metrics of one ensemble member's predictions per evaluated split (raw years for
    brain age: the bias correction is fitted on the ensemble's predictions)."""
    scores: dict[str, Any] = {}
    for split, rows in split_groups(evaluated):
        if kind == "binary":
            values = binary_metrics(rows["target"], rows[column])
            scores[split] = {k: values[k] for k in ("auc", "balanced_accuracy")}
        else:
            values = regression_metrics(rows["target"], rows[column])
            scores[split] = {k: values[k] for k in ("mae", "r")}
    return scores


def paired_against_baseline(
    baseline: pd.DataFrame,
    model: pd.DataFrame,
    kind: str,
    n_resamples: int,
    ci_level: float,
    seed: int,
) -> dict[str, Any]:
    """Per split, the headline metrics' paired difference model - baseline on the same subjects,
    with its bootstrap interval and p-value (and DeLong's for AUC): positive is better for AUC
    and balanced accuracy, negative for MAE and Brier score."""
    compared: dict[str, Any] = {}
    for split, model_rows in split_groups(model):
        result = paired_bootstrap(
            baseline[baseline["split"] == split], model_rows, kind, n_resamples, ci_level, seed
        )
        compared[split] = {
            "n_subjects": result["n_subjects"],
            "metrics": {
                name: result["metrics"][name]
                for name in DEFAULT_METRICS[kind]
                if name in result["metrics"]
            },
        }
    return compared


def evaluate_task(settings: Settings, task_name: str, root: Path = Path(".")) -> TaskEvaluation:
    from neurotransfer.data import TaskDataModule
    from neurotransfer.train.checkpoint import load_task_models
    from neurotransfer.train.finetune import FINETUNED_DIR, manifest_path, task_settings
    from neurotransfer.train.predict import member_column, predict_frame

    task = task_settings(settings, task_name)
    ev = settings.evaluate
    modules, meta = load_task_models(root / FINETUNED_DIR / task_name)
    datamodule = TaskDataModule(
        manifest_path=manifest_path(settings, root),
        task_name=task_name,
        task=task,
        batch_size=settings.finetune.batch_size,
        num_workers=settings.finetune.num_workers,
        augment=settings.data.augment,
        seed=settings.finetune.seed,
        root=root,
    )
    datamodule.setup("predict")
    device = (
        "cuda" if torch.cuda.is_available() and settings.finetune.accelerator != "cpu" else "cpu"
    )

    frames: dict[str, pd.DataFrame] = {}
    features: dict[str, np.ndarray] = {}
    for split in ("train", "val", *EVAL_SPLITS):
        if datamodule.frame(split).empty:
            continue
        frames[split], features[split] = predict_frame(
            modules,
            datamodule.dataloader(split, augment=False, shuffle=False),
            split,
            device,
            ev.flip_tta,
        )
    missing = [s for s in ("train", "val", "test") if s not in frames]
    if missing:
        raise ValueError(f"task {task_name!r} has no subjects in split(s) {missing}")

    metrics: dict[str, Any] = {
        "task": task_name,
        "kind": task.kind,
        "model": meta["model"],
        "init": meta["init"]["source"],
        "n": {split: len(frame) for split, frame in frames.items()},
    }
    if task.kind == "regression":
        correction = AgeBiasCorrection.fit(frames["val"]["target"], frames["val"]["prediction"])
        for frame in frames.values():
            frame["prediction_corrected"] = correction.apply(frame["prediction"].to_numpy())
        metrics["age_bias_correction"] = asdict(correction)

    evaluated = pd.concat([frames[s] for s in EVAL_SPLITS if s in frames], ignore_index=True)
    metrics["model_metrics"] = evaluate_predictions(
        evaluated, task.kind, ev.bootstrap_samples, ev.ci_level, ev.seed
    )
    if len(modules) > 1:
        # Each member alone (point estimates), to show what averaging them bought; keyed so
        # that `dvc metrics show/diff` flatten it.
        metrics["ensemble_members"] = {
            f"member{index}": {
                "seed": record["seed"],
                **member_point_metrics(evaluated, member_column(index), task.kind),
            }
            for index, record in enumerate(meta["members"])
        }

    # Baselines on exactly the same subjects.
    baselines: dict[str, Any] = {}
    train_target = frames["train"]["target"].to_numpy()
    baselines["mean_predictor"] = mean_predictor_baseline(train_target, evaluated, task.kind)
    if ev.ridge_baseline:
        x = {s: _volumes(frames[s], datamodule.frame(s), root, BASELINE_DOWNSAMPLE) for s in frames}
        eval_x = np.concatenate([x[s] for s in EVAL_SPLITS if s in frames])
        ridge_pred = ridge_voxel_baseline(
            x["train"],
            train_target,
            x["val"],
            frames["val"]["target"].to_numpy(),
            eval_x,
            task.kind,
            ev.seed,
        )
        evaluated["prediction_ridge"] = ridge_pred
        ridge_frame = evaluated.assign(prediction=ridge_pred).drop(
            columns=["prediction_corrected"], errors="ignore"
        )
        baselines["ridge_voxels"] = evaluate_predictions(
            ridge_frame, task.kind, ev.bootstrap_samples, ev.ci_level, ev.seed
        )
        # Two unpaired intervals overlap long before a difference is doubtful: the paired
        # bootstrap of (model - ridge) on the same subjects answers "does the model beat it?".
        metrics["model_minus_ridge"] = paired_against_baseline(
            ridge_frame,
            evaluated.drop(columns=["prediction_corrected"], errors="ignore"),
            task.kind,
            ev.bootstrap_samples,
            ev.ci_level,
            ev.seed,
        )
    metrics["baselines"] = baselines

    # Site predictability of the backbone's features (OpenBHB-style probe), on every subject
    # the model saw or was scored on: lower means features that carry less scanner signature.
    all_features = np.concatenate([features[s] for s in frames])
    all_sites = np.concatenate([frames[s]["site"].to_numpy() for s in frames])
    probe = site_probe(all_features, all_sites, folds=ev.site_probe_folds, seed=ev.seed)
    metrics["site_probe"] = probe
    if task.kind == "regression":
        split = "ood_test" if "ood_test" in frames else "test"
        mae = metrics["model_metrics"][split]["metrics"]["mae_corrected"]["value"]
        metrics["openbhb_score"] = {
            "split": split,
            "value": openbhb_score(mae, probe["balanced_accuracy"], probe["n_sites"]),
        }
    return TaskEvaluation(
        metrics=metrics, predictions=pd.concat(frames.values(), ignore_index=True)
    )
