"""Reading and checking NIfTI scans, and moving them between nibabel and SimpleITK.

nibabel reads every NIfTI-1/2 variant (any datatype, scale factors, .nii or .nii.gz) and gives
the voxel-to-RAS affine; SimpleITK does the resampling, registration and bias correction, in
LPS physical coordinates. The conversion here is the one place the two conventions meet.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

# Fewer voxels than this along an axis is a slice or a localiser, not a 3D T1 volume.
MIN_VOXELS_PER_AXIS = 8
# Voxels smaller than this (mm) only come from a wrong header (e.g. metres read as mm).
MIN_VOXEL_SIZE_MM = 0.05

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ScanError(ValueError):
    """A scan that cannot be preprocessed; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def load_scan(path: str | Path, max_voxel_size_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 voxels [I, J, K], 4x4 voxel-to-RAS affine) of one 3D scan.

    Raises :class:`ScanError` for anything that is not a usable 3D volume: unreadable or
    truncated files, 2D or 4D images, non-finite or constant voxels, a singular affine, or
    absurd voxel sizes.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for foreign or damaged files
        raise ScanError(path, f"not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise ScanError(path, f"not an image ({type(image).__name__})")

    shape = tuple(int(n) for n in image.shape)
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        shape = shape[:3]
    elif len(shape) > 3:
        raise ScanError(
            path,
            f"4D image of shape {shape} ({int(np.prod(shape[3:]))} volumes); expected one "
            "3D T1w volume",
        )
    if len(shape) < 3 or min(shape) < MIN_VOXELS_PER_AXIS:
        raise ScanError(
            path,
            f"image of shape {shape} is not a 3D volume (needs at least "
            f"{MIN_VOXELS_PER_AXIS} voxels along each of three axes)",
        )

    affine = np.asarray(image.affine, dtype=np.float64)
    linear = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(linear)) < 1e-6:
        raise ScanError(
            path, f"singular or non-finite affine (voxel-to-world matrix {linear.tolist()})"
        )
    voxel_size = np.linalg.norm(linear, axis=0)
    if voxel_size.max() > max_voxel_size_mm or voxel_size.min() < MIN_VOXEL_SIZE_MM:
        raise ScanError(
            path,
            f"absurd voxel size {np.round(voxel_size, 4).tolist()} mm (accepted: "
            f"{MIN_VOXEL_SIZE_MM}-{max_voxel_size_mm} mm)",
        )

    try:
        voxels = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # truncated gzip, short file: zlib.error, EOFError, OSError...
        raise ScanError(path, f"cannot read the voxel data ({type(exc).__name__}: {exc})") from exc
    non_finite = int(np.size(voxels) - np.count_nonzero(np.isfinite(voxels)))
    if non_finite:
        raise ScanError(path, f"{non_finite} NaN/Inf voxels")
    low, high = float(voxels.min()), float(voxels.max())
    if low == high:
        raise ScanError(path, f"constant image (every voxel is {low:g})")
    return voxels, affine


def to_sitk(voxels: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image with the same voxels and world geometry (RAS affine -> LPS header)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    lps = RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def from_sitk(image: sitk.Image) -> np.ndarray:
    """Voxels of a SimpleITK image indexed [i, j, k] like nibabel (ITK arrays are [k, j, i])."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def grid_affine(
    spacing: tuple[float, float, float], shape: tuple[int, int, int], centre_mm: np.ndarray
) -> np.ndarray:
    """Voxel-to-RAS affine of an axis-aligned RAS grid whose centre lies at `centre_mm`."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([*spacing_arr, 1.0])
    affine[:3, 3] = np.asarray(centre_mm) - spacing_arr * (np.asarray(shape) - 1) / 2.0
    return affine


def reference_image(
    spacing: tuple[float, float, float], shape: tuple[int, int, int], centre_mm: np.ndarray
) -> sitk.Image:
    """An empty SimpleITK image on the target grid (the geometry resampling writes onto)."""
    return to_sitk(np.zeros(shape, dtype=np.float32), grid_affine(spacing, shape, centre_mm))


def anti_alias(image: sitk.Image, target_spacing_mm: float) -> sitk.Image:
    """Gaussian pre-filter before sampling `image` every `target_spacing_mm`.

    Per axis, sigma = sqrt(target^2 - spacing^2) / 2.355 (FWHM of the extra blur), so a
    1 mm scan sampled at 4 mm does not alias; axes already that coarse are left alone.
    """
    spacing = np.asarray(image.GetSpacing())
    sigma = np.sqrt(np.maximum(target_spacing_mm**2 - spacing**2, 0.0)) / 2.355
    if not np.any(sigma > 0.1 * spacing):
        return image
    # DiscreteGaussian takes variances in mm^2 and copes with a zero on some axes.
    return sitk.DiscreteGaussian(sitk.Cast(image, sitk.sitkFloat32), (sigma**2).tolist())


def resample_to_spacing(
    image: sitk.Image, spacing_mm: float, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """`image` on a grid of isotropic `spacing_mm` voxels along its own axes, same extent.

    Linear interpolation anti-aliases first; nearest neighbour (masks, labels) does not.
    """
    spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    new_size = np.maximum(1, np.round(size * spacing / spacing_mm)).astype(int)
    # Keep the field of view's centre where it was.
    centre_index = (size - 1) / 2.0
    new_centre_index = (new_size - 1) / 2.0
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre_index.tolist()))
    origin = centre - direction @ (new_centre_index * spacing_mm)
    if interpolator != sitk.sitkNearestNeighbor:
        image = anti_alias(image, spacing_mm)
    return sitk.Resample(
        image,
        new_size.tolist(),
        sitk.Transform(),
        interpolator,
        origin.tolist(),
        [float(spacing_mm)] * 3,
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )
