"""Sites: orientation, voxel size, data type and format vary as configured; every scan lands on
MNI152 by its affine alone; intensity statistics differ by site; disease shows in the image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn import datasets
from nilearn.image import resample_to_img

from neurotransfer.cohort.anatomy import REGION_LABELS, Anatomy
from neurotransfer.cohort.generate import plan_cohort, simulate_subject
from neurotransfer.config import Settings


@pytest.fixture(scope="module")
def mni() -> tuple[nib.Nifti1Image, np.ndarray]:
    """The 2 mm MNI152 T1 and its brain mask (what preprocess resamples onto)."""
    template = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    return template, mask


def _on_mni(img: nib.Nifti1Image, template: nib.Nifti1Image) -> np.ndarray:
    """Reorient to RAS and resample onto the template grid by world coordinates only."""
    canonical = nib.as_closest_canonical(img)
    return resample_to_img(
        canonical, template, interpolation="linear", force_resample=True, copy_header=True
    ).get_fdata()


def _first_scan_per_site(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "data/phantom_truth/subjects.csv").groupby("site").head(1)


def test_orientation_voxel_size_dtype_and_format_follow_the_site(
    small_cohort: tuple[Path, Settings],
) -> None:
    root, settings = small_cohort
    codes, suffixes, dtypes = set(), set(), set()
    for _, row in _first_scan_per_site(root).iterrows():
        site = settings.cohort.sites[row["site"]]
        path = root / "data/raw" / row["path"]
        img = nib.load(path)
        code = "".join(nib.aff2axcodes(img.affine))
        assert code == site.orientation, row["site"]
        assert img.get_data_dtype() == np.dtype(site.dtype), row["site"]
        # voxel_size is along the world axes (L-R, P-A, I-S), whatever the storage order
        zooms = nib.as_closest_canonical(img).header.get_zooms()
        assert np.allclose(zooms, site.voxel_size, atol=1e-4), row["site"]
        assert path.name.endswith(".nii.gz") == site.compressed
        if site.compressed:  # gzip header without a timestamp: the bytes depend on data only
            assert path.read_bytes()[4:8] == b"\0\0\0\0"
        if site.dtype == "uint8":  # bytes with a scale factor covering the intensity range
            assert img.dataobj.slope != 1.0
            assert len(np.unique(np.asarray(img.dataobj.get_unscaled()))) > 100
        if site.dtype == "int16":  # raw integers, no scaling
            assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
        codes.add(code)
        suffixes.add(path.suffix)
        dtypes.add(str(img.get_data_dtype()))
    assert len(codes) == len(settings.cohort.sites)
    assert "RAS" in codes and len(codes - {"RAS"}) >= 4
    assert suffixes == {".nii", ".gz"}
    assert dtypes == {"uint8", "int16", "float32"}


def test_every_site_lands_on_mni152_by_its_affine(
    small_cohort: tuple[Path, Settings], mni: tuple[nib.Nifti1Image, np.ndarray]
) -> None:
    """Resampled by world coordinates alone, each scan matches the template best where it is:
    moving it by 4 mm along any axis matches worse (no global misalignment)."""
    template, mask = mni
    reference = template.get_fdata()[mask]
    root, _ = small_cohort
    for _, row in _first_scan_per_site(root).iterrows():
        data = _on_mni(nib.load(root / "data/raw" / row["path"]), template)
        # not 1: another head size and shape, atrophy, bias field, noise, blur
        corr = np.corrcoef(data[mask], reference)[0, 1]
        assert corr > 0.5, f"{row['site']}: correlation with MNI152 {corr:.2f}"
        for axis in range(3):
            for voxels in (-2, 2):
                moved = np.roll(data, voxels, axis=axis)[mask]
                assert np.corrcoef(moved, reference)[0, 1] < corr - 0.02, (row["site"], axis)


def test_one_person_scanned_at_every_site_is_the_same_anatomy_in_world_space(
    small_cohort: tuple[Path, Settings],
    anatomy: Anatomy,
    mni: tuple[nib.Nifti1Image, np.ndarray],
) -> None:
    template, mask = mni
    _, settings = small_cohort
    plan = plan_cohort(settings.cohort)[0]
    on_mni = {
        site: _on_mni(
            simulate_subject(dataclasses.replace(plan, site=site), settings.cohort, anatomy).image,
            template,
        )[mask]
        for site in settings.cohort.sites
    }
    # only the sites' contrast, bias field, noise and resolution differ (a 2 cm error in the
    # affine would bring this down to about 0.3)
    for site, values in on_mni.items():
        corr = np.corrcoef(values, on_mni["siteA"])[0, 1]
        assert corr > 0.75, f"{site} vs siteA: {corr:.3f}"


def test_site_intensity_statistics_differ(
    small_cohort: tuple[Path, Settings], mni: tuple[nib.Nifti1Image, np.ndarray]
) -> None:
    template, _ = mni
    white = datasets.load_mni152_wm_template(resolution=2).get_fdata() > 0.9
    grey = datasets.load_mni152_gm_template(resolution=2).get_fdata() > 0.7
    root, _ = small_cohort
    truth = pd.read_csv(root / "data/phantom_truth/subjects.csv")
    contrast, maximum = {}, {}
    for site, rows in truth.groupby("site"):
        ratios = []
        for path in rows["path"]:
            img = nib.load(root / "data/raw" / path)
            data = _on_mni(img, template)
            ratios.append(np.median(data[white]) / np.median(data[grey]))
        contrast[site] = float(np.mean(ratios))
        maximum[site] = float(np.asarray(img.dataobj).max())
    # gm_wm_contrast: siteB 1.25, siteA 1.0, siteC 0.85 (with a 3 mm blur)
    assert contrast["siteB"] > contrast["siteA"] > contrast["siteC"], contrast
    # stored values: intensity_scale 3000 (int16) against 1 (float32)
    assert maximum["siteD"] > 1000 * maximum["siteB"], maximum


def test_alzheimer_twin_has_darker_medial_temporal_lobes_in_the_image(
    small_cohort: tuple[Path, Settings], anatomy: Anatomy
) -> None:
    _, settings = small_cohort
    plan = dataclasses.replace(
        next(p for p in plan_cohort(settings.cohort) if p.dataset == "adni"), site="siteA", age=72.0
    )
    # siteA stores RAS at 2 mm on the full template grid: the region labels index it directly
    medial_temporal = anatomy.region_labels_full == REGION_LABELS["medial_temporal"]
    means = {}
    for diagnosis in ("CN", "AD"):
        scan = simulate_subject(
            dataclasses.replace(plan, diagnosis=diagnosis), settings.cohort, anatomy
        )
        assert np.allclose(scan.image.affine, anatomy.full_affine)
        means[diagnosis] = np.asarray(scan.image.dataobj, np.float32)[medial_temporal].mean()
    assert means["AD"] < 0.95 * means["CN"], means
