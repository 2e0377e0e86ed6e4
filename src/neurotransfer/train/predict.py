"""Run a trained TaskModule over a dataloader: per-subject predictions and backbone features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from neurotransfer.train.module import TaskModule


@torch.no_grad()
def predict_frame(
    module: TaskModule, loader: DataLoader, split: str, device: str | torch.device = "cpu"
) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions (probability or years) per subject and the backbone features `[N, F]`."""
    module = module.to(device).eval()
    rows: list[pd.DataFrame] = []
    features: list[np.ndarray] = []
    for batch in loader:
        images = batch["image"].to(device)
        feats = module.features(images)
        out = module.head(feats).reshape(-1).float()
        if module.kind == "binary":
            values = torch.sigmoid(out)
        else:
            values = out * module.target_std + module.target_mean
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
