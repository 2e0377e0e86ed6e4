"""Evaluate one fine-tuned task: ID and OOD metrics over its fine-tuning seeds, baselines, site
probe.

This is the orchestration behind the ``evaluate@<task>`` stage: it runs every seed's saved
model over the task's splits, fits what needs fitting on validation data only (per seed: the
brain-age bias correction, the probability threshold of binary tasks), scores ``test`` and
``ood_test`` (overall and per site) with the mean over seeds and an interval for seeds and
subjects (``evaluation.seeds``), scores two baselines on the same subjects (mean predictor,
ridge on voxels; deterministic, so subject-bootstrap CIs) and compares the model with the ridge
(``decision.metric_difference``), and probes the first seed's backbone features for site.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurotransfer.config import FinetuneSettings, Settings, SettingsError
from neurotransfer.evaluation.baselines import (
    downsample_for_baseline,
    mean_predictor_baseline,
    ridge_voxel_baseline,
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


def check_models_match_settings(meta: dict[str, Any], ft: FinetuneSettings, task_name: str) -> None:
    """Stop when the saved models are not the ones ``finetune`` params describe (seed values,
    ensemble size): evaluating stale models would report another run's figures."""
    expected = {"seeds": ft.seed_values(), "ensemble_size": ft.ensemble_size}
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


def evaluate_task(settings: Settings, task_name: str, root: Path = Path(".")) -> TaskEvaluation:
    from neurotransfer.data import TaskDataModule
    from neurotransfer.train.checkpoint import load_seed_models
    from neurotransfer.train.finetune import FINETUNED_DIR, manifest_path, task_settings
    from neurotransfer.train.predict import predict_seeds

    task = task_settings(settings, task_name)
    ev = settings.evaluate
    seed_models, meta = load_seed_models(root / FINETUNED_DIR / task_name)
    check_models_match_settings(meta, settings.finetune, task_name)
    seed_values = [model.seed for model in seed_models]
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
    members: dict[str, dict[int, np.ndarray]] = {}
    for split in ("train", "val", *EVAL_SPLITS):
        if datamodule.frame(split).empty:
            continue
        frames[split], features[split], members[split] = predict_seeds(
            seed_models,
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
        "n_seeds": len(seed_values),
    }
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
    for seed, model in zip(seed_values, seed_models, strict=True):
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

    # Baselines on exactly the same subjects.
    baselines: dict[str, Any] = {}
    train_target = frames["train"]["target"].to_numpy()
    baselines["mean_predictor"] = mean_predictor_baseline(train_target, evaluated, task.kind)
    if ev.ridge_baseline:
        x = {s: _volumes(frames[s], datamodule.frame(s), root, BASELINE_DOWNSAMPLE) for s in frames}
        eval_x = np.concatenate([x[s] for s in EVAL_SPLITS if s in frames])
        n_val = len(x["val"])
        # Validation predictions too, for the ridge's own threshold (the model's rule; they
        # are in-sample for the ridge, which is refitted on train + val).
        ridge_pred = ridge_voxel_baseline(
            x["train"],
            train_target,
            x["val"],
            val["target"].to_numpy(),
            np.concatenate([x["val"], eval_x]),
            task.kind,
            ev.seed,
        )
        ridge_val, ridge_eval = ridge_pred[:n_val], ridge_pred[n_val:]
        ridge_threshold = DEFAULT_THRESHOLD
        if task.kind == "binary":
            ridge_threshold = choose_threshold(val["target"], ridge_val).threshold
        ridge_frame = evaluated[["subject_id", "dataset", "site", "split", "target"]].assign(
            prediction=ridge_eval
        )
        baselines["ridge_voxels"] = evaluate_predictions(
            ridge_frame,
            task.kind,
            ev.bootstrap_samples,
            ev.ci_level,
            ev.seed,
            threshold=ridge_threshold,
        )
        if task.kind == "binary":
            metrics["baseline_thresholds"] = {"ridge_voxels": ridge_threshold}
        # Two unpaired intervals overlap long before a difference is doubtful: the paired
        # difference (model - ridge) on the same subjects answers "does the model beat it?".
        metrics["model_minus_ridge"] = paired_against_baseline(
            ridge_frame,
            evaluated,
            task.kind,
            seed_values,
            ev.ci_level,
            thresholds,
            ridge_threshold,
        )
    metrics["baselines"] = baselines

    # Site predictability of the backbone's features (OpenBHB-style probe), on every subject
    # the model saw or was scored on: lower means features that carry less scanner signature.
    # The first seed's (first member's) features: independently trained networks share no
    # feature space.
    all_features = np.concatenate([features[s] for s in frames])
    all_sites = np.concatenate([frames[s]["site"].to_numpy() for s in frames])
    probe = site_probe(all_features, all_sites, folds=ev.site_probe_folds, seed=ev.seed)
    metrics["site_probe"] = {**probe, "seed": seed_values[0]}
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
