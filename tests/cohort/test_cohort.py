"""The phantom cohort: BIDS layout, simulated effects in the right direction, site variety,
world coordinates, determinism, and clear errors on bad settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from neurotransfer.cohort import anatomy, scanner
from neurotransfer.cohort.generate import SubjectPlan, plan_cohort, simulate_subject
from neurotransfer.compose import compose_params
from neurotransfer.config import CohortSettings, Settings, SettingsError, settings_from_dict
from neurotransfer.stages import cohort as cohort_stage

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_COUNTS = {"pool": 9, "adni": 9, "ppmi": 9}


def _params(counts: dict[str, int] = TINY_COUNTS) -> dict[str, Any]:
    raw = yaml.safe_load(compose_params(conf_dir=REPO_ROOT / "conf"))
    for name, n in counts.items():
        raw["cohort"]["datasets"][name]["n_subjects"] = n
    return raw


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    """A 27-subject cohort over all six sites, written by the stage as `dvc repro` runs it."""
    root = tmp_path_factory.mktemp("cohort")
    settings = settings_from_dict(_params())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cohort_stage.run(settings, argparse.Namespace())
    return root, settings


def _truth(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "data/phantom_truth/subjects.csv")


def test_writes_bids_datasets_truth_montages_and_metrics(tiny: tuple[Path, Settings]) -> None:
    root, settings = tiny
    cohort = settings.cohort
    all_ids: list[str] = []
    for dataset, spec in cohort.datasets.items():
        folder = root / "data/raw" / dataset
        assert json.loads((folder / "dataset_description.json").read_text())["BIDSVersion"]
        table = pd.read_csv(folder / "participants.tsv", sep="\t")
        assert list(table.columns) == ["participant_id", "age", "sex", "diagnosis", "site"]
        assert len(table) == spec.n_subjects
        assert set(table["site"]) == set(spec.sites)
        assert table["age"].between(*spec.age_range).all()
        assert set(table["sex"]) <= {"M", "F"}
        expected = {"none": {"CN"}, "AD": {"CN", "AD"}, "PD": {"CN", "PD"}}[spec.disease]
        assert set(table["diagnosis"]) == expected
        for pid in table["participant_id"]:
            scans = list((folder / pid / "anat").glob(f"{pid}_T1w.nii*"))
            assert len(scans) == 1, pid
        all_ids += list(table["participant_id"])
    assert len(all_ids) == len(set(all_ids)), "participant ids must be unique across datasets"

    truth = _truth(root)
    assert sorted(truth["participant_id"]) == sorted(all_ids)
    sites = json.loads((root / "data/phantom_truth/sites.json").read_text())
    assert set(sites) == set(cohort.sites)
    pngs = sorted(p.name for p in (root / "reports/cohort").glob("site-*.png"))
    assert pngs == sorted(f"site-{name}.png" for name in cohort.sites)
    metrics = json.loads((root / "metrics/cohort.json").read_text())
    assert metrics["n_subjects"] == sum(TINY_COUNTS.values())
    assert (
        metrics["counts"]["adni"]["siteE"]["CN"] + metrics["counts"]["adni"]["siteE"].get("AD", 0)
        == 3
    )
    assert metrics["generation_seconds"] > 0
    # Nothing half-written or temporary left beside the outputs.
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(".")]


def test_orientations_dtypes_and_formats_follow_the_sites(tiny: tuple[Path, Settings]) -> None:
    root, settings = tiny
    truth = _truth(root)
    seen_codes, seen_suffixes = set(), set()
    for _, row in truth.groupby("site").head(1).iterrows():
        site = settings.cohort.sites[row["site"]]
        path = root / "data/raw" / row["path"]
        img = nib.load(path)
        code = "".join(nib.aff2axcodes(img.affine))
        assert code == site.orientation, row["site"]
        assert img.get_data_dtype() == np.dtype(site.dtype), row["site"]
        # voxel_size is given along the world axes (L-R, P-A, I-S), whatever the storage order.
        canonical_zooms = nib.as_closest_canonical(img).header.get_zooms()
        assert np.allclose(canonical_zooms, site.voxel_size, atol=1e-4)
        assert path.name.endswith(".nii.gz") == site.compressed
        if site.compressed:  # gzip header without a timestamp: bytes depend on data only
            assert path.read_bytes()[4:8] == b"\0\0\0\0"
        if site.dtype == "uint8":
            # Stored as bytes with a scale factor (nibabel moves scl_slope into the proxy).
            assert img.dataobj.slope != 1.0
            assert len(np.unique(np.asarray(img.dataobj.get_unscaled()))) > 50
        seen_codes.add(code)
        seen_suffixes.add(path.suffix)
    assert len(seen_codes) == len(settings.cohort.sites)
    assert seen_suffixes == {".nii", ".gz"}


def test_every_site_lands_on_the_mni_template_by_world_coordinates(
    tiny: tuple[Path, Settings],
) -> None:
    """Reoriented to RAS and resampled by affine onto the template grid, no registration."""
    from nilearn import datasets
    from nilearn.image import resample_to_img

    mni = datasets.load_mni152_template(resolution=2)
    reference = mni.get_fdata().ravel()
    template = anatomy.load_template(2)
    root, settings = tiny
    truth = _truth(root)
    for _, row in truth.groupby("site").head(1).iterrows():
        img = nib.as_closest_canonical(nib.load(root / "data/raw" / row["path"]))
        # The canonical grid is exactly the RAS grid the anatomy was simulated on, in MNI mm.
        site_affine, _ = scanner.site_grid(template, settings.cohort.sites[row["site"]].voxel_size)
        assert np.allclose(img.affine, site_affine, atol=1e-4), row["site"]
        on_grid = resample_to_img(
            img, mni, interpolation="linear", force_resample=True, copy_header=True
        )
        corr = np.corrcoef(on_grid.get_fdata().ravel(), reference)[0, 1]
        assert corr > 0.85, f"{row['site']}: correlation with MNI152 {corr:.2f}"
        # A scan shifted by 2 cm (a broken affine) would not match the template this well.
        shifted_affine = img.affine.copy()
        shifted_affine[1, 3] += 20.0
        shifted = nib.Nifti1Image(np.asarray(img.dataobj), shifted_affine)
        moved = resample_to_img(
            shifted, mni, interpolation="linear", force_resample=True, copy_header=True
        )
        assert np.corrcoef(moved.get_fdata().ravel(), reference)[0, 1] < corr - 0.1


def test_site_intensity_statistics_differ(tiny: tuple[Path, Settings]) -> None:
    root, _ = tiny
    truth = _truth(root)
    contrast: dict[str, float] = {}
    for site_name, rows in truth.groupby("site"):
        ratios = []
        for path in rows["path"]:
            data = np.asarray(nib.load(root / "data/raw" / path).get_fdata(), np.float32)
            brain = data[data > np.percentile(data, 60)]
            # Spread of in-brain intensities relative to their level: contrast, bias and noise.
            ratios.append(np.percentile(brain, 90) / np.percentile(brain, 30))
        contrast[str(site_name)] = float(np.mean(ratios))
    # siteB has the strongest GM/WM contrast (1.25), siteC the weakest (0.85).
    assert contrast["siteB"] > contrast["siteC"] * 1.05, contrast
    scales = {
        site: float(np.asarray(nib.load(root / "data/raw" / rows["path"].iloc[0]).dataobj).max())
        for site, rows in truth.groupby("site")
    }
    assert scales["siteD"] > 10 * scales["siteB"], scales  # intensity_scale 3000 vs 1


def _twin(plan: SubjectPlan, **changes: Any) -> SubjectPlan:
    return dataclasses.replace(plan, **changes)


@pytest.fixture(scope="module")
def cohort_and_template() -> tuple[CohortSettings, anatomy.Template, SubjectPlan]:
    cohort = settings_from_dict(_params()).cohort
    template = anatomy.load_template(cohort.template_resolution_mm)
    plan = next(p for p in plan_cohort(cohort) if p.dataset == "adni" and p.site == "siteA")
    return cohort, template, plan


def _truth_of(cohort: CohortSettings, template: anatomy.Template, plan: SubjectPlan) -> dict:
    return simulate_subject(plan, cohort, template)[1]


def test_ageing_enlarges_ventricles_and_thins_grey_matter(cohort_and_template: tuple) -> None:
    cohort, template, plan = cohort_and_template
    young = _truth_of(cohort, template, _twin(plan, age=25.0, diagnosis="CN"))
    old = _truth_of(cohort, template, _twin(plan, age=85.0, diagnosis="CN"))
    assert old["ventricle_csf_ml"] > 1.5 * young["ventricle_csf_ml"]
    assert old["gm_ml"] < 0.9 * young["gm_ml"]
    assert old["medial_temporal_gm_ml"] < young["medial_temporal_gm_ml"]
    assert old["csf_ml"] > young["csf_ml"]
    # Same person, same skull: the enlarging ventricles barely move the brain's outline.
    assert old["icv_ml"] == pytest.approx(young["icv_ml"], rel=0.02)


def test_ventricles_grow_with_age_across_the_cohort(tiny: tuple[Path, Settings]) -> None:
    truth = _truth(tiny[0])
    cn = truth[truth["diagnosis"] == "CN"]
    assert np.corrcoef(cn["age"], cn["ventricle_csf_ml"] / cn["icv_ml"])[0, 1] > 0.3


def test_ad_loses_medial_temporal_grey_matter_against_an_age_matched_control(
    cohort_and_template: tuple,
) -> None:
    cohort, template, plan = cohort_and_template
    cn_plan = _twin(plan, age=72.0, diagnosis="CN")
    ad_plan = _twin(plan, age=72.0, diagnosis="AD")
    cn_img, cn, _ = simulate_subject(cn_plan, cohort, template)
    ad_img, ad, _ = simulate_subject(ad_plan, cohort, template)
    assert ad["medial_temporal_gm_ml"] < 0.9 * cn["medial_temporal_gm_ml"]
    assert ad["ventricle_csf_ml"] > cn["ventricle_csf_ml"]
    # Visible in the image too: the medial temporal lobes are darker (GM replaced by CSF).
    region = anatomy.region_weight(
        anatomy.MEDIAL_TEMPORAL, scanner.site_grid(template, (2.0, 2.0, 2.0))[1]
    )
    inside = region > 0.5
    cn_mean = np.asarray(cn_img.dataobj, np.float32)[inside].mean()
    ad_mean = np.asarray(ad_img.dataobj, np.float32)[inside].mean()
    assert ad_mean < 0.97 * cn_mean


def test_pd_change_is_subcortical_and_subtle(cohort_and_template: tuple) -> None:
    cohort, template, plan = cohort_and_template
    cn = _truth_of(cohort, template, _twin(plan, dataset="ppmi", age=65.0, diagnosis="CN"))
    pd_ = _truth_of(cohort, template, _twin(plan, dataset="ppmi", age=65.0, diagnosis="PD"))
    putamen_change = pd_["putamen_gm_ml"] / cn["putamen_gm_ml"]
    assert 0.85 < putamen_change < 0.99
    assert pd_["midbrain_tissue_ml"] < cn["midbrain_tissue_ml"]
    # Cortex and medial temporal lobe are untouched: PD vs CN is hard on T1.
    assert pd_["medial_temporal_gm_ml"] == pytest.approx(cn["medial_temporal_gm_ml"], rel=0.02)


def test_men_have_larger_heads_on_average() -> None:
    cohort = settings_from_dict(_params({"pool": 200, "adni": 9, "ppmi": 9})).cohort
    from neurotransfer.cohort.generate import draw_latents

    scales: dict[str, list[float]] = {"M": [], "F": []}
    for plan in plan_cohort(cohort)[:200]:
        rng = np.random.default_rng(plan.index)
        scales[plan.sex].append(draw_latents(plan, 1.0, rng).head_scale)
    assert np.mean(scales["M"]) > np.mean(scales["F"]) + 0.02


def test_generation_is_deterministic_and_independent_of_workers(
    tiny: tuple[Path, Settings], cohort_and_template: tuple
) -> None:
    root, settings = tiny
    cohort, template, _ = cohort_and_template
    assert plan_cohort(cohort) == plan_cohort(cohort)
    # The stage ran with two worker processes; regenerate some subjects here, in one process.
    for plan in plan_cohort(settings.cohort)[::7]:
        img, _, _ = simulate_subject(plan, settings.cohort, template)
        written = (root / "data/raw" / plan.relative_path).read_bytes()
        regenerated = scanner.nifti_bytes(img, settings.cohort.sites[plan.site].compressed)
        assert regenerated == written, plan.participant_id
    # Another seed gives another cohort.
    first = plan_cohort(settings.cohort)[0]
    other = settings.cohort.model_copy(update={"seed": settings.cohort.seed + 1})
    img_other, _, _ = simulate_subject(first, other, template)
    compressed = settings.cohort.sites[first.site].compressed
    written = (root / "data/raw" / first.relative_path).read_bytes()
    assert scanner.nifti_bytes(img_other, compressed) != written


def _with(raw: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("cohort", "datasets", "adni", "n_subjects"), -5, "cohort.datasets.adni.n_subjects"),
        (("cohort", "datasets", "ppmi", "sites"), ["siteB", "siteZ"], "siteZ"),
        (("cohort", "sites", "siteA", "voxel_size"), [2.0, 2.0, 20.0], "cohort.sites.siteA"),
        (("cohort", "sites", "siteA", "voxel_size"), [2.0, 2.0], "cohort.sites.siteA.voxel_size"),
        (("cohort", "sites", "siteC", "orientation"), "RAX", "cohort.sites.siteC.orientation"),
        (("cohort", "sites", "siteC", "dtype"), "int64", "cohort.sites.siteC.dtype"),
        (("cohort", "datasets", "pool", "n_subjects"), 2, "fewer than its 3 sites"),
        (("cohort", "datasets", "pool", "disease"), "AD", "healthy subjects only"),
    ],
)
def test_bad_settings_fail_naming_the_key(path: tuple, value: Any, named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        settings_from_dict(_with(_params(), path, value))


def test_bad_dataset_name_is_refused() -> None:
    raw = _params()
    raw["cohort"]["datasets"]["ad-ni"] = raw["cohort"]["datasets"].pop("adni")
    with pytest.raises(SettingsError, match="letters and digits"):
        settings_from_dict(raw)


def test_stage_without_cohort_block_explains(tmp_path: Path) -> None:
    raw = _params()
    raw.pop("cohort")
    with pytest.raises(SettingsError, match="no 'cohort' block"):
        cohort_stage.run(settings_from_dict(raw), argparse.Namespace())
