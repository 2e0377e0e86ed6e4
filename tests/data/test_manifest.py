"""The manifest contract: one path, one typed reader, one error, one pool selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurotransfer.data.manifest import (
    MANIFEST_COLUMNS,
    has_pool,
    manifest_path,
    pool_array_paths,
    pool_rows,
    read_manifest,
)


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(path, index=False)
    return path


def _row(subject: str, role: str, split: str, age: object = 60.0) -> dict[str, object]:
    return {
        "subject_id": subject,
        "dataset": "d",
        "site": "NA",
        "role": role,
        "age": age,
        "sex": "F",
        "diagnosis": "",
        "split": split,
        "path": f"data/processed/d/{subject}.npy",
        "exclusion_reason": "",
    }


def test_path_types_and_pool_rows(tmp_path: Path) -> None:
    path = manifest_path("data/processed", tmp_path)
    assert path == tmp_path / "data/processed/manifest.csv"
    _write(
        path,
        [
            _row("0012", "pool", "pool"),
            _row("0013", "downstream", "train", age=""),
            _row("0014", "pool", "excluded"),
        ],
    )
    manifest = read_manifest(path)
    # Ids keep their leading zeros, a site called "NA" stays a string, a missing age is NaN.
    assert list(manifest["subject_id"]) == ["0012", "0013", "0014"]
    assert list(manifest["site"]) == ["NA"] * 3
    assert manifest["age"].dtype == float and np.isnan(manifest.loc[1, "age"])
    assert list(pool_rows(manifest)) == [True, False, False]
    assert has_pool(path)


def test_missing_malformed_and_missing_arrays_are_errors_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "data/processed/manifest.csv"
    with pytest.raises(FileNotFoundError, match=r"manifest.csv: manifest not found \(run the prep"):
        read_manifest(missing)
    missing.parent.mkdir(parents=True)
    missing.write_text("subject_id,age\ns1,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not a neurotransfer manifest \(missing columns"):
        read_manifest(missing)
    path = _write(missing, [_row("s1", "pool", "pool")])
    pool = read_manifest(path)
    with pytest.raises(FileNotFoundError, match=r"s1\.npy: pool array listed in .*manifest.csv"):
        pool_array_paths(pool, path, tmp_path)
    array = tmp_path / "data/processed/d/s1.npy"
    array.parent.mkdir(parents=True)
    np.save(array, np.zeros(2))
    assert pool_array_paths(pool, path, tmp_path) == [str(array.resolve())]
