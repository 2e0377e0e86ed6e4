"""The manifest contract: ``<processed_dir>/manifest.csv``, one row per scan.

``preprocess`` writes it through :func:`write_manifest`; every later stage reads it through
:func:`read_manifest`, so its path, its columns and their types, its validation and the one
"manifest not found" message live here. Row
selection that several stages share (the upstream pool) lives here too; a task's labelled rows
are :func:`neurotransfer.data.tasks.select_task_rows`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MANIFEST_NAME = "manifest.csv"

# What ingest reads for each scan besides its ids (its scan table has these columns too).
SCAN_LABEL_COLUMNS = ["dataset", "site", "role", "age", "sex", "diagnosis"]
# DESIGN.md's manifest columns, in order; extra columns follow them.
MANIFEST_COLUMNS = ["subject_id", *SCAN_LABEL_COLUMNS, "split", "path", "exclusion_reason"]
# What the preprocess stage adds after them, in this order.
EXTRA_COLUMNS = [
    "fold",  # cross-validation fold of a `cv` scan (data.splits.mode kfold), empty otherwise
    "scan_id",
    "source_path",
    "cache_key",
    "array_sha256",
    "qc_template_corr",
    "qc_brain_coverage",
    "registration_scale",
    "qc_outlier",
]
# Read as strings (a missing value is the empty string, never NaN): ids such as "0012" and site
# names such as "NA" must survive a round trip unchanged.
TEXT_COLUMNS = (
    "subject_id",
    "dataset",
    "site",
    "role",
    "sex",
    "diagnosis",
    "split",
    "path",
    "exclusion_reason",
    "scan_id",
    "source_path",
    "cache_key",
    "array_sha256",
)
NUMERIC_COLUMNS = (
    "age",
    "fold",
    "qc_template_corr",
    "qc_brain_coverage",
    "registration_scale",
)
POOL = "pool"


def manifest_path(processed_dir: str | Path, root: str | Path = ".") -> Path:
    """Where the manifest of ``processed_dir`` lives (``root``: the repository root)."""
    return Path(root) / processed_dir / MANIFEST_NAME


def write_manifest(scans: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """Write `scans`' manifest columns to ``<folder>/manifest.csv``; return the table written."""
    manifest = scans[MANIFEST_COLUMNS + EXTRA_COLUMNS]
    manifest.to_csv(Path(folder) / MANIFEST_NAME, index=False, float_format="%.6g")
    return manifest


def require_manifest(path: str | Path) -> Path:
    """``path`` when the manifest exists, else the one error every stage gives for it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the preprocess stage first)")
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest with text columns as strings (empty string for missing), numbers as float."""
    path = require_manifest(path)
    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a neurotransfer manifest (missing columns {missing})")
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan)).astype(float)
    if "qc_outlier" in frame.columns:
        frame["qc_outlier"] = frame["qc_outlier"].astype(str) == "True"
    return frame


def pool_rows(manifest: pd.DataFrame) -> pd.Series:
    """Which rows are the upstream pool: ``role == "pool"`` and ``split == "pool"``.

    Downstream subjects (and so every downstream test subject) are never pool rows, which is
    what keeps them away from pre-training and the generative model.
    """
    return (manifest["role"] == POOL) & (manifest["split"] == POOL)


def has_pool(path: str | Path) -> bool:
    """Whether the manifest lists any upstream pool scans (downstream-only data has none)."""
    return bool(pool_rows(read_manifest(path)).any())


def pool_array_paths(pool: pd.DataFrame, path: str | Path, root: str | Path) -> list[str]:
    """Absolute array paths of ``pool``'s rows; a missing array is an error naming both files.

    A listed array that is absent means the ``preprocess`` outputs are broken, not that one
    subject is unusable, so it is never a silent exclusion.
    """
    arrays = [str((Path(root) / p).resolve()) for p in pool["path"]]
    for array in arrays:
        if not Path(array).is_file():
            raise FileNotFoundError(f"{array}: pool array listed in {path} is missing")
    return arrays


def no_pool_error(path: str | Path, why: str) -> ValueError:
    """The error for a stage that needs upstream pool rows and the manifest has none."""
    return ValueError(f"{path}: no rows with role == 'pool' and split == 'pool'{why}")
