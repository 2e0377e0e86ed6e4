"""Evaluate one fine-tuned task: ID and OOD metrics over its fine-tuning seeds, baselines, site
probe.

This is the orchestration behind the ``evaluate@<task>`` stage: it runs every seed's saved
model over the task's splits, fits what needs fitting on validation data only (per seed: the
brain-age bias correction, the probability threshold of binary tasks), scores ``test`` and
``ood_test`` (overall and per site) with the mean over seeds and an interval for seeds and
subjects (``evaluation.seeds``), scores two baselines on the same subjects (mean predictor,
ridge on voxels; deterministic, so subject-bootstrap CIs) and compares the model with the ridge
(``decision.metric_difference``), and probes the first seed's backbone features for site.

With cross-validation (``data.splits.mode: kfold``) every fold's models predict their own
validation and test folds and the held-out sites, and the baselines are refitted per fold on its
training subjects. The folds are then put together: each subject's validation and test
predictions come from the one fold where it was validated or tested, so ``val`` and ``test``
hold every cross-validated subject once; a held-out-site subject's prediction for a seed is the
mean over the folds' models (their cross-validation ensemble). Thresholds and bias corrections
are then fitted per seed on the pooled validation predictions, exactly as for one split.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurotransfer import paths
from neurotransfer.config import (
    EvaluateSettings,
    FinetuneSettings,
    Settings,
    SettingsError,
    SplitSettings,
)
from neurotransfer.evaluation.baselines import (
    downsample_for_baseline,
    ridge_voxel_baseline,
    scored_point_metrics,
)
from neurotransfer.evaluation.bootstrap import evaluate_predictions, require_columns, split_groups
from neurotransfer.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    THRESHOLDED_METRICS,
    AgeBiasCorrection,
    choose_threshold,
)
from neurotransfer.evaluation.paired import DEFAULT_METRICS, HIGHER_IS_BETTER
from neurotransfer.evaluation.seeds import (
    CORRECTED_SUFFIX,
    corrected_seed_column,
    evaluate_seed_predictions,
    point_metrics,
    seed_column,
    seed_key,
)
from neurotransfer.evaluation.site_probe import openbhb_score, site_probe
from neurotransfer.runtime import resolve_device

if TYPE_CHECKING:
    from neurotransfer.data import TaskDataModule
    from neurotransfer.train.checkpoint import SeedModel

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


def member_point_metrics(
    frames: dict[str, pd.DataFrame],
    members: dict[str, np.ndarray],
    member: int,
    kind: str,
) -> dict[str, Any]:
    """Headline point metrics of one ensemble member per evaluated split (raw years for brain
    age: the bias correction is fitted on the ensemble's predictions; for binary tasks the
    member's own threshold, chosen on its validation predictions)."""
    threshold = DEFAULT_THRESHOLD
    if kind == "binary":
        threshold = choose_threshold(frames["val"]["target"], members["val"][:, member]).threshold
    scores: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        if split not in frames:
            continue
        values = point_metrics(
            kind, frames[split]["target"].to_numpy(float), members[split][:, member], threshold
        )
        names = ("auc", "balanced_accuracy") if kind == "binary" else ("mae", "r")
        scores[split] = {k: values[k] for k in names}
    if kind == "binary":
        scores["threshold"] = threshold
    return scores


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
    from neurotransfer.evaluation.decision import metric_difference

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
            try:
                result = metric_difference(
                    kind,
                    name,
                    target,
                    arm_a,
                    arm_b,
                    ci_level,
                    deterministic_a=True,
                    allow_one_seed=len(seed_values) == 1,
                )
            except ValueError as err:  # undefined on these subjects (e.g. one class)
                entry.update(
                    difference=float("nan"),
                    ci_low=float("nan"),
                    ci_high=float("nan"),
                    p_value=float("nan"),
                    note=str(err),
                )
            else:
                entry.update(
                    difference=result.difference,
                    ci_low=result.ci_low,
                    ci_high=result.ci_high,
                    p_value=result.p_value,
                    se=result.se,
                    df=result.df,
                    method=result.method,
                )
            metrics[name] = entry
        compared[split] = {
            "n_subjects": int(rows["subject_id"].nunique()),
            "n_seeds": len(seed_values),
            "metrics": metrics,
        }
    return compared


def check_models_match_settings(
    meta: dict[str, Any],
    ft: FinetuneSettings,
    task_name: str,
    splits: SplitSettings | None = None,
) -> None:
    """Stop when the saved models are not the ones ``finetune`` (and ``data.splits``) params
    describe (seed values, ensemble size, cross-validation folds): evaluating stale models would
    report another run's figures."""
    expected: dict[str, Any] = {"seeds": ft.seed_values(), "ensemble_size": ft.ensemble_size}
    if splits is not None:
        expected["folds"] = splits.k if splits.mode == "kfold" else None
    problems = [
        f"{key}: saved {meta.get(key)!r}, params {value!r}"
        for key, value in expected.items()
        if meta.get(key) != value
    ]
    if problems:
        raise SettingsError(
            f"models/finetuned/{task_name}/meta.json: the fine-tuned models do not match "
            f"params.yaml finetune ({'; '.join(problems)}); re-run the finetune stage: "
            f"`dvc repro finetune@{task_name}`"
        )


@dataclass
class FoldPredictions:
    """One fold's (or the single split's) predictions: a table per split, the first seed's
    backbone features per split and each seed's member predictions ``{split: {seed: [N, M]}}``,
    all in the same row order."""

    frames: dict[str, pd.DataFrame]
    features: dict[str, np.ndarray]
    members: dict[str, dict[int, np.ndarray]]


def predict_fold(
    seed_models: list[SeedModel],
    datamodule: TaskDataModule,
    splits: tuple[str, ...],
    device: str,
    flip_tta: bool,
) -> FoldPredictions:
    """Every seed's predictions on those of `splits` that have subjects."""
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


# Columns the baselines' predictions are carried in beside the model's (dropped from the output).
MEAN_COLUMN = "baseline_mean"
RIDGE_COLUMN = "baseline_ridge"


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


def combine_folds(folds: list[FoldPredictions]) -> FoldPredictions:
    """The folds' predictions as one table per split: ``val`` and ``test`` concatenated (each
    subject is validated and tested in one fold) with a ``fold`` column, ``ood_test`` averaged
    over the folds' models (the same subjects, in the same order, in every fold). Features are
    the first fold's: different networks share no feature space."""
    if len(folds) == 1:
        return folds[0]
    combined = FoldPredictions({}, dict(folds[0].features), {})
    for split in ("val", "test"):
        combined.frames[split] = pd.concat(
            [f.frames[split].assign(fold=index) for index, f in enumerate(folds)],
            ignore_index=True,
        )
        combined.members[split] = {
            seed: np.concatenate([f.members[split][seed] for f in folds])
            for seed in folds[0].members[split]
        }
    if "ood_test" in folds[0].frames:
        frames = [f.frames["ood_test"] for f in folds]
        for frame in frames[1:]:
            if not frame["subject_id"].equals(frames[0]["subject_id"]):
                raise ValueError("the folds' ood_test predictions are not in the same order")
        averaged = [c for c in frames[0].columns if c.startswith(("prediction", "baseline_"))]
        ood = frames[0].copy()
        ood[averaged] = np.mean([frame[averaged].to_numpy(float) for frame in frames], axis=0)
        combined.frames["ood_test"] = ood
        combined.members["ood_test"] = {
            seed: np.mean([f.members["ood_test"][seed] for f in folds], axis=0)
            for seed in folds[0].members["ood_test"]
        }
    return combined


def evaluate_task(settings: Settings, task_name: str, root: Path = Path(".")) -> TaskEvaluation:
    from neurotransfer.train.checkpoint import load_fold_models
    from neurotransfer.train.finetune import task_datamodule, task_settings

    task = task_settings(settings, task_name)
    ev = settings.evaluate
    fold_models, meta = load_fold_models(paths.finetuned_dir(task_name, root))
    check_models_match_settings(meta, settings.finetune, task_name, settings.data.splits)
    seed_values = [model.seed for model in fold_models[0]]
    device = str(resolve_device(settings.finetune.accelerator, "finetune.accelerator"))
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
        add_baseline_predictions(predicted, datamodule, task.kind, ev.ridge_baseline, ev.seed, root)
        per_fold.append(predicted)
    combined = combine_folds(per_fold)
    frames, members = combined.frames, combined.members

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
    # Everything fitted per seed is fitted on that seed's validation predictions only.
    seed_records: dict[int, dict[str, Any]] = {s: {"seed": s} for s in seed_values}
    thresholds: dict[int, float] = {}
    val = frames["val"]
    for seed in seed_values:
        if task.kind == "binary":
            choice = choose_threshold(val["target"], val[seed_column(seed)])
            thresholds[seed] = choice.threshold
            seed_records[seed].update(
                threshold=choice.threshold,
                threshold_val_youden_j=choice.youden_j,
                threshold_note=choice.fallback_reason,
            )
        else:
            correction = AgeBiasCorrection.fit(val["target"], val[seed_column(seed)])
            for frame in frames.values():
                frame[corrected_seed_column(seed)] = correction.apply(
                    frame[seed_column(seed)].to_numpy()
                )
            seed_records[seed]["age_bias_correction"] = asdict(correction)
    if task.kind == "regression":
        for frame in frames.values():
            frame["prediction_corrected"] = frame[
                [corrected_seed_column(s) for s in seed_values]
            ].mean(axis=1)

    evaluated = pd.concat([frames[s] for s in EVAL_SPLITS if s in frames], ignore_index=True)
    metrics["model_metrics"], per_seed = evaluate_seed_predictions(
        evaluated, task.kind, seed_values, thresholds, ev.ci_level
    )
    for seed, model in zip(seed_values, fold_models[0], strict=True):
        seed_records[seed].update(per_seed[seed])
        if len(model.modules) > 1:
            # Each member alone (point estimates), to show what averaging them bought.
            member_predictions = {split: members[split][seed] for split in frames}
            seed_records[seed]["members"] = {
                f"member{index}": {
                    "seed": record["seed"],
                    **member_point_metrics(frames, member_predictions, index, task.kind),
                }
                for index, record in enumerate(model.meta["members"])
            }
    # Keyed by seed value, not a list: `dvc metrics show/diff` flatten dicts.
    metrics["seeds"] = {seed_key(s): seed_records[s] for s in seed_values}
    metrics.update(_baseline_metrics(frames, evaluated, task.kind, seed_values, thresholds, ev))

    # Site predictability of the backbone's features (OpenBHB-style probe), on every subject
    # the model saw or was scored on: lower means features that carry less scanner signature.
    # The first seed's (first member's) features in the first fold: independently trained
    # networks share no feature space.
    first = per_fold[0]
    all_features = np.concatenate([first.features[s] for s in first.frames])
    all_sites = np.concatenate([first.frames[s]["site"].to_numpy() for s in first.frames])
    probe = site_probe(all_features, all_sites, folds=ev.site_probe_folds, seed=ev.seed)
    metrics["site_probe"] = {**probe, "seed": seed_values[0]}
    if task.kind == "regression":
        split = "ood_test" if "ood_test" in frames else "test"
        mae = metrics["model_metrics"][split]["metrics"]["mae_corrected"]["value"]
        metrics["openbhb_score"] = {
            "split": split,
            "value": openbhb_score(mae, probe["balanced_accuracy"], probe["n_sites"]),
        }
    output = [frames[s] for s in ("train", "val", *EVAL_SPLITS) if s in frames]
    predictions = pd.concat(output, ignore_index=True).drop(
        columns=[MEAN_COLUMN, RIDGE_COLUMN], errors="ignore"
    )
    return TaskEvaluation(metrics=metrics, predictions=predictions)


def _baseline_metrics(
    frames: dict[str, pd.DataFrame],
    evaluated: pd.DataFrame,
    kind: str,
    seed_values: list[int],
    thresholds: dict[int, float],
    ev: EvaluateSettings,
) -> dict[str, Any]:
    """The baselines' metrics on exactly the model's subjects (``baselines``), the ridge's
    threshold, and the paired model - ridge differences (``model_minus_ridge``)."""
    keys = ["subject_id", "dataset", "site", "split", "target"]
    mean_frame = evaluated[keys].assign(prediction=evaluated[MEAN_COLUMN])
    out: dict[str, Any] = {"baselines": {"mean_predictor": scored_point_metrics(mean_frame, kind)}}
    if not ev.ridge_baseline:
        return out
    ridge_threshold = DEFAULT_THRESHOLD
    if kind == "binary":
        val = frames["val"]
        ridge_threshold = choose_threshold(val["target"], val[RIDGE_COLUMN]).threshold
        out["baseline_thresholds"] = {"ridge_voxels": ridge_threshold}
    ridge_frame = evaluated[keys].assign(prediction=evaluated[RIDGE_COLUMN])
    out["baselines"]["ridge_voxels"] = evaluate_predictions(
        ridge_frame, kind, ev.bootstrap_samples, ev.ci_level, ev.seed, threshold=ridge_threshold
    )
    # Two unpaired intervals overlap long before a difference is doubtful: the paired
    # difference (model - ridge) on the same subjects answers "does the model beat it?".
    out["model_minus_ridge"] = paired_against_baseline(
        ridge_frame, evaluated, kind, seed_values, ev.ci_level, thresholds, ridge_threshold
    )
    return out
