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

REQUIRED_COLUMNS = ("subject_id", "role", "split", "age", "sex", "path")


def pool_rows(manifest: pd.DataFrame) -> pd.Series:
    """Which manifest rows are the upstream pool: ``role == "pool"`` and ``split == "pool"``."""
    return (manifest["role"] == "pool") & (manifest["split"] == "pool")


@dataclass(frozen=True)
class PoolTable:
    """Usable pool scans (one row each, absolute ``path``) and the excluded ones with reasons."""

    scans: pd.DataFrame
    excluded: pd.DataFrame  # subject_id, path, reason


def has_pool(manifest_path: Path) -> bool:
    """Whether the manifest lists any upstream pool scans (downstream-only data has none)."""
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest not found (run `preprocess` first)")
    manifest = pd.read_csv(manifest_path, dtype=str)
    missing = [c for c in ("role", "split") if c not in manifest.columns]
    if missing:
        raise ValueError(f"{manifest_path}: missing column(s) {missing}")
    return bool(pool_rows(manifest).any())


def read_pool(manifest_path: Path, root: Path) -> PoolTable:
    """Read the pool rows of ``data/processed/manifest.csv`` (paths relative to ``root``)."""
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest not found (run `preprocess` first)")
    manifest = pd.read_csv(manifest_path, dtype={"subject_id": str, "sex": str, "path": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{manifest_path}: missing column(s) {missing}")
    pool = manifest[pool_rows(manifest)].copy()
    if pool.empty:
        raise ValueError(f"{manifest_path}: no rows with role == 'pool' and split == 'pool'")

    pool["age"] = pd.to_numeric(pool["age"], errors="coerce")
    pool["sex"] = pool["sex"].fillna("").astype(str).str.strip()
    reasons = pd.Series("", index=pool.index, dtype=object)
    reasons[pool["age"].isna()] = "no age (needed for conditioning)"
    reasons[(reasons == "") & ~pool["sex"].isin(["M", "F"])] = "sex is not M or F"
    excluded = pool.loc[reasons != "", ["subject_id", "path"]].assign(reason=reasons[reasons != ""])

    scans = pool[reasons == ""].copy()
    scans["path"] = [str((root / p).resolve()) for p in scans["path"]]
    for path in scans["path"]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: pool array listed in {manifest_path} is missing")
    keep = [c for c in ("subject_id", "dataset", "site", "age", "sex", "path") if c in scans]
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


def holdout_mask(subject_ids: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out scans: whole subjects, chosen deterministically from ``seed``.

    At least two subjects are held out (the quality metrics compare pairs) and at least two
    remain for training.
    """
    subjects = np.array(sorted(subject_ids.unique()))
    n_holdout = max(2, round(fraction * len(subjects)))
    if len(subjects) - n_holdout < 2:
        raise ValueError(
            f"the pool has {len(subjects)} usable subject(s): too few to hold out {n_holdout} "
            "and train on at least 2"
        )
    rng = np.random.default_rng(seed)
    held_out = set(rng.permutation(subjects)[:n_holdout])
    return subject_ids.isin(held_out).to_numpy()
