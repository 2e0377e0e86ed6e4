"""DVC stage `evaluate@<task>`: ID/OOD metrics with CIs, baselines, site probe, plots.

The stage runs every seed's saved model over the task's splits, fits what needs fitting on
validation data only (per seed: the brain-age bias correction, the probability threshold of
binary tasks), scores ``test`` and ``ood_test`` (overall and per site) with the mean over seeds
and an interval for seeds and subjects (``evaluation.seeds``), scores two baselines on the same
subjects (mean predictor, ridge on voxels; deterministic, so subject-bootstrap CIs) and compares
the model with the ridge (``evaluation.baseline_comparison``), and probes the first seed's
backbone features for site (``evaluation.scoring``).

With cross-validation (``data.splits.mode: kfold``) every fold's models predict their own
validation and test folds and the held-out sites, and the baselines are refitted per fold on its
training subjects. The folds are then put together (``evaluation.folds.combine_folds``): each
subject's validation and test predictions come from the one fold where it was validated or
tested, so ``val`` and ``test`` hold every cross-validated subject once; a held-out-site
subject's prediction for a seed is the mean over the folds' models (their cross-validation
ensemble). Thresholds and bias corrections are then fitted per seed on the pooled validation
predictions, exactly as for one split.

The CLI imports this module to build its parser, so the heavy imports (torch, Lightning, the
science packages) stay inside the functions: ``neurotransfer --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotransfer.config import FinetuneSettings, Settings, SettingsError, SplitSettings
from neurotransfer.paths import eval_metrics, eval_report_dir, finetuned_dir

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from neurotransfer.data import TaskDataModule
    from neurotransfer.evaluation.folds import FoldPredictions
    from neurotransfer.train.checkpoint import SeedModel

BASELINE_DOWNSAMPLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name from params.yaml `tasks`")


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import atomic_directory, write_json_atomic
    from neurotransfer.evaluation import plot_tables, save_figures
    from neurotransfer.runtime import json_ready
    from neurotransfer.train.finetune import task_settings

    task = task_settings(settings, args.task)
    result = evaluate_task(settings, args.task, Path("."))

    # Reports are written to a temporary sibling and renamed into place as a whole.
    with atomic_directory(eval_report_dir(args.task)) as tmp:
        result.predictions.to_csv(tmp / "predictions.csv", index=False)
        scored = result.predictions[result.predictions["split"].isin(["test", "ood_test"])]
        for plot, per_split in plot_tables(scored, task.kind).items():
            for split, table in per_split.items():
                if plot == "roc":
                    table = table[["fpr", "tpr"]]  # the first threshold is +inf
                table.to_csv(tmp / f"{plot}_{split}.csv", index=False)
        save_figures(scored, task.kind, tmp)
    write_json_atomic(eval_metrics(args.task), json_ready(result.metrics))


@dataclass
class TaskEvaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame


def evaluate_task(settings: Settings, task_name: str, root: Path = Path(".")) -> TaskEvaluation:
    """The task's metrics (as ``metrics/eval/<task>.json`` holds them) and its predictions table
    (``reports/eval/<task>/predictions.csv``), from the fine-tuned models under `root`."""
    from neurotransfer.evaluation.baseline_comparison import baseline_metrics
    from neurotransfer.evaluation.folds import combine_folds
    from neurotransfer.evaluation.scoring import (
        evaluated_rows,
        fit_on_validation,
        member_records,
        predictions_table,
        site_probe_metrics,
    )
    from neurotransfer.evaluation.seeds import evaluate_seed_predictions, seed_key
    from neurotransfer.runtime import resolve_device
    from neurotransfer.train.checkpoint import load_fold_models
    from neurotransfer.train.finetune import task_settings

    task = task_settings(settings, task_name)
    ev = settings.evaluate
    fold_models, meta = load_fold_models(finetuned_dir(task_name, root))
    check_models_match_settings(meta, settings.finetune, task_name, settings.data.splits)
    seed_values = [model.seed for model in fold_models[0]]
    device = str(resolve_device(settings.finetune.accelerator, "finetune.accelerator"))
    folds = settings.data.splits.folds()
    per_fold = predict_folds(settings, task_name, task.kind, fold_models, device, root)
    combined = combine_folds(per_fold)
    frames = combined.frames

    metrics: dict[str, Any] = {
        "task": task_name,
        "kind": task.kind,
        "model": meta["model"],
        "init": meta["init"]["source"],
        "n": {split: len(frame) for split, frame in frames.items()},
        "n_seeds": len(seed_values),
    }
    if folds != [None]:
        # `n` counts each fold's validation and test subjects once; `train` is the first fold's.
        metrics["n_folds"] = len(folds)
    seed_records, thresholds = fit_on_validation(frames, task.kind, seed_values)
    evaluated = evaluated_rows(frames)
    metrics["model_metrics"], per_seed = evaluate_seed_predictions(
        evaluated, task.kind, seed_values, thresholds, ev.ci_level
    )
    for seed, model in zip(seed_values, fold_models[0], strict=True):
        seed_records[seed].update(per_seed[seed])
        if len(model.modules) > 1:
            member_seeds = [record["seed"] for record in model.meta["members"]]
            seed_records[seed]["members"] = member_records(
                frames, combined.members, seed, member_seeds, task.kind
            )
    # Keyed by seed value, not a list: `dvc metrics show/diff` flatten dicts.
    metrics["seeds"] = {seed_key(s): seed_records[s] for s in seed_values}
    metrics.update(
        baseline_metrics(
            frames["val"],
            evaluated,
            task.kind,
            seed_values,
            thresholds,
            ridge=ev.ridge_baseline,
            bootstrap_samples=ev.bootstrap_samples,
            ci_level=ev.ci_level,
            seed=ev.seed,
        )
    )
    metrics.update(
        site_probe_metrics(
            per_fold[0],
            metrics["model_metrics"],
            task.kind,
            ev.site_probe_folds,
            ev.seed,
            seed_values[0],
        )
    )
    return TaskEvaluation(metrics=metrics, predictions=predictions_table(frames))


def check_models_match_settings(
    meta: dict[str, Any],
    ft: FinetuneSettings,
    task_name: str,
    splits: SplitSettings | None = None,
) -> None:
    """Stop when the saved models are not the ones ``finetune`` (and ``data.splits``) params
    describe (seed values, ensemble size, cross-validation folds): evaluating stale models would
    report another run's figures."""
    from neurotransfer.train.checkpoint import meta_mismatches

    expected: dict[str, Any] = {"seeds": ft.seed_values(), "ensemble_size": ft.ensemble_size}
    if splits is not None:
        expected["folds"] = splits.k if splits.mode == "kfold" else None
    problems = meta_mismatches(meta, expected)
    if problems:
        raise SettingsError(
            f"models/finetuned/{task_name}/meta.json: the fine-tuned models do not match "
            f"params.yaml finetune ({'; '.join(problems)}); re-run the finetune stage: "
            f"`dvc repro finetune@{task_name}`"
        )


def predict_folds(
    settings: Settings,
    task_name: str,
    kind: str,
    fold_models: list[list[SeedModel]],
    device: str,
    root: Path,
) -> list[FoldPredictions]:
    """Every fold's (or the single split's) predictions by its seeds' models, with the
    baselines' predictions beside them (fitted on that fold's training subjects)."""
    from neurotransfer.evaluation.scoring import EVAL_SPLITS
    from neurotransfer.train.finetune import task_datamodule

    ev = settings.evaluate
    folds = settings.data.splits.folds()
    per_fold = []
    for index, (fold, seed_models) in enumerate(zip(folds, fold_models, strict=True)):
        datamodule = task_datamodule(settings, task_name, root, fold=fold)
        datamodule.setup("predict")
        # Training subjects are predicted for the site probe only, which uses the first fold.
        splits = ("train", "val", *EVAL_SPLITS) if index == 0 else ("val", *EVAL_SPLITS)
        predicted = predict_fold(seed_models, datamodule, splits, device, ev.flip_tta)
        missing = [s for s in ("train", "val", "test") if datamodule.frame(s).empty]
        if missing:
            where = "" if fold is None else f" (cross-validation fold {fold})"
            raise ValueError(f"task {task_name!r} has no subjects in split(s) {missing}{where}")
        add_baseline_predictions(predicted, datamodule, kind, ev.ridge_baseline, ev.seed, root)
        per_fold.append(predicted)
    return per_fold


def predict_fold(
    seed_models: list[SeedModel],
    datamodule: TaskDataModule,
    splits: tuple[str, ...],
    device: str,
    flip_tta: bool,
) -> FoldPredictions:
    """Every seed's predictions on those of `splits` that have subjects."""
    from neurotransfer.evaluation.folds import FoldPredictions
    from neurotransfer.train.predict import predict_seeds

    datamodule.setup("predict")
    predicted = FoldPredictions({}, {}, {})
    for split in splits:
        if datamodule.frame(split).empty:
            continue
        frame, features, members = predict_seeds(
            seed_models,
            datamodule.dataloader(split, augment=False, shuffle=False),
            split,
            device,
            flip_tta,
        )
        predicted.frames[split] = frame
        predicted.features[split] = features
        predicted.members[split] = members
    return predicted


def add_baseline_predictions(
    predicted: FoldPredictions,
    datamodule: TaskDataModule,
    kind: str,
    ridge: bool,
    seed: int,
    root: Path,
) -> None:
    """Fit the baselines on the fold's training subjects (the ridge's penalty on its validation
    subjects) and add their predictions for its validation and scored subjects as
    ``baseline_mean`` / ``baseline_ridge`` columns of `predicted`'s tables."""
    import numpy as np

    from neurotransfer.evaluation.baseline_comparison import MEAN_COLUMN, RIDGE_COLUMN
    from neurotransfer.evaluation.baselines import ridge_voxel_baseline
    from neurotransfer.evaluation.scoring import EVAL_SPLITS

    train = datamodule.frame("train")
    train_target = train["target"].to_numpy(float)
    scored = ["val", *(s for s in EVAL_SPLITS if s in predicted.frames)]
    for split in scored:
        predicted.frames[split][MEAN_COLUMN] = float(train_target.mean())
    if not ridge:
        return
    x = {
        split: _volumes(predicted.frames[split], datamodule.frame(split), root, BASELINE_DOWNSAMPLE)
        for split in scored
    }
    # Validation predictions too, for the ridge's own threshold (the model's rule; they are
    # in-sample for the ridge, which is refitted on train + val).
    predictions = ridge_voxel_baseline(
        _volumes(train, train, root, BASELINE_DOWNSAMPLE),
        train_target,
        x["val"],
        predicted.frames["val"]["target"].to_numpy(),
        np.concatenate([x[split] for split in scored]),
        kind,
        seed,
    )
    offset = 0
    for split in scored:
        n = len(predicted.frames[split])
        predicted.frames[split][RIDGE_COLUMN] = predictions[offset : offset + n]
        offset += n


def _volumes(predictions: pd.DataFrame, rows: pd.DataFrame, root: Path, factor: int) -> np.ndarray:
    """Downsampled cached volumes, flattened, in the row order of `predictions`."""
    import numpy as np

    from neurotransfer.data import load_cached_volume
    from neurotransfer.evaluation.baselines import downsample_for_baseline

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
