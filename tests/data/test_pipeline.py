"""Ingest -> preprocess -> splits -> manifest -> DataModule on small BIDS folders."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurotransfer.config import (
    AugmentSettings,
    DataSettings,
    PreprocessSettings,
    SplitSettings,
    TaskSettings,
)
from neurotransfer.data import TaskDataModule, load_cached_volume, read_manifest, select_task_rows
from neurotransfer.data.ingest import DatasetError, ingest
from neurotransfer.data.splits import SplitError, assign_splits
from neurotransfer.stages.preprocess import process_scans, run_preprocess

from .niftis import mni_phantom, write_bids

TSV_HEADER = "participant_id\tage\tgender\tgroup\tsite\n"


def _downstream(root: Path, n: int = 16, bad: dict[str, str] | None = None) -> Path:
    rows, images = [], {}
    for i in range(n):
        sid = f"sub-d{i:02d}"
        rows.append(
            f"{sid}\t{50 + i}\t{'male' if i % 2 else 'F'}\t{'AD' if i % 4 < 2 else 'CN'}"
            f"\t{'s1' if i < n // 2 else 's2'}\n"
        )
        images[sid] = mni_phantom(("RAS", "LPS", "PSR")[i % 3], (4.0, 4.0, 4.0), seed=i)
    root = write_bids(root, TSV_HEADER + "".join(rows), images)
    for sid, content in (bad or {}).items():
        (root / sid / "anat" / f"{sid}_T1w.nii.gz").write_bytes(content.encode())
    return root


def _settings(tmp_path: Path, **datasets: dict) -> DataSettings:
    columns = {"sex": "gender", "diagnosis": "group"}
    return DataSettings(
        name="test",
        datasets={name: {"columns": columns, **ds} for name, ds in datasets.items()},
        preprocess=PreprocessSettings(registration=False, workers=2),
        splits=SplitSettings(ood_sites=["s3"]),
        processed_dir="data/processed",
        qc_dir="reports/qc",
    )


def test_ingest_reports_every_table_problem(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    tsv = TSV_HEADER + (
        "sub-a\t40\tmale\tCN\ts1\n"
        "sub-b\tn/a\tX\tCN\ts1\n"  # missing age, unknown sex code
        "sub-c\t50\tF\tCN\ts1\n"
        "sub-c\t51\tF\tCN\ts1\n"  # duplicate with conflicting age
        "sub-d\t60\tM\tCN\ts1\n"  # no image
    )
    image = mni_phantom(voxel_mm=(4.0, 4.0, 4.0))
    write_bids(root, tsv, {"sub-a": image, "sub-b": image, "sub-c": image, "sub-e": image})
    settings = _settings(tmp_path, ds={"path": str(root), "role": "downstream"})
    scans, issues = ingest(settings, tmp_path)
    kinds = {issue.kind: issue.subjects for issue in issues}
    assert kinds["unknown_sex_code"] == ["sub-b"]
    assert "sub-b" in kinds["missing_labels"]
    assert kinds["duplicate_participants"] == ["sub-c"]
    assert kinds["rows_without_images"] == ["sub-d"]
    assert kinds["images_without_rows"] == ["sub-e"]
    reasons = scans.set_index("subject_id")["exclusion_reason"]
    assert reasons["sub-a"] == "" and reasons["sub-b"] == ""
    assert "conflicting labels" in reasons["sub-c"]
    assert "no T1w image" in reasons["sub-d"]
    assert "no row in participants.tsv" in reasons["sub-e"]
    assert scans.set_index("subject_id").loc["sub-a", "sex"] == "M"


def test_missing_mapped_column_names_the_file_and_column(tmp_path: Path) -> None:
    root = write_bids(tmp_path / "ds", "participant_id\tage\nsub-a\t40\n", {})
    settings = _settings(tmp_path, ds={"path": str(root), "role": "downstream"})
    with pytest.raises(DatasetError, match=r"participants.tsv has no column 'gender'"):
        ingest(settings, tmp_path)


def test_every_mapping_problem_of_every_dataset_comes_in_one_error(tmp_path: Path) -> None:
    """One round-trip: each dataset's missing columns, and each failing dataset, in one message."""
    first = write_bids(tmp_path / "one", "id\tyears\nsub-a\t40\n", {})
    second = write_bids(tmp_path / "two", "participant_id\tage\nsub-a\t40\n", {})
    settings = _settings(
        tmp_path,
        one={"path": str(first), "role": "downstream"},
        two={"path": str(second), "role": "downstream"},
    )
    with pytest.raises(DatasetError) as error:
        ingest(settings, tmp_path)
    message = str(error.value)
    for key, column in (("participant_id", "participant_id"), ("age", "age"), ("sex", "gender")):
        assert f"no column {column!r} (data.datasets.one.columns.{key})" in message
    assert "no column 'gender' (data.datasets.two.columns.sex)" in message
    assert "dataset 'one'" in message and "dataset 'two'" in message


def test_csv_manifest_input(tmp_path: Path) -> None:
    nib.save(mni_phantom(voxel_mm=(4.0, 4.0, 4.0)), tmp_path / "a.nii.gz")
    (tmp_path / "list.csv").write_text("id,img,age,sex\nA,a.nii.gz,33,M\nB,missing.nii.gz,40,F\n")
    settings = DataSettings(
        name="t",
        datasets={
            "c": {
                "format": "csv",
                "path": "list.csv",
                "role": "pool",
                "default_site": "x",
                "columns": {"participant_id": "id", "path": "img", "diagnosis": None, "site": None},
            }
        },
    )
    scans, _ = ingest(settings, tmp_path)
    assert scans.set_index("subject_id").loc["A", "exclusion_reason"] == ""
    assert "does not exist" in scans.set_index("subject_id").loc["B", "exclusion_reason"]


def _scan_table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(n)],
            "dataset": "d",
            "role": "downstream",
            "site": ["a", "b", "c"] * (n // 3) + ["a"] * (n % 3),
            "diagnosis": ["AD", "CN"] * (n // 2) + ["CN"] * (n % 2),
            "sex": "M",
            "exclusion_reason": "",
        }
    )


def test_splits_are_deterministic_stratified_and_hold_out_sites() -> None:
    scans = _scan_table(60)
    settings = SplitSettings(seed=3, ood_sites=["c"])
    split = assign_splits(scans, settings)
    assert split.equals(assign_splits(scans, settings))
    assert not split.equals(assign_splits(scans, SplitSettings(seed=4, ood_sites=["c"])))
    assert set(split[scans["site"] == "c"]) == {"ood_test"}
    in_dist = split[scans["site"] != "c"]
    assert in_dist.value_counts().to_dict() == {"train": 24, "val": 8, "test": 8}
    for _, group in scans[scans["site"] != "c"].groupby(["site", "diagnosis"]):
        assert set(split[group.index]) == {"train", "val", "test"}


def test_pool_subject_in_a_held_out_site_fails_naming_it() -> None:
    scans = _scan_table(9)
    pool = scans.iloc[[2]].assign(dataset="pool", role="pool")  # s2 is at held-out site c
    with pytest.raises(SplitError, match=r"\['s2'\]"):
        assign_splits(pd.concat([scans, pool], ignore_index=True), SplitSettings(ood_sites=["c"]))


def test_pool_subject_in_downstream_is_trained_not_tested() -> None:
    scans = _scan_table(30)
    pool = scans.assign(dataset="pool", role="pool")
    split = assign_splits(pd.concat([scans, pool], ignore_index=True), SplitSettings())
    assert set(split[:30]) == {"train"}


@pytest.mark.slow
def test_end_to_end_stage_output_and_datamodule(tmp_path: Path) -> None:
    _downstream(tmp_path / "raw" / "adni", bad={"sub-d03": "not an image"})
    write_bids(
        tmp_path / "raw" / "pool",
        "participant_id\tage\tgender\tgroup\tsite\nsub-p0\t30\tM\tCN\ts1\n",
        {"sub-p0": mni_phantom("LPS", (4.0, 4.0, 4.0))},
    )
    settings = _settings(
        tmp_path,
        adni={"path": "raw/adni", "role": "downstream"},
        pool={"path": "raw/pool", "role": "pool"},
    )
    metrics = run_preprocess(settings, tmp_path, progress=False)

    manifest = read_manifest(tmp_path / "data/processed/manifest.csv")
    assert list(manifest.columns[:10]) == [
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
    bad = manifest.set_index("subject_id").loc["sub-d03"]
    assert bad["split"] == "excluded" and "not a readable NIfTI" in bad["exclusion_reason"]
    assert manifest.set_index("subject_id").loc["sub-p0", "split"] == "pool"
    assert metrics["exclusions"]["n"] == 1
    assert metrics["counts"]["split"]["pool"] == 1
    volume = load_cached_volume(tmp_path / manifest.set_index("subject_id").loc["sub-p0", "path"])
    assert isinstance(volume, np.memmap) and volume.dtype == np.float16
    assert volume.shape == settings.preprocess.shape
    assert sorted(p.name for p in (tmp_path / "reports/qc").iterdir()) == [
        "montage_adni_s1.png",
        "montage_adni_s2.png",
        "montage_pool_s1.png",
        "qc_table.csv",
    ]
    assert not list((tmp_path / "data").glob(".processed.*"))  # no temporaries left
    # Paths relative to the root: the manifest survives moving the project.
    source = manifest.set_index("subject_id").loc["sub-p0", "source_path"]
    assert source == "raw/pool/sub-p0/anat/sub-p0_T1w.nii.gz"

    task = TaskSettings(
        kind="binary", target="diagnosis", positive="AD", negative="CN", datasets=["adni"]
    )
    rows = select_task_rows(manifest, "ad", task)
    assert "sub-d03" not in set(rows["subject_id"]) and set(rows["target"]) == {0.0, 1.0}
    module = TaskDataModule(
        tmp_path / "data/processed/manifest.csv",
        "ad",
        task,
        batch_size=4,
        num_workers=0,
        augment=AugmentSettings(),
        seed=0,
        root=tmp_path,
    )
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 1, *settings.preprocess.shape)
    assert str(batch["image"].dtype) == "torch.float32"
    assert str(batch["target"].dtype) == "torch.float32" and batch["target"].shape == (4,)
    assert set(batch) == {"image", "target", "subject_id", "site", "dataset"}
    test_ids = [s for b in module.dataloader("test") for s in b["subject_id"]]
    assert test_ids == module.frame("test")["subject_id"].tolist()


def test_task_without_positive_rows_names_the_task() -> None:
    manifest = _scan_table(6).assign(split="train", age=50.0, path="x")
    task = TaskSettings(
        kind="binary", target="diagnosis", positive="PD", negative="CN", datasets=["d"]
    )
    with pytest.raises(ValueError, match="task 'pd'"):
        select_task_rows(manifest, "pd", task)


def _kill_worker_on_crash_files(source: str, out: str, seed: int) -> dict:
    """A scan worker that dies like a segfaulting C library on files named *crash*."""
    if "crash" in Path(source).name:
        os._exit(139)
    return {"exclusion_reason": "", "seconds": 0.0, "source": source}


@pytest.mark.slow
def test_a_scan_that_kills_its_worker_is_excluded_and_the_others_finish(tmp_path: Path) -> None:
    names = ["a", "b", "crash", "c", "d", "e"]
    jobs = [(str(tmp_path / f"{name}.nii.gz"), str(tmp_path / f"{name}.npy")) for name in names]
    results = process_scans(
        jobs,
        PreprocessSettings(registration=False, workers=2),
        progress=False,
        worker=_kill_worker_on_crash_files,
    )
    assert len(results) == len(names)
    for (source, _), result in zip(jobs, results, strict=True):
        if "crash" in source:
            assert result["exclusion_reason"].startswith(source)
            assert "worker process died" in result["exclusion_reason"]
        else:
            assert result == {"exclusion_reason": "", "seconds": 0.0, "source": source}


@pytest.mark.slow
def test_rerun_reuses_unchanged_scans_and_recomputes_changed_ones(tmp_path: Path) -> None:
    root = _downstream(tmp_path / "raw" / "adni", n=6, bad={"sub-d05": "not an image"})
    settings = _settings(tmp_path, adni={"path": "raw/adni", "role": "downstream"})
    first = run_preprocess(settings, tmp_path, progress=False)
    assert first["timing"]["n_computed"] == 6 and first["timing"]["n_reused"] == 0
    before = read_manifest(tmp_path / "data/processed/manifest.csv").set_index("subject_id")

    second = run_preprocess(settings, tmp_path, progress=False)
    assert second["timing"]["n_computed"] == 0 and second["timing"]["n_reused"] == 6
    after = read_manifest(tmp_path / "data/processed/manifest.csv").set_index("subject_id")
    pd.testing.assert_frame_equal(before, after)  # the recorded failure is reused too
    for path in after.loc[after["path"] != "", "path"]:
        assert np.array_equal(load_cached_volume(tmp_path / path), np.load(tmp_path / path))

    # One input file changes: only that scan is recomputed.
    nib.save(mni_phantom("ASL", (4.0, 4.0, 4.0), seed=99), root / "sub-d01/anat/sub-d01_T1w.nii.gz")
    third = run_preprocess(settings, tmp_path, progress=False)
    assert third["timing"]["n_computed"] == 1 and third["timing"]["n_reused"] == 5
    changed = read_manifest(tmp_path / "data/processed/manifest.csv").set_index("subject_id")
    assert changed.loc["sub-d01", "cache_key"] != before.loc["sub-d01", "cache_key"]

    # A preprocessing setting changes: everything is recomputed.
    regridded = settings.model_copy(
        update={"preprocess": PreprocessSettings(registration=False, shape=(36, 44, 36))}
    )
    fourth = run_preprocess(regridded, tmp_path, progress=False)
    assert fourth["timing"]["n_computed"] == 6
    volume = load_cached_volume(tmp_path / changed.loc["sub-d00", "path"])
    assert volume.shape == (36, 44, 36)


def test_bids_ids_without_sub_prefix_still_match_their_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    image = mni_phantom(voxel_mm=(4.0, 4.0, 4.0))
    write_bids(root, TSV_HEADER + "01\t40\tM\tCN\ts1\nsub-02\t41\tF\tCN\ts1\n", {})
    for subject in ("sub-01", "sub-02"):
        (root / subject / "anat").mkdir(parents=True)
        nib.save(image, root / subject / "anat" / f"{subject}_T1w.nii.gz")
    scans, issues = ingest(_settings(tmp_path, ds={"path": str(root), "role": "pool"}), tmp_path)
    assert scans.set_index("subject_id")["exclusion_reason"].to_dict() == {
        "sub-01": "",
        "sub-02": "",
    }
    assert {i.kind: i.subjects for i in issues}["ids_without_sub_prefix"] == ["01"]
