"""Small synthetic heads written as NIfTI files, in assorted orientations and datatypes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_template

ORIENTATIONS = ("RAS", "LPS", "PSR", "ASL")


def mni_phantom(
    orientation: str = "RAS",
    voxel_mm: tuple[float, float, float] = (3.0, 3.0, 3.0),
    dtype: str = "int16",
    seed: int = 0,
) -> nib.Nifti1Image:
    """The MNI152 template resampled to `voxel_mm` and stored in `orientation` (MNI mm affine).

    A scan already in MNI space: preprocessing without registration must give back the
    template on the target grid whatever the storage orientation, voxel size or datatype.
    """
    from nilearn.image import resample_img

    template = load_mni152_template(resolution=2)
    target = np.diag([*voxel_mm, 1.0])[:3, :3]
    resampled = resample_img(
        template,
        target_affine=target,
        interpolation="continuous",
        force_resample=True,
        copy_header=True,
    )
    data = resampled.get_fdata().astype(np.float32) * 1000.0
    data += np.random.default_rng(seed).normal(0.0, 5.0, data.shape).astype(np.float32)
    ras = nib.Nifti1Image(data, resampled.affine)
    target_ornt = nib.orientations.axcodes2ornt(tuple(orientation))
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(ras.affine), target_ornt
    )
    image = ras.as_reoriented(transform)
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    if dtype == "uint8":
        out = nib.Nifti1Image(np.clip(voxels, 0, None), image.affine)
        out.set_data_dtype(np.uint8)  # nibabel writes scl_slope so intensities survive
        return out
    out = nib.Nifti1Image(voxels.astype(dtype), image.affine)
    out.set_data_dtype(np.dtype(dtype))
    return out


def write_bids(root: Path, participants: str, subjects: dict[str, nib.Nifti1Image]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text(participants)
    for subject, image in subjects.items():
        anat = root / subject / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.save(image, anat / f"{subject}_T1w.nii.gz")
    return root


@pytest.fixture(scope="session")
def phantom() -> Callable[..., nib.Nifti1Image]:
    return mni_phantom
