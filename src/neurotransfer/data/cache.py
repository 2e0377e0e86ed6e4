"""The preprocessed cache: one fp16 ``.npy`` per scan and ``manifest.csv`` beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# DESIGN.md's manifest columns, in order; extra columns follow them.
MANIFEST_COLUMNS = [
    "subject_id",
    "dataset",
    "site",
    "role",
    "age",
    "sex",
    "diagnosis",
    "split",
    "path",
    "exclusion_reason",
]
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
)


def load_cached_volume(path: str | Path) -> np.ndarray:
    """A cached scan as a read-only memory map (fp16, shape of the target grid)."""
    return np.load(path, mmap_mode="r")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest with text columns as strings (empty string for missing) and age as float."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the preprocess stage first)")
    frame = pd.read_csv(
        path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values={"age": [""]}
    )
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a neurotransfer manifest (missing columns {missing})")
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    return frame
