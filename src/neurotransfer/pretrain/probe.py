"""The cheap representation-quality signal: a ridge probe of age on frozen pool features.

Every source (scratch included) is scored the same way, so variants compare in
``metrics/pretrain.json``: the backbone, in eval mode and frozen, maps every upstream-pool scan
with a known age to its ``[F]`` feature vector; whole subjects are split
(:func:`neurotransfer.data.splits.holdout_mask`, seeded) into ``1 - val_fraction`` to fit and
``val_fraction`` to score; features are standardised on the fitting part and scikit-learn's
``RidgeCV`` predicts age, its penalty chosen among ``ridge_alphas`` by leave-one-out error on the
fitting part only (a fixed penalty would favour feature sizes it happens to suit). Reported:
MAE and R² on the held-out subjects, the chosen penalty, the MAE of predicting the fitting
part's mean age (the floor a useless representation reaches), and the counts. It says how
linearly decodable age is from the features *before* any fine-tuning; it is not the
downstream brain-age result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from neurotransfer.data.splits import holdout_mask

MIN_SUBJECTS = 4  # two to fit, two to score


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    load: Callable[[str], torch.Tensor],
    paths: list[str],
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """``[N, F]`` float64 features of the volumes at ``paths`` (``load`` gives ``[1, D, H, W]``)."""
    was_training = backbone.training
    backbone.eval().to(device)
    out = []
    try:
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([load(p) for p in paths[start : start + batch_size]]).to(device)
            out.append(backbone(batch).float().cpu().numpy().astype(np.float64))
    finally:
        backbone.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def age_probe(
    features: np.ndarray,
    rows: pd.DataFrame,
    val_fraction: float,
    ridge_alphas: Sequence[float],
    seed: int,
) -> dict[str, Any]:
    """Fit the ridge probe on ``features`` (aligned with ``rows``: subject_id, age)."""
    known = rows["age"].notna().to_numpy()
    feats, rows = features[known], rows[known].reset_index(drop=True)
    n_subjects = rows["subject_id"].nunique()
    result: dict[str, Any] = {
        "target": "age",
        "ridge_alphas": [float(a) for a in ridge_alphas],
        "val_fraction": val_fraction,
        "n_scans": len(rows),
        "feature_dim": int(features.shape[1]) if features.ndim == 2 else 0,
    }
    if n_subjects < MIN_SUBJECTS:
        return {
            **result,
            "mae": None,
            "r2": None,
            "note": f"{n_subjects} pool subject(s) with an age: too few for a probe",
        }
    if not np.isfinite(feats).all():
        return {**result, "mae": None, "r2": None, "note": "non-finite backbone features"}
    held_out = holdout_mask(rows["subject_id"], val_fraction, seed)
    x_fit, x_val = feats[~held_out], feats[held_out]
    y = rows["age"].to_numpy(dtype=float)
    y_fit, y_val = y[~held_out], y[held_out]
    scaler = StandardScaler().fit(x_fit)
    model = RidgeCV(alphas=list(ridge_alphas)).fit(scaler.transform(x_fit), y_fit)
    predicted = model.predict(scaler.transform(x_val))
    r2 = float(r2_score(y_val, predicted)) if len(y_val) > 1 else float("nan")
    return {
        **result,
        "ridge_alpha": float(model.alpha_),
        "n_fit": len(y_fit),
        "n_val": len(y_val),
        "mae": float(mean_absolute_error(y_val, predicted)),
        "r2": r2 if math.isfinite(r2) else None,
        "mean_predictor_mae": float(np.abs(y_val - y_fit.mean()).mean()),
    }
