"""Run a trained TaskModule over a dataloader: per-subject predictions and backbone features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from neurotransfer.data.datamodule import LEFT_RIGHT_AXIS
from neurotransfer.train.module import TaskModule


@torch.no_grad()
def predict_frame(
    module: TaskModule,
    loader: DataLoader,
    split: str,
    device: str | torch.device = "cpu",
    flip_tta: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions (probability or years) per subject and the backbone features `[N, F]`.

    With `flip_tta` each prediction is the mean of those for the volume and its left-right
    mirror image (test-time augmentation with the flip training already applies; brains are
    near-symmetric). The features stay those of the volume as given.
    """
    module = module.to(device).eval()
    rows: list[pd.DataFrame] = []
    features: list[np.ndarray] = []
    for batch in loader:
        images = batch["image"].to(device)
        feats = module.features(images)
        values = module.to_task_units(module.head(feats).reshape(-1))
        if flip_tta:
            # [B, C, *spatial]: spatial axis a is tensor dimension a + 2.
            mirrored = torch.flip(images, dims=[LEFT_RIGHT_AXIS + 2])
            values = (values + module.predict_values(mirrored)) / 2
        features.append(feats.float().cpu().numpy())
        rows.append(
            pd.DataFrame(
                {
                    "subject_id": list(batch["subject_id"]),
                    "dataset": list(batch["dataset"]),
                    "site": list(batch["site"]),
                    "split": split,
                    "target": batch["target"].float().reshape(-1).cpu().numpy(),
                    "prediction": values.cpu().numpy(),
                }
            )
        )
    if not rows:
        empty = pd.DataFrame(
            columns=["subject_id", "dataset", "site", "split", "target", "prediction"]
        )
        return empty, np.zeros((0, 0), dtype=np.float32)
    return pd.concat(rows, ignore_index=True), np.concatenate(features)
