"""The upstream pool that trains the diffusion model: manifest rows, arrays, held-out subjects.

Only manifest rows with ``role == "pool"`` and ``split == "pool"`` are used: downstream subjects
(and so every downstream test subject) never reach the generative model. Pool rows that cannot
condition the model (no age, sex not M/F) are excluded with their reason, never silently; a row
whose array is missing or malformed is an error naming the file, because it means the
``preprocess`` outputs are broken rather than that one subject is unusable.

Intensities: ``preprocess`` writes brain-masked arrays normalised to roughly [0, 1] (robust
percentiles). They are clipped to [0, 1] here, so the autoencoder's targets and the samples
share one bounded range (values above the upper percentile are a few bright voxels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.data.manifest import no_pool_error, pool_array_paths, pool_rows, read_manifest


@dataclass(frozen=True)
class PoolTable:
    """Usable pool scans (one row each, absolute ``path``) and the excluded ones with reasons."""

    scans: pd.DataFrame
    excluded: pd.DataFrame  # subject_id, path, reason


def read_pool(manifest_path: Path, root: Path) -> PoolTable:
    """Read the pool rows of ``data/processed/manifest.csv`` (paths relative to ``root``)."""
    manifest = read_manifest(manifest_path)
    pool = manifest[pool_rows(manifest)].copy()
    if pool.empty:
        raise no_pool_error(manifest_path, "")

    pool["sex"] = pool["sex"].str.strip()
    reasons = pd.Series("", index=pool.index, dtype=object)
    reasons[pool["age"].isna()] = "no age (needed for conditioning)"
    reasons[(reasons == "") & ~pool["sex"].isin(["M", "F"])] = "sex is not M or F"
    excluded = pool.loc[reasons != "", ["subject_id", "path"]].assign(reason=reasons[reasons != ""])

    scans = pool[reasons == ""].copy()
    scans["path"] = pool_array_paths(scans, manifest_path, root)
    keep = ["subject_id", "dataset", "site", "age", "sex", "path"]
    return PoolTable(scans[keep].reset_index(drop=True), excluded.reset_index(drop=True))


def load_volume(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One cached array as float32 clipped to [0, 1]; errors name the file and the problem."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read array: {exc}") from exc
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"{path}: array shape {tuple(array.shape)} is not data.preprocess.shape {tuple(shape)}"
        )
    volume = np.asarray(array, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise ValueError(f"{path}: array has non-finite values")
    return np.clip(volume, 0.0, 1.0)


def load_volumes(paths: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """``[N, D, H, W]`` float32 array of the given scans."""
    out = np.empty((len(paths), *shape), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = load_volume(path, shape)
    return out
