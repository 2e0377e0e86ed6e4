"""Preprocessing one scan: any orientation/datatype lands on the RAS grid; bad scans are named."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurotransfer.config import PreprocessSettings
from neurotransfer.data.preprocessing import TemplateSpace, preprocess_scan
from neurotransfer.data.volumes import ScanError

from .niftis import ORIENTATIONS, mni_phantom


@pytest.fixture(scope="module")
def space() -> TemplateSpace:
    return TemplateSpace(PreprocessSettings(registration=False))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_any_orientation_and_dtype_gives_the_template_in_ras(
    tmp_path: Path, space: TemplateSpace, orientation: str, dtype: str
) -> None:
    path = tmp_path / "scan.nii.gz"
    nib.save(mni_phantom(orientation, (3.0, 2.5, 3.5), dtype), path)
    result = preprocess_scan(path, space)
    assert result.volume.shape == space.settings.shape
    assert result.template_correlation > 0.95
    # Brain-masked: nothing outside the template brain.
    assert np.all(result.volume[~space.brain_mask] == 0)
    # Percentile normalisation maps the brain onto [0, 1].
    assert result.volume.min() >= 0.0 and result.volume.max() <= 1.0


def test_a_flipped_affine_is_caught_by_the_template_correlation(
    tmp_path: Path, space: TemplateSpace
) -> None:
    """Same voxels with the anterior-posterior axis mislabelled: QC must see it."""
    image = mni_phantom("RAS")
    flipped = image.affine.copy()
    flipped[1, 1] *= -1
    flipped[1, 3] = image.affine[1, 3] + (image.shape[1] - 1) * image.affine[1, 1]
    path = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), flipped), path)
    assert preprocess_scan(path, space).template_correlation < 0.5


def test_registration_recovers_a_shifted_scan(tmp_path: Path) -> None:
    image = mni_phantom("PSR", dtype="uint8")
    moved = image.affine.copy()
    moved[:3, 3] += [12.0, -15.0, 10.0]  # the scanner's frame is not MNI
    path = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), moved), path)
    unregistered = preprocess_scan(path, TemplateSpace(PreprocessSettings(registration=False)))
    registering = TemplateSpace(PreprocessSettings(registration=True))
    registered = preprocess_scan(path, registering)
    assert registered.template_correlation > 0.9 > unregistered.template_correlation
    # Sampled metric, fixed seed: the same scan gives the same array (DVC re-runs, the cache).
    assert np.array_equal(preprocess_scan(path, registering).volume, registered.volume)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    image = nib.Nifti1Image(data, None)
    # sform only: nibabel refuses to encode a singular affine as a qform.
    image.header.set_sform(np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine, code=1)
    nib.save(image, path)
    return path


def _valid(tmp_path: Path) -> Path:
    path = tmp_path / "valid.nii.gz"
    nib.save(mni_phantom(), path)
    return path


def _truncated(tmp_path: Path) -> Path:
    data = _valid(tmp_path).read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_gzip(tmp_path: Path) -> Path:
    data = bytearray(_valid(tmp_path).read_bytes())
    data[200:400] = bytes(200)
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _not_nifti(tmp_path: Path) -> Path:
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"participant notes, not an image\n" * 50))
    return path


def _text_as_nii(tmp_path: Path) -> Path:
    path = tmp_path / "plain.nii"
    path.write_text("hello")
    return path


def _four_d(tmp_path: Path) -> Path:
    return _save(tmp_path / "fmri.nii.gz", np.ones((20, 20, 20, 5), np.float32))


def _two_d(tmp_path: Path) -> Path:
    return _save(tmp_path / "slice.nii.gz", np.ones((64, 64, 1), np.float32))


def _nan(tmp_path: Path) -> Path:
    data = np.asarray(mni_phantom().dataobj, np.float32)
    data[10, 10, 10] = np.nan
    data[11, 11, 11] = np.inf
    return _save(tmp_path / "nan.nii.gz", data, mni_phantom().affine)


def _zeros(tmp_path: Path) -> Path:
    return _save(tmp_path / "zeros.nii.gz", np.zeros((30, 30, 30), np.int16))


def _singular(tmp_path: Path) -> Path:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[2, 2] = 0.0
    return _save(
        tmp_path / "singular.nii.gz", np.random.rand(30, 30, 30).astype(np.float32), affine
    )


def _huge_voxels(tmp_path: Path) -> Path:
    return _save(
        tmp_path / "huge.nii.gz",
        np.random.rand(30, 30, 30).astype(np.float32),
        np.diag([300.0, 300.0, 300.0, 1.0]),
    )


def _elsewhere(tmp_path: Path) -> Path:
    """A valid image whose affine puts it a metre away from the brain."""
    image = mni_phantom()
    affine = image.affine.copy()
    affine[:3, 3] += 1000.0
    return _save(tmp_path / "elsewhere.nii.gz", np.asarray(image.dataobj), affine)


BAD_SCANS = {
    "truncated gzip": (_truncated, "cannot read"),
    "corrupt gzip": (_corrupt_gzip, "NIfTI"),
    "gzip of text": (_not_nifti, "not a readable NIfTI"),
    "text named .nii": (_text_as_nii, "not a readable NIfTI"),
    "4D": (_four_d, "4D image"),
    "2D": (_two_d, "not a 3D volume"),
    "NaN/Inf": (_nan, "2 NaN/Inf voxels"),
    "all zero": (_zeros, "constant image"),
    "singular affine": (_singular, "singular"),
    "absurd voxel size": (_huge_voxels, "absurd voxel size"),
    "outside the grid": (_elsewhere, "covers only"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCANS))
def test_bad_scans_raise_naming_the_file_and_problem(
    tmp_path: Path, space: TemplateSpace, case: str
) -> None:
    make, problem = BAD_SCANS[case]
    path = make(tmp_path)
    with pytest.raises(ScanError) as caught:
        preprocess_scan(path, space)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
