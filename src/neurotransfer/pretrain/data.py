"""The volumes pre-training reads: the real upstream pool and the synthetic dataset.

- Pool: the rows of ``data/processed/manifest.csv`` (read with the data package's
  :func:`~neurotransfer.data.read_manifest`) with ``role == pool`` and ``split == pool``, one
  cached fp16 array each (read like the fine-tuning DataModule reads them). No labels are
  needed to pre-train on it (``ssl``); the age probe uses the rows that have an age.
- Synthetic: the ``synthesize`` stage's BIDS-like folder (:mod:`neurotransfer.synth.store`):
  ``participants.tsv`` with the conditioning covariates and one float32
  ``sub-*/anat/sub-*_T1w.nii.gz`` per row, already on the ``data.preprocess`` grid.

Both record a content hash (``meta.json``), so a backbone says exactly which data made it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from neurotransfer.atomic import SKIPPED_NOTE
from neurotransfer.config import SettingsError
from neurotransfer.data import read_cached_volume
from neurotransfer.data.manifest import no_pool_error, pool_array_paths, pool_rows, read_manifest

Shape3D = tuple[int, int, int]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(names: Sequence[str], paths: Sequence[Path]) -> str:
    """One hash over (name, file content) pairs, in order."""
    digest = hashlib.sha256()
    for name, path in zip(names, paths, strict=True):
        digest.update(name.encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# the real upstream pool
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolScans:
    rows: pd.DataFrame  # subject_id, age (NaN when unknown), path (absolute)
    manifest_path: Path

    def data_record(self) -> dict[str, object]:
        return {
            "manifest": str(self.manifest_path),
            "manifest_sha256": file_sha256(self.manifest_path),
            "pool_scans": len(self.rows),
            "pool_arrays_sha256": files_sha256(
                list(self.rows["subject_id"]), [Path(p) for p in self.rows["path"]]
            ),
        }


def read_pool_scans(manifest_path: Path, root: Path, required: bool = True) -> PoolScans:
    """The upstream pool's scans (``role == pool`` and ``split == pool``), labels optional.

    Without pool rows it raises when `required`, else returns no rows (data with downstream
    datasets only, e.g. IXI-HH: sources that do not train on the pool still run).
    """
    manifest = read_manifest(manifest_path)
    pool = manifest[pool_rows(manifest)]
    if pool.empty and required:
        raise no_pool_error(
            manifest_path, "; pre-training (and its age probe) reads the upstream pool"
        )
    rows = pd.DataFrame(
        {
            "subject_id": pool["subject_id"].to_numpy(),
            "age": pool["age"].to_numpy(dtype=float),
            "path": pool_array_paths(pool, manifest_path, root),
        }
    )
    return PoolScans(rows, manifest_path)


def read_pool_array(path: str | Path, shape: Shape3D) -> torch.Tensor:
    """One cached array as a float32 ``[1, D, H, W]`` tensor; checks the grid."""
    array = read_cached_volume(path)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"{path}: array shape {tuple(array.shape)} is not data.preprocess.shape {tuple(shape)}"
        )
    return torch.from_numpy(array).to(torch.float32)[None]


# --------------------------------------------------------------------------------------------
# the synthetic dataset
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticScans:
    rows: pd.DataFrame  # participant_id, path (absolute) and the covariate columns
    folder: Path
    covariates: tuple[str, ...]

    def data_record(self) -> dict[str, object]:
        return {
            "synthetic_dir": str(self.folder),
            "participants_sha256": file_sha256(self.folder / "participants.tsv"),
            "synthetic_volumes": len(self.rows),
            "synthetic_volumes_sha256": files_sha256(
                list(self.rows["participant_id"]), [Path(p) for p in self.rows["path"]]
            ),
        }


def synthetic_volume_path(folder: Path, participant_id: str) -> Path:
    return folder / participant_id / "anat" / f"{participant_id}_T1w.nii.gz"


def read_synthetic_scans(folder: Path, covariates: Sequence[str]) -> SyntheticScans:
    """``participants.tsv`` of the synthetic dataset with each volume's path; the requested
    covariate columns must exist and be numeric without gaps."""
    table_path = folder / "participants.tsv"
    if not table_path.is_file():
        skipped = Path(folder) / SKIPPED_NOTE
        why = f" ({skipped.read_text(encoding='utf-8').strip()})" if skipped.is_file() else ""
        raise FileNotFoundError(
            f"{table_path}: synthetic dataset not found{why} (run `dvc repro synthesize`, or "
            "set pretrain.synthetic_dir)"
        )
    table = pd.read_csv(table_path, sep="\t", dtype={"participant_id": str})
    missing = [c for c in covariates if c not in table.columns]
    if missing:
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        raise SettingsError(
            f"pretrain.covariates: {missing} not in {table_path}; numeric columns there: {numeric}"
        )
    for column in covariates:
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            raise ValueError(f"{table_path}: column {column!r} has missing or non-numeric values")
        table[column] = values.astype(float)
    table["path"] = [str(synthetic_volume_path(folder, pid)) for pid in table["participant_id"]]
    for path in table["path"]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: synthetic volume listed in {table_path} is missing")
    return SyntheticScans(table, folder, tuple(covariates))


def read_synthetic_volume(path: str | Path, shape: Shape3D) -> torch.Tensor:
    """One synthetic NIfTI volume (already on the preprocessing grid) as ``[1, D, H, W]``."""
    volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if tuple(volume.shape) != tuple(shape):
        raise ValueError(
            f"{path}: synthetic volume shape {tuple(volume.shape)} is not data.preprocess.shape "
            f"{tuple(shape)} (re-run `synthesize` with the current data.preprocess settings)"
        )
    return torch.from_numpy(volume)[None]


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
class VolumeDataset(Dataset):
    """``{"image": [1, D, H, W]}`` items (plus ``"covariates"`` when targets are given)."""

    def __init__(
        self,
        paths: Sequence[str],
        shape: Shape3D,
        kind: str,
        targets: np.ndarray | None = None,
    ) -> None:
        if kind not in ("pool", "synthetic"):
            raise ValueError(f"unknown volume kind {kind!r}")
        if targets is not None and len(targets) != len(paths):
            raise ValueError(f"{len(targets)} target rows for {len(paths)} volumes")
        self.paths = list(paths)
        self.shape = tuple(shape)
        self.kind = kind
        self.targets = None if targets is None else torch.as_tensor(targets, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.paths[index]
        if self.kind == "pool":
            image = read_pool_array(path, self.shape)
        else:
            image = read_synthetic_volume(path, self.shape)
        item = {"image": image.contiguous()}
        if self.targets is not None:
            item["covariates"] = self.targets[index]
        return item


def standardise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise z-scores, with the means and sds used (a constant column keeps sd 1)."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (values - mean) / std, mean, std


def cap_rows(rows: pd.DataFrame, max_volumes: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_volumes`` rows, a seeded random subset (all of them when ``None``)."""
    if max_volumes is None or len(rows) <= max_volumes:
        return rows.reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(rows))[:max_volumes]
    return rows.iloc[np.sort(order)].reset_index(drop=True)
