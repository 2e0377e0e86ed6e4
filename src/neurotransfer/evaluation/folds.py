"""Cross-validation (``data.splits.mode: kfold``): the folds' prediction tables put together.

Each subject's validation and test predictions come from the one fold where it was validated or
tested, so ``val`` and ``test`` hold every cross-validated subject once; a held-out-site
subject's prediction for a seed is the mean over the folds' models (their cross-validation
ensemble).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class FoldPredictions:
    """One fold's (or the single split's) predictions: a table per split, the first seed's
    backbone features per split and each seed's member predictions ``{split: {seed: [N, M]}}``,
    all in the same row order."""

    frames: dict[str, pd.DataFrame]
    features: dict[str, np.ndarray]
    members: dict[str, dict[int, np.ndarray]]


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
