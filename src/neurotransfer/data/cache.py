"""The preprocessed cache: one fp16 ``.npy`` per scan and ``manifest.csv`` beside them.

Each processed row of the manifest records a ``cache_key``: a hash of the input file's bytes, the
preprocessing settings and the preprocessing code. A re-run reuses every entry whose key is
unchanged (array and QC numbers, or the recorded failure) and computes only the rest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.config import PreprocessSettings
from neurotransfer.data.ingest import SCAN_LABEL_COLUMNS

# DESIGN.md's manifest columns, in order; extra columns follow them.
MANIFEST_COLUMNS = ["subject_id", *SCAN_LABEL_COLUMNS, "split", "path", "exclusion_reason"]
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


def load_cached_volume(path: str | Path) -> np.ndarray:
    """A cached scan as a read-only memory map (fp16, shape of the target grid)."""
    return np.load(path, mmap_mode="r")


def read_cached_volume(path: str | Path) -> np.ndarray:
    """A cached scan read into memory (fp16, writable): the DataModule's per-item read."""
    return np.load(path, allow_pickle=False)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (recorded per cached array as the manifest's ``array_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_array_problem(
    path: str | Path, shape: tuple[int, ...], sha256: str = ""
) -> tuple[str, str]:
    """Check a cached array before it is reused: ``(problem, sha256)``; problem "" if sound.

    The ``.npy`` header must say fp16 and `shape`, the file must have exactly the size
    that header implies (a truncated or padded file does not), and its bytes must hash to
    `sha256` when one was recorded. The digest is returned so a manifest that lacks it gains it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(handle)
            else:
                header = np.lib.format.read_array_header_2_0(handle)
            data_offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return f"unreadable .npy ({exc})", ""
    found_shape, _, dtype = header  # C or Fortran order: both memory-map the same
    if dtype != np.dtype(np.float16):
        return f"dtype {dtype}, not float16", ""
    if tuple(found_shape) != tuple(shape):
        return f"shape {tuple(found_shape)}, not the target grid {tuple(shape)}", ""
    expected = data_offset + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        return f"{size} bytes, its header implies {expected} (truncated or overwritten)", ""
    digest = file_sha256(path)
    if sha256 and digest != sha256:
        return "content differs from the sha256 recorded in the manifest", digest
    return "", digest


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
    Raises OSError naming the file when it is missing, unreadable or not a regular file.
    """
    digest = hashlib.blake2b(settings_hash.encode(), digest_size=16)
    # Non-blocking: opening a named pipe must not hang the run; then only plain files are read.
    with open(os.open(source_path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source_path))
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
