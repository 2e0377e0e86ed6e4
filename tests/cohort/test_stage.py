"""The `cohort` stage: BIDS datasets, ground truth, montages and metrics; deterministic;
atomic (an interrupted run leaves the previous cohort as it was)."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurotransfer.cohort import anatomy as anatomy_module
from neurotransfer.cohort import generate, scanner
from neurotransfer.cohort.anatomy import Anatomy
from neurotransfer.cohort.generate import plan_cohort, simulate_subject
from neurotransfer.config import CohortSettings, Settings, settings_from_dict
from neurotransfer.stages import cohort as cohort_stage

from .conftest import SMALL_COUNTS


def test_writes_one_bids_dataset_per_cohort_dataset(small_cohort: tuple[Path, Settings]) -> None:
    root, settings = small_cohort
    all_ids: list[str] = []
    for dataset, spec in settings.cohort.datasets.items():
        folder = root / "data/raw" / dataset
        description = json.loads((folder / "dataset_description.json").read_text())
        assert description["BIDSVersion"] and description["DatasetType"] == "raw"
        assert (folder / "participants.json").is_file()
        table = pd.read_csv(folder / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
        assert list(table.columns) == ["participant_id", "age", "sex", "diagnosis", "site"]
        assert len(table) == spec.n_subjects
        assert set(table["site"]) == set(spec.sites)
        assert table["age"].astype(float).between(*spec.age_range).all()
        assert set(table["sex"]) <= {"M", "F"}
        # the pool records no diagnosis (UK Biobank-like); downstream cohorts have CN + patients
        expected = {"none": {"n/a"}, "AD": {"CN", "AD"}, "PD": {"CN", "PD"}}[spec.disease]
        assert set(table["diagnosis"]) == expected
        for pid in table["participant_id"]:
            assert pid.startswith(f"sub-{dataset}")
            scans = list((folder / pid / "anat").glob(f"{pid}_T1w.nii*"))
            assert len(scans) == 1, pid
        all_ids += list(table["participant_id"])
    assert len(all_ids) == len(set(all_ids)), "participant ids must be unique across datasets"


def test_writes_ground_truth_montages_and_metrics(
    small_cohort: tuple[Path, Settings], anatomy: Anatomy
) -> None:
    root, settings = small_cohort
    truth_dir = root / "data/phantom_truth"
    truth = pd.read_csv(truth_dir / "subjects.csv")
    assert len(truth) == sum(SMALL_COUNTS.values())
    for column in (
        "head_scale",
        "disease_severity",
        "medial_temporal_gm_loss",
        "ventricle_expansion_mm",
        "putamen_gm_loss",
        "icv_ml",
        "ventricle_csf_ml",
        "medial_temporal_gm_ml",
    ):
        assert truth[column].notna().all(), column
    assert (truth.loc[truth["dataset"] == "pool", "diagnosis"] == "CN").all()
    patients = truth["diagnosis"].isin(["AD", "PD"])
    assert (truth.loc[patients, "disease_severity"] > 0).all()
    assert (truth.loc[~patients, "disease_severity"] == 0).all()

    sites = json.loads((truth_dir / "sites.json").read_text())
    assert set(sites) == set(settings.cohort.sites)
    assert sites["siteC"]["orientation"] == "PSR"
    regions = json.loads((truth_dir / "regions.json").read_text())
    assert set(regions["labels"]) == set(anatomy_module.REGIONS)
    labels = nib.load(truth_dir / "regions_mni.nii.gz")
    assert np.allclose(labels.affine, anatomy.full_affine)
    assert set(np.unique(np.asarray(labels.dataobj))) == {0, *regions["labels"].values()}

    pngs = sorted((root / "reports/cohort").glob("site-*.png"))
    assert [p.name for p in pngs] == sorted(f"site-{name}.png" for name in settings.cohort.sites)
    picture = matplotlib.image.imread(pngs[0])
    assert picture.shape[0] > 300 and picture[..., :3].std() > 0.05  # rows of brains, not blank

    metrics = json.loads((root / "metrics/cohort.json").read_text())
    assert metrics["n_subjects"] == sum(SMALL_COUNTS.values())
    assert metrics["n_sites"] == len(settings.cohort.sites)
    assert sum(metrics["counts"]["adni"]["siteE"].values()) == 2
    assert metrics["counts"]["ppmi"]["siteF"] == {"CN": 1, "PD": 1}
    assert metrics["generation_seconds"] > 0
    # nothing temporary left beside the outputs
    for folder in (root, root / "data", root / "data/raw", root / "reports", root / "metrics"):
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], folder


def test_generation_is_deterministic_whatever_the_workers(
    small_cohort: tuple[Path, Settings], anatomy: Anatomy
) -> None:
    root, settings = small_cohort
    cohort = settings.cohort
    plans = plan_cohort(cohort)
    assert plans == plan_cohort(cohort)
    # the stage ran two worker processes; regenerate some subjects here, in this one
    for plan in plans[::5]:
        scan = simulate_subject(plan, cohort, anatomy)
        regenerated = scanner.nifti_bytes(scan.image, cohort.sites[plan.site].compressed)
        assert regenerated == (root / "data/raw" / plan.relative_path).read_bytes(), plan
    # another seed: other people, other scans
    other = cohort.model_copy(update={"seed": cohort.seed + 1})
    assert [p.age for p in plan_cohort(other)] != [p.age for p in plans]
    first = plans[0]
    other_scan = simulate_subject(first, other, anatomy)
    written = (root / "data/raw" / first.relative_path).read_bytes()
    assert scanner.nifti_bytes(other_scan.image, cohort.sites[first.site].compressed) != written


def test_an_interrupted_run_leaves_the_previous_cohort(
    small_cohort: tuple[Path, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, settings = small_cohort
    for name in ("data", "reports", "metrics"):
        shutil.copytree(source / name, tmp_path / name)
    before = {p.relative_to(tmp_path): p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}

    def killed_halfway(cohort: CohortSettings, out_root: Path) -> None:
        (out_root / "pool" / "sub-pool0001" / "anat").mkdir(parents=True)
        (out_root / "pool" / "sub-pool0001" / "anat" / "sub-pool0001_T1w.nii").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "write_cohort", killed_halfway)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cohort_stage.run(settings, argparse.Namespace())
    after = {p.relative_to(tmp_path): p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_real_data_that_reads_no_phantom_skips_the_generation(
    make_params: Callable[..., dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data=ixi_hh-like settings (every dataset outside cohort.out_dir): a note in each output,
    the reason in the metrics, no subject generated."""
    raw = make_params()
    raw["data"]["name"] = "real"
    raw["data"]["datasets"] = {
        "site1": {"format": "bids", "path": str(tmp_path / "elsewhere"), "role": "downstream"}
    }
    raw["tasks"] = {"age": {"kind": "regression", "target": "age", "datasets": ["site1"]}}
    raw["scaling"]["tasks"] = []
    settings = settings_from_dict(raw)
    assert cohort_stage.phantom_readers(settings) == []

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the phantom was generated")

    monkeypatch.setattr(generate, "write_cohort", never)
    monkeypatch.chdir(tmp_path)
    cohort_stage.run(settings, argparse.Namespace())
    for folder in ("data/raw", "data/phantom_truth", "reports/cohort"):
        assert [p.name for p in (tmp_path / folder).iterdir()] == ["SKIPPED.md"]
    recorded = json.loads((tmp_path / "metrics/cohort.json").read_text())
    assert "no dataset of data 'real' lies under cohort.out_dir" in recorded["skipped"]


def test_the_phantom_data_reads_the_cohort(make_params: Callable[..., dict[str, Any]]) -> None:
    settings = settings_from_dict(make_params())
    assert cohort_stage.phantom_readers(settings) == ["adni", "pool", "ppmi"]
