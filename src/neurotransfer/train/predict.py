"""Run trained TaskModules over a dataloader: per-subject predictions and backbone features, for
one model or ensemble (`predict_frame`) or for every fine-tuning seed's (`predict_seeds`). The
table's column names are in `columns`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from neurotransfer.data.datamodule import LEFT_RIGHT_AXIS
from neurotransfer.train.columns import FRAME_COLUMNS, member_column, seed_column
from neurotransfer.train.module import TaskModule

if TYPE_CHECKING:
    from neurotransfer.train.checkpoint import SeedModel


def _module_values(
    module: TaskModule, images: torch.Tensor, mirrored: torch.Tensor | None
) -> tuple[np.ndarray, torch.Tensor]:
    """One module's predictions (probability or years) for a batch, and its features."""
    feats = module.features(images)
    values = module.to_task_units(module.head(feats).reshape(-1))
    if mirrored is not None:
        values = (values + module.predict_values(mirrored)) / 2
    return values.float().cpu().numpy(), feats


def _batch_columns(batch: dict, split: str) -> dict[str, object]:
    return {
        "subject_id": list(batch["subject_id"]),
        "dataset": list(batch["dataset"]),
        "site": list(batch["site"]),
        "split": split,
        "target": batch["target"].float().reshape(-1).cpu().numpy(),
    }


def _mirrored(images: torch.Tensor, flip_tta: bool) -> torch.Tensor | None:
    # [B, C, *spatial]: spatial axis a is tensor dimension a + 2.
    return torch.flip(images, dims=[LEFT_RIGHT_AXIS + 2]) if flip_tta else None


@torch.no_grad()
def predict_frame(
    modules: TaskModule | Sequence[TaskModule],
    loader: DataLoader,
    split: str,
    device: str | torch.device = "cpu",
    flip_tta: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions (probability or years) per subject and the backbone features `[N, F]`.

    With `flip_tta` each prediction is the mean of those for the volume and its left-right
    mirror image (test-time augmentation with the flip training already applies; brains are
    near-symmetric). The features stay those of the volume as given.

    Given several modules (a deep ensemble), ``prediction`` is the mean of the members'
    probabilities or years, and each member's own prediction is kept in
    ``prediction_member<k>``. The features are member 0's: independently trained networks do
    not share a feature space, so averaging their features would describe no network.
    """
    members = [modules] if isinstance(modules, TaskModule) else list(modules)
    if not members:
        raise ValueError("predict_frame needs at least one module")
    members = [module.to(device).eval() for module in members]
    rows: list[pd.DataFrame] = []
    features: list[np.ndarray] = []
    for batch in loader:
        images = batch["image"].to(device)
        mirrored = _mirrored(images, flip_tta)
        member_values = []
        for index, module in enumerate(members):
            values, feats = _module_values(module, images, mirrored)
            member_values.append(values)
            if index == 0:
                features.append(feats.float().cpu().numpy())
        frame = pd.DataFrame(
            {**_batch_columns(batch, split), "prediction": np.mean(member_values, axis=0)}
        )
        if len(members) > 1:
            for index, values in enumerate(member_values):
                frame[member_column(index)] = values
        rows.append(frame)
    if not rows:
        columns = list(FRAME_COLUMNS)
        if len(members) > 1:
            columns += [member_column(index) for index in range(len(members))]
        return pd.DataFrame(columns=columns), np.zeros((0, 0), dtype=np.float32)
    return pd.concat(rows, ignore_index=True), np.concatenate(features)


@torch.no_grad()
def predict_seeds(
    seed_models: Sequence[SeedModel],
    loader: DataLoader,
    split: str,
    device: str | torch.device = "cpu",
    flip_tta: bool = False,
) -> tuple[pd.DataFrame, np.ndarray, dict[int, np.ndarray]]:
    """Every fine-tuning seed's predictions per subject, in one pass over `loader`.

    Returns the table, the features ``[N, F]`` of the first seed's (first member's) backbone,
    and each seed value's member predictions ``{seed: [N, members]}``. The table has
    ``prediction_seed<k>`` for every seed value k (a seed's ensemble is averaged into it) and
    ``prediction``, the mean over seeds; with one seed and an ensemble also
    ``prediction_member<m>`` (with several seeds, the members' figures go to the metrics only).
    Features are one network's: independently trained networks share no feature space.
    """
    if not seed_models:
        raise ValueError("predict_seeds needs at least one seed's model")
    models = [
        (model.seed, [module.to(device).eval() for module in model.modules])
        for model in seed_models
    ]
    member_columns = len(models) == 1 and len(models[0][1]) > 1
    rows: list[pd.DataFrame] = []
    features: list[np.ndarray] = []
    member_values: dict[int, list[np.ndarray]] = {seed: [] for seed, _ in models}
    for batch in loader:
        images = batch["image"].to(device)
        mirrored = _mirrored(images, flip_tta)
        columns = _batch_columns(batch, split)
        per_seed = {}
        for seed_index, (seed, modules) in enumerate(models):
            values = []
            for member, module in enumerate(modules):
                member_prediction, feats = _module_values(module, images, mirrored)
                values.append(member_prediction)
                if seed_index == 0 and member == 0:
                    features.append(feats.float().cpu().numpy())
            stacked = np.stack(values, axis=1)
            member_values[seed].append(stacked)
            per_seed[seed_column(seed)] = stacked.mean(axis=1)
        columns["prediction"] = np.mean(list(per_seed.values()), axis=0)
        columns.update(per_seed)
        if member_columns:
            for member in range(stacked.shape[1]):
                columns[member_column(member)] = stacked[:, member]
        rows.append(pd.DataFrame(columns))
    if not rows:
        names = FRAME_COLUMNS + [seed_column(seed) for seed, _ in models]
        if member_columns:
            names += [member_column(m) for m in range(len(models[0][1]))]
        empty = {seed: np.zeros((0, len(modules))) for seed, modules in models}
        return pd.DataFrame(columns=names), np.zeros((0, 0), dtype=np.float32), empty
    members = {seed: np.concatenate(chunks) for seed, chunks in member_values.items()}
    return pd.concat(rows, ignore_index=True), np.concatenate(features), members
