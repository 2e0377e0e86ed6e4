"""Scoring one task's prediction tables, handed over by the ``evaluate`` stage: what is fitted
per fine-tuning seed on its validation predictions only (the brain-age bias correction, the
probability threshold of binary tasks), each ensemble member's point metrics, the site probe on
the backbone's features, and the predictions table the stage writes.

The tables are one per split (``train``, ``val``, ``test``, ``ood_test``) with a
``prediction_seed<k>`` column per seed value (``seeds.seed_column``); the headline metrics over
seeds are ``seeds.evaluate_seed_predictions``'s, the baselines' ``baseline_comparison``'s.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from neurotransfer.evaluation.baseline_comparison import MEAN_COLUMN, RIDGE_COLUMN
from neurotransfer.evaluation.folds import FoldPredictions
from neurotransfer.evaluation.metrics import DEFAULT_THRESHOLD, AgeBiasCorrection, choose_threshold
from neurotransfer.evaluation.seeds import corrected_seed_column, point_metrics, seed_column
from neurotransfer.evaluation.site_probe import openbhb_score, site_probe

# The splits that are scored; ``train`` and ``val`` are predicted too, but only to fit on.
EVAL_SPLITS = ("test", "ood_test")


def fit_on_validation(
    frames: dict[str, pd.DataFrame], kind: str, seed_values: list[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, float]]:
    """Fit, per seed, what needs fitting on that seed's validation predictions (``val``) only.

    Binary tasks: the seed's probability threshold. Brain age: the seed's bias correction,
    applied to its column of every table (``prediction_corrected_seed<k>``), and their mean
    over seeds as ``prediction_corrected`` (the tables of `frames` gain these columns). Returns
    each seed's record of what was fitted (``{seed: {"seed": seed, ...}}``) and the thresholds
    (empty for brain age).
    """
    seed_records: dict[int, dict[str, Any]] = {s: {"seed": s} for s in seed_values}
    thresholds: dict[int, float] = {}
    val = frames["val"]
    for seed in seed_values:
        if kind == "binary":
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
    if kind == "regression":
        for frame in frames.values():
            frame["prediction_corrected"] = frame[
                [corrected_seed_column(s) for s in seed_values]
            ].mean(axis=1)
    return seed_records, thresholds


def evaluated_rows(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The scored splits' rows (:data:`EVAL_SPLITS` that `frames` has) as one table."""
    return pd.concat([frames[s] for s in EVAL_SPLITS if s in frames], ignore_index=True)


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


def member_records(
    frames: dict[str, pd.DataFrame],
    members: dict[str, dict[int, np.ndarray]],
    seed: int,
    member_seeds: list[int],
    kind: str,
) -> dict[str, dict[str, Any]]:
    """Each ensemble member of seed value `seed` alone (point estimates), to show what averaging
    them bought: ``{"member<m>": {"seed": <its training seed>, <split>: {...}, ...}}``.
    `members` holds every seed's member predictions per split (``{split: {seed: [N, M]}}``) and
    `member_seeds` the members' training seeds, in member order."""
    member_predictions = {split: members[split][seed] for split in frames}
    return {
        f"member{index}": {
            "seed": member_seed,
            **member_point_metrics(frames, member_predictions, index, kind),
        }
        for index, member_seed in enumerate(member_seeds)
    }


def site_probe_metrics(
    first: FoldPredictions,
    model_metrics: dict[str, Any],
    kind: str,
    folds: int,
    seed: int,
    seed_value: int,
) -> dict[str, Any]:
    """Site predictability of the backbone's features (OpenBHB-style probe), on every subject
    of `first` (the model saw or was scored on them): lower means features that carry less
    scanner signature. `first` is the first fold's predictions and its features the first
    seed's (`seed_value`; first member's): independently trained networks share no feature
    space. The probe's cross-validation uses `folds` folds and `seed`. For brain age also the
    OpenBHB combined score with the bias-corrected MAE of `model_metrics` on ``ood_test`` (or
    ``test`` without held-out sites)."""
    all_features = np.concatenate([first.features[s] for s in first.frames])
    all_sites = np.concatenate([first.frames[s]["site"].to_numpy() for s in first.frames])
    probe = site_probe(all_features, all_sites, folds=folds, seed=seed)
    out: dict[str, Any] = {"site_probe": {**probe, "seed": seed_value}}
    if kind == "regression":
        split = "ood_test" if "ood_test" in model_metrics else "test"
        mae = model_metrics[split]["metrics"]["mae_corrected"]["value"]
        out["openbhb_score"] = {
            "split": split,
            "value": openbhb_score(mae, probe["balanced_accuracy"], probe["n_sites"]),
        }
    return out


def predictions_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every split's predictions as the one table the stage writes, in split order, without the
    baselines' columns."""
    output = [frames[s] for s in ("train", "val", *EVAL_SPLITS) if s in frames]
    return pd.concat(output, ignore_index=True).drop(
        columns=[MEAN_COLUMN, RIDGE_COLUMN], errors="ignore"
    )
