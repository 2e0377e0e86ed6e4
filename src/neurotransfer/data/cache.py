"""The preprocessed cache: one fp16 ``.npy`` per scan and ``manifest.csv`` beside them.

Each processed row of the manifest records a ``cache_key``: a hash of the input file's bytes, the
preprocessing settings and the preprocessing code. A re-run reuses every entry whose key is
unchanged (array and QC numbers, or the recorded failure) and computes only the rest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.config import PreprocessSettings

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
    "cache_key",
)


NUMERIC_COLUMNS = (
    "age",
    "qc_template_corr",
    "qc_brain_coverage",
    "registration_scale",
    "seconds",
)


def load_cached_volume(path: str | Path) -> np.ndarray:
    """A cached scan as a read-only memory map (fp16, shape of the target grid)."""
    return np.load(path, mmap_mode="r")


def read_cached_volume(path: str | Path) -> np.ndarray:
    """A cached scan read into memory (fp16, writable): the DataModule's per-item read."""
    return np.load(path, allow_pickle=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest with text columns as strings (empty string for missing), numbers as float."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the preprocess stage first)")
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


# Modules whose code decides a cached array's content: editing one invalidates every entry.
_PREPROCESSING_MODULES = ("volumes", "registration", "preprocessing")
# Settings that do not change a scan's array or its processing outcome.
_SETTINGS_NOT_IN_KEY = {"workers", "min_template_correlation"}


def code_fingerprint() -> str:
    """Hash of the source of the modules that turn a NIfTI file into a cached array."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for module in _PREPROCESSING_MODULES:
        digest.update((package / f"{module}.py").read_bytes())
    return digest.hexdigest()


def settings_fingerprint(settings: PreprocessSettings, seed: int) -> str:
    """Hash of everything besides the input file that decides a scan's cached array."""
    wanted = settings.model_dump(mode="json", exclude=_SETTINGS_NOT_IN_KEY)
    text = json.dumps(
        {"settings": wanted, "seed": seed, "code": code_fingerprint()}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def scan_cache_key(source_path: str | Path, settings_hash: str) -> str:
    """Key of one scan's cache entry: its file's content and the settings/code fingerprint.

    Content, not modification time: a copied or re-downloaded identical dataset is reused.
    """
    digest = hashlib.blake2b(settings_hash.encode(), digest_size=16)
    with open(source_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
