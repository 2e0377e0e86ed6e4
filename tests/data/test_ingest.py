"""Messy inputs never crash `preprocess`: each becomes an excluded row or a reported issue.

Every test writes its own tiny bad input (dangling symlinks, directories named like images,
pipes, symlink loops, impossible ages, ids that climb out of the output folder) and checks what
a user sees: the run completes, the bad scan is excluded with a reason naming its file, and
nothing is written outside the processed folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import pytest
from pydantic import ValidationError

import neurotransfer.data.ingest as ingest_module
from neurotransfer.config import DataSettings, LabelBounds, PreprocessSettings, SplitSettings
from neurotransfer.data import read_manifest
from neurotransfer.data.ingest import DatasetError, ingest
from neurotransfer.stages.preprocess import run_preprocess

from .niftis import mni_phantom

TSV_HEADER = "participant_id\tage\tsex\n"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small valid T1w file, copied wherever a test needs a good scan."""
    path = tmp_path_factory.mktemp("image") / "phantom_T1w.nii.gz"
    nib.save(mni_phantom(voxel_mm=(4.0, 4.0, 4.0)), path)
    return path


def _settings(**datasets: dict) -> DataSettings:
    return DataSettings(
        name="test",
        datasets={
            name: {"columns": {"diagnosis": None, "site": None}, "default_site": "s1", **ds}
            for name, ds in datasets.items()
        },
        preprocess=PreprocessSettings(registration=False, workers=1),
        splits=SplitSettings(),
    )


def _bids(root: Path, rows: dict[str, str], images: dict[str, Path]) -> Path:
    """A BIDS folder: participants.tsv rows ``id -> "age\\tsex"`` and sub-*/anat images copied
    from the given files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text(
        TSV_HEADER + "".join(f"{sid}\t{labels}\n" for sid, labels in rows.items())
    )
    for sid, source in images.items():
        (root / sid / "anat").mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / sid / "anat" / f"{sid}_T1w.nii.gz")
    return root


def _anat(root: Path, sid: str) -> Path:
    """Where sub-<id>'s T1w image goes (its folder is created)."""
    (root / sid / "anat").mkdir(parents=True, exist_ok=True)
    return root / sid / "anat" / f"{sid}_T1w.nii.gz"


def _npy_files_outside(folder: Path, top: Path) -> list[Path]:
    return [p for p in top.rglob("*.npy") if not p.resolve().is_relative_to(folder.resolve())]


def test_broken_image_files_are_excluded_and_the_run_completes(
    tmp_path: Path, image_file: Path
) -> None:
    root = _bids(
        tmp_path / "raw" / "ds",
        {f"sub-{name}": "40\tM" for name in ("ok", "dangling", "dir", "loop", "fifo", "ext")}
        | {"sub-neg": "-3\tF"},
        {"sub-ok": image_file, "sub-neg": image_file},
    )
    _anat(root, "sub-dangling").symlink_to(root / "nowhere.nii.gz")
    _anat(root, "sub-dir").mkdir()
    loop = _anat(root, "sub-loop")
    loop.symlink_to(loop.name)
    os.mkfifo(_anat(root, "sub-fifo"))  # would hang a reader
    outside = tmp_path / "elsewhere" / "secret.nii.gz"
    outside.parent.mkdir()
    shutil.copy(image_file, outside)
    _anat(root, "sub-ext").symlink_to(outside)
    settings = _settings(ds={"path": str(root.relative_to(tmp_path)), "role": "downstream"})

    metrics = run_preprocess(settings, tmp_path, progress=False)

    manifest = read_manifest(tmp_path / "data/processed/manifest.csv").set_index("subject_id")
    reasons = manifest["exclusion_reason"]
    expected = {
        "sub-dangling": "dangling symlink",
        "sub-dir": "is a directory",
        "sub-loop": "symlink loop",
        "sub-fifo": "not a regular file",
        "sub-ext": "symlink leading outside the dataset folder",
    }
    for sid, kind in expected.items():
        assert manifest.loc[sid, "split"] == "excluded"
        assert kind in reasons[sid] and f"{sid}_T1w.nii.gz" in reasons[sid], reasons[sid]
        assert manifest.loc[sid, "path"] == ""
    assert str(outside) in reasons["sub-ext"] and "follow_external_symlinks" in reasons["sub-ext"]
    # Safe ids keep their paths; the impossible age is reported and blanked, the scan kept.
    assert manifest.loc["sub-ok", "path"] == "data/processed/ds/sub-ok.npy"
    assert manifest.loc["sub-ok", "exclusion_reason"] == ""
    assert manifest.loc["sub-neg", "exclusion_reason"] == ""
    assert manifest.loc["sub-neg", "split"] in {"train", "val", "test"}
    assert manifest["age"].isna()["sub-neg"] and manifest.loc["sub-ok", "age"] == 40.0
    issues = {issue["kind"]: issue for issue in metrics["issues"]}
    assert issues["implausible_age"]["subjects"] == ["sub-neg"]
    assert "-3" in issues["implausible_age"]["message"]
    assert issues["external_symlink"]["subjects"] == ["sub-ext"]
    assert metrics["exclusions"]["n"] == len(expected)
    assert metrics["exclusions"]["by_reason"]["symlink loop"] == 1
    json.dumps(metrics)  # the stage writes it as JSON


def test_unreadable_image_is_excluded_naming_the_file(
    tmp_path: Path, image_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _bids(
        tmp_path / "ds",
        {"sub-a": "40\tM", "sub-b": "41\tF"},
        {"sub-a": image_file, "sub-b": image_file},
    )
    locked = root / "sub-b" / "anat" / "sub-b_T1w.nii.gz"
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads mode-000 files: refuse this one as the kernel would
        real_open = os.open

        def refuse_locked(path: object, flags: int, *args: object, **kwargs: object) -> int:
            if Path(os.fspath(path)).resolve() == locked.resolve():
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse_locked)
    scans, _ = ingest(_settings(ds={"path": str(root), "role": "pool"}), tmp_path)
    reasons = scans.set_index("subject_id")["exclusion_reason"]
    assert reasons["sub-a"] == ""
    assert reasons["sub-b"] == f"{locked}: cannot be read (Permission denied)"


def test_file_vanishing_before_hashing_excludes_only_that_scan(
    tmp_path: Path, image_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _bids(
        tmp_path / "raw",
        {"sub-a": "40\tM", "sub-gone": "41\tF"},
        {"sub-a": image_file, "sub-gone": image_file},
    )
    gone = root / "sub-gone" / "anat" / "sub-gone_T1w.nii.gz"

    def ingest_then_delete(settings: DataSettings, where: Path) -> tuple:
        found = ingest(settings, where)
        gone.unlink()  # deleted by someone else between ingest and cache-key hashing
        return found

    monkeypatch.setattr(ingest_module, "ingest", ingest_then_delete)
    metrics = run_preprocess(
        _settings(ds={"path": "raw", "role": "pool"}), tmp_path, progress=False
    )
    manifest = read_manifest(tmp_path / "data/processed/manifest.csv").set_index("subject_id")
    assert manifest.loc["sub-a", "split"] == "pool" and manifest.loc["sub-a", "path"]
    assert manifest.loc["sub-gone", "split"] == "excluded"
    assert manifest.loc["sub-gone", "exclusion_reason"].startswith(f"{gone}: cannot be read")
    assert metrics["exclusions"]["n"] == 1


def test_csv_ids_cannot_write_outside_the_processed_folder(
    tmp_path: Path, image_file: Path
) -> None:
    repo = tmp_path / "a" / "b" / "repo"
    (repo / "lists").mkdir(parents=True)
    shutil.copy(image_file, repo / "lists" / "scan.nii.gz")
    (repo / "lists" / "list.csv").write_text(
        "id,img,age,sex\n"
        "A,scan.nii.gz,33,M\n"
        "../../../../x,scan.nii.gz,40,F\n"
        "/abs,scan.nii.gz,41,F\n"
        ".hidden,scan.nii.gz,42,F\n"
        ",scan.nii.gz,43,M\n"
    )
    settings = _settings(
        c={
            "format": "csv",
            "path": "lists/list.csv",
            "role": "pool",
            "columns": {"participant_id": "id", "path": "img", "diagnosis": None, "site": None},
        }
    )
    metrics = run_preprocess(settings, repo, progress=False)

    assert _npy_files_outside(repo / "data" / "processed", tmp_path) == []
    manifest = read_manifest(repo / "data/processed/manifest.csv").set_index("scan_id")
    assert manifest.loc["A", "path"] == "data/processed/c/A.npy"
    assert (repo / "data/processed/c/A.npy").is_file()
    for unsafe in ("../../../../x", "/abs", ".hidden", ""):
        row = manifest.loc[unsafe]
        assert row["split"] == "excluded" and row["path"] == ""
        assert "unsafe id for a cache file name" in row["exclusion_reason"]
        assert "rename it in list.csv" in row["exclusion_reason"]
    issues = {issue["kind"]: issue["subjects"] for issue in metrics["issues"]}
    assert issues["unsafe_ids"] == ["../../../../x", "/abs", ".hidden", ""]


def test_stray_and_repeated_bids_image_files_are_reported_not_fatal(
    tmp_path: Path, image_file: Path
) -> None:
    root = _bids(tmp_path / "ds", {"sub-a": "40\tM"}, {"sub-a": image_file})
    anat = root / "sub-a" / "anat"
    shutil.copy(image_file, anat / "sub-a_T1w.nii")  # the same scan id as sub-a_T1w.nii.gz
    shutil.copy(image_file, anat / "sub-a_T1w.nii.gz.part")  # an interrupted download
    scans, issues = ingest(_settings(ds={"path": str(root), "role": "pool"}), tmp_path)
    assert scans["scan_id"].tolist() == ["sub-a"]
    assert scans["source_path"].tolist() == [str(anat / "sub-a_T1w.nii")]  # first by name
    by_kind = {issue.kind: issue for issue in issues}
    assert by_kind["duplicate_images"].subjects == ["sub-a"]
    assert "sub-a/anat/sub-a_T1w.nii.gz" in by_kind["duplicate_images"].message
    assert "sub-a_T1w.nii.gz.part" in by_kind["unrecognised_image_names"].message


def test_an_output_path_leaving_the_processed_folder_is_never_written(
    tmp_path: Path, image_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard, should an unsafe id ever get past ingest: resolve and compare."""
    repo = tmp_path / "repo"
    _bids(repo / "raw", {"sub-a": "40\tM"}, {"sub-a": image_file})

    def ingest_letting_through(settings: DataSettings, where: Path) -> tuple:
        scans, issues = ingest(settings, where)
        scans.loc[0, "scan_id"] = "../../../escaped"
        return scans, issues

    monkeypatch.setattr(ingest_module, "ingest", ingest_letting_through)
    run_preprocess(_settings(ds={"path": "raw", "role": "pool"}), repo, progress=False)
    assert _npy_files_outside(repo / "data" / "processed", tmp_path) == []
    row = read_manifest(repo / "data/processed/manifest.csv").iloc[0]
    assert row["split"] == "excluded" and row["path"] == ""
    assert "output path outside the processed folder" in row["exclusion_reason"]


def test_repeated_csv_ids_get_scan_ids_that_never_clash(tmp_path: Path, image_file: Path) -> None:
    shutil.copy(image_file, tmp_path / "a.nii.gz")
    (tmp_path / "list.csv").write_text(
        "id,img,age,sex\nA,a.nii.gz,33,M\nA,a.nii.gz,33,M\nA_2,a.nii.gz,50,F\nB,n/a,40,F\n"
    )
    settings = _settings(
        c={
            "format": "csv",
            "path": "list.csv",
            "role": "pool",
            "columns": {"participant_id": "id", "path": "img", "diagnosis": None, "site": None},
        }
    )
    scans, _ = ingest(settings, tmp_path)
    by_scan = scans.set_index("scan_id")
    assert by_scan["subject_id"].to_dict() == {"A": "A", "A_3": "A", "A_2": "A_2", "B": "B"}
    assert by_scan.loc["A_3", "exclusion_reason"] == ""
    assert by_scan.loc["B", "exclusion_reason"].endswith("no image path given (row of B)")


def test_a_subject_id_in_two_datasets_stops_naming_both_and_the_prefix_fixes_it(
    tmp_path: Path, image_file: Path
) -> None:
    for name in ("site1", "site2"):
        _bids(
            tmp_path / name,
            {"sub-01": "60\tM", f"sub-{name}": "70\tF"},
            {"sub-01": image_file, f"sub-{name}": image_file},
        )
    both = {
        name: {"format": "bids", "path": name, "role": "downstream"} for name in ("site1", "site2")
    }
    with pytest.raises(DatasetError) as error:
        ingest(_settings(**both), tmp_path)
    message = str(error.value)
    assert "datasets site1, site2: sub-01." in message
    assert "data.datasets.site2.id_prefix" in message

    both["site2"]["id_prefix"] = "site2-"
    scans, _ = ingest(_settings(**both), tmp_path)
    assert sorted(scans.loc[scans["dataset"] == "site2", "subject_id"]) == [
        "site2-sub-01",
        "site2-sub-site2",
    ]
    assert scans["subject_id"].is_unique


def test_external_symlinks_followed_only_when_allowed_and_always_reported(
    tmp_path: Path, image_file: Path
) -> None:
    root = _bids(tmp_path / "ds", {"sub-in": "40\tM", "sub-ext": "50\tF"}, {})
    shutil.copy(image_file, root / "stored.nii.gz")  # e.g. a git-annex object in the dataset
    _anat(root, "sub-in").symlink_to(root / "stored.nii.gz")
    _anat(root, "sub-ext").symlink_to(image_file)

    refused, refused_issues = ingest(_settings(ds={"path": str(root), "role": "pool"}), tmp_path)
    reasons = refused.set_index("subject_id")["exclusion_reason"]
    assert reasons["sub-in"] == ""
    assert "symlink leading outside the dataset folder" in reasons["sub-ext"]
    assert {i.kind: i.subjects for i in refused_issues}["external_symlink"] == ["sub-ext"]

    allowed = _settings(ds={"path": str(root), "role": "pool", "follow_external_symlinks": True})
    followed, issues = ingest(allowed, tmp_path)
    assert set(followed["exclusion_reason"]) == {""}
    external = [i for i in issues if i.kind == "external_symlink"]
    assert [i.subjects for i in external] == [["sub-ext"]]
    assert "followed" in external[0].message

    # A dataset folder that is itself a symlink (data on another disk) is no external link.
    (tmp_path / "linked").symlink_to(root)
    linked, issues = ingest(_settings(ds={"path": "linked", "role": "pool"}), tmp_path)
    assert linked.set_index("subject_id").loc["sub-in", "exclusion_reason"] == ""
    assert [i.subjects for i in issues if i.kind == "external_symlink"] == [["sub-ext"]]


def test_csv_listing_an_absolute_path_elsewhere_is_taken_as_written(
    tmp_path: Path, image_file: Path
) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "list.csv").write_text(
        f"id,img,age,sex\nA,{image_file},33,M\nB,link.nii.gz,40,F\n"
    )
    (tmp_path / "lists" / "link.nii.gz").symlink_to(image_file)
    settings = _settings(
        c={
            "format": "csv",
            "path": "lists/list.csv",
            "role": "pool",
            "columns": {"participant_id": "id", "path": "img", "diagnosis": None, "site": None},
        }
    )
    scans, _ = ingest(settings, tmp_path)
    reasons = scans.set_index("subject_id")["exclusion_reason"]
    assert reasons["A"] == ""  # the manifest's author chose that file
    assert "symlink leading outside the dataset folder" in reasons["B"]


def test_age_bounds_are_settings_and_apply_to_every_dataset(
    tmp_path: Path, image_file: Path
) -> None:
    rows = {
        "sub-a": "-3\tM",
        "sub-b": "150\tF",
        "sub-c": "95\tM",
        "sub-d": "0\tF",
        "sub-e": "inf\tM",
    }
    root = _bids(tmp_path / "ds", rows, {sid: image_file for sid in rows})
    scans, issues = ingest(_settings(ds={"path": str(root), "role": "pool"}), tmp_path)
    implausible = {i.kind: i.subjects for i in issues}["implausible_age"]
    assert implausible == ["sub-a", "sub-b", "sub-e"]
    ages = scans.set_index("subject_id")["age"]
    assert ages.isna().to_dict() == {
        "sub-a": True,
        "sub-b": True,
        "sub-c": False,
        "sub-d": False,
        "sub-e": True,
    }
    assert set(scans["exclusion_reason"]) == {""}

    strict = _settings(ds={"path": str(root), "role": "pool"}).model_copy(
        update={"label_bounds": LabelBounds(age_min=18, age_max=90)}
    )
    _, issues = ingest(strict, tmp_path)
    assert {i.kind: i.subjects for i in issues}["implausible_age"] == [
        "sub-a",
        "sub-b",
        "sub-c",
        "sub-d",
        "sub-e",
    ]


def test_bad_label_bounds_and_unsafe_names_fail_at_settings(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="age_min 90 must be below age_max 18"):
        LabelBounds(age_min=90, age_max=18)
    with pytest.raises(ValidationError, match=r"dataset name '\.\./up' contains '/'"):
        _settings(**{"../up": {"path": "x", "role": "pool"}})
    with pytest.raises(ValidationError, match=r"id_prefix 'a/' contains '/'"):
        _settings(ds={"path": "x", "role": "pool", "id_prefix": "a/"})
