"""Reading the upstream pool: downstream subjects never used, exclusions recorded, held-out
subjects chosen deterministically, and broken arrays reported with their file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurotransfer.data.splits import holdout_mask
from neurotransfer.synth.pool import load_volume, read_pool
from tests.synth.phantoms import write_phantom_pool


def test_reads_only_pool_rows_and_records_exclusions(tmp_path: Path) -> None:
    manifest = write_phantom_pool(tmp_path, n_pool=6, shape=(8, 8, 8), n_downstream=3)
    table = pd.read_csv(manifest)
    table.loc[0, "age"] = np.nan
    table.loc[1, "sex"] = "unknown"
    table.to_csv(manifest, index=False)

    pool = read_pool(manifest, tmp_path)
    assert len(pool.scans) == 4
    assert not pool.scans["subject_id"].str.startswith("adni").any()
    assert dict(zip(pool.excluded["subject_id"], pool.excluded["reason"], strict=True)) == {
        "pool0000": "no age (needed for conditioning)",
        "pool0001": "sex is not M or F",
    }
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in pool.scans["path"])


def test_missing_pool_array_is_an_error_naming_it(tmp_path: Path) -> None:
    manifest = write_phantom_pool(tmp_path, n_pool=3, shape=(8, 8, 8))
    (tmp_path / "data/processed/arrays/pool-0002.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"pool-0002\.npy"):
        read_pool(manifest, tmp_path)


def test_manifest_without_pool_rows_or_columns_is_an_error(tmp_path: Path) -> None:
    manifest = write_phantom_pool(tmp_path, n_pool=2, shape=(8, 8, 8))
    table = pd.read_csv(manifest)
    table.assign(split="train").to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="no rows with role == 'pool'"):
        read_pool(manifest, tmp_path)
    table.drop(columns=["age"]).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"not a neurotransfer manifest \(missing columns \['age"):
        read_pool(manifest, tmp_path)


def test_volume_of_the_wrong_shape_or_with_nans_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "scan.npy"
    np.save(path, np.zeros((8, 8, 9), np.float16))
    with pytest.raises(ValueError, match=r"scan\.npy.*\(8, 8, 9\).*\(8, 8, 8\)"):
        load_volume(path, (8, 8, 8))
    np.save(path, np.full((8, 8, 8), np.nan, np.float16))
    with pytest.raises(ValueError, match=r"scan\.npy: array has non-finite"):
        load_volume(path, (8, 8, 8))


def test_volumes_are_clipped_to_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "scan.npy"
    np.save(path, np.linspace(-0.5, 1.5, 512, dtype=np.float16).reshape(8, 8, 8))
    volume = load_volume(path, (8, 8, 8))
    assert volume.dtype == np.float32
    assert volume.min() == 0.0 and volume.max() == 1.0


def test_holdout_keeps_subjects_whole_and_is_deterministic() -> None:
    subjects = pd.Series([f"s{i // 2}" for i in range(40)])  # two scans per subject
    mask = holdout_mask(subjects, fraction=0.25, seed=0)
    assert mask.sum() == 10
    held = set(subjects[mask])
    assert held.isdisjoint(set(subjects[~mask]))
    np.testing.assert_array_equal(mask, holdout_mask(subjects, 0.25, seed=0))
    assert not np.array_equal(mask, holdout_mask(subjects, 0.25, seed=1))


def test_holdout_needs_enough_subjects() -> None:
    with pytest.raises(ValueError, match="3 usable subject"):
        holdout_mask(pd.Series(["a", "b", "c"]), fraction=0.2, seed=0)
