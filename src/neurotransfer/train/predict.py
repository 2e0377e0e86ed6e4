"""Run a trained TaskModule (or an ensemble of them) over a dataloader: per-subject predictions
and backbone features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from neurotransfer.data.datamodule import LEFT_RIGHT_AXIS
from neurotransfer.train.module import TaskModule


def member_column(index: int) -> str:
    """Predictions column of ensemble member `index` (written only for ensembles)."""
    return f"prediction_member{index}"


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
        mirrored = torch.flip(images, dims=[LEFT_RIGHT_AXIS + 2]) if flip_tta else None
        member_values = []
        for index, module in enumerate(members):
            feats = module.features(images)
            values = module.to_task_units(module.head(feats).reshape(-1))
            if mirrored is not None:
                # [B, C, *spatial]: spatial axis a is tensor dimension a + 2.
                values = (values + module.predict_values(mirrored)) / 2
            member_values.append(values.float().cpu().numpy())
            if index == 0:
                features.append(feats.float().cpu().numpy())
        frame = pd.DataFrame(
            {
                "subject_id": list(batch["subject_id"]),
                "dataset": list(batch["dataset"]),
                "site": list(batch["site"]),
                "split": split,
                "target": batch["target"].float().reshape(-1).cpu().numpy(),
                "prediction": np.mean(member_values, axis=0),
            }
        )
        if len(members) > 1:
            for index, values in enumerate(member_values):
                frame[member_column(index)] = values
        rows.append(frame)
    if not rows:
        columns = ["subject_id", "dataset", "site", "split", "target", "prediction"]
        if len(members) > 1:
            columns += [member_column(index) for index in range(len(members))]
        return pd.DataFrame(columns=columns), np.zeros((0, 0), dtype=np.float32)
    return pd.concat(rows, ignore_index=True), np.concatenate(features)
