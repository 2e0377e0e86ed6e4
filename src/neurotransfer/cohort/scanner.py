"""Site (scanner) appearance: tissue contrast, bias field, blur, voxel grid, noise, orientation,
stored data type and file format.

Every written image's affine maps voxels to MNI152 mm whatever its orientation and voxel size,
so a reader that resamples by world coordinates puts it back on the template grid without
registration.
"""

from __future__ import annotations

import gzip
import io
import zlib
from functools import lru_cache

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage

from neurotransfer.cohort.anatomy import Template, smooth_random_field
from neurotransfer.config import SiteSettings

# Mean T1 intensity of each tissue before scaling (white matter brightest, CSF darkest). A
# site's gm_wm_contrast stretches the WM-GM difference; CSF stays as it is.
CSF_INTENSITY = 0.15
WM_INTENSITY = 0.85
GM_WM_DIFFERENCE = 0.35
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
# Per-subject share of the bias field (the rest is the site's own pattern).
SUBJECT_BIAS_SHARE = 0.35


def tissue_intensities(site: SiteSettings) -> dict[str, float]:
    return {
        "csf": CSF_INTENSITY,
        "gm": WM_INTENSITY - GM_WM_DIFFERENCE * site.gm_wm_contrast,
        "wm": WM_INTENSITY,
    }


@lru_cache(maxsize=16)
def site_grid(
    template: Template, voxel_size: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """RAS grid covering the template field of view: (affine, points in mm ``[3, *shape]``)."""
    spacing = np.asarray(voxel_size, dtype=np.float64)
    shape = np.floor((template.fov_max_mm - template.fov_min_mm) / spacing).astype(int) + 1
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = template.fov_min_mm
    axes = [
        (template.fov_min_mm[d] + spacing[d] * np.arange(shape[d])).astype(np.float32)
        for d in range(3)
    ]
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    points.setflags(write=False)
    return affine, points


def bias_field(
    site_name: str, site: SiteSettings, seed: int, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Smooth multiplicative field: the site's fixed pattern plus a per-subject part."""
    site_rng = np.random.default_rng([seed, zlib.crc32(site_name.encode())])
    pattern = smooth_random_field(site_rng, shape, control_points=4)[0]
    subject = smooth_random_field(rng, shape, control_points=4)[0]
    mixed = np.sqrt(1 - SUBJECT_BIAS_SHARE**2) * pattern + SUBJECT_BIAS_SHARE * subject
    return np.exp(np.float32(site.bias_field) * mixed)


def acquire(
    tissues: dict[str, np.ndarray],
    site_name: str,
    site: SiteSettings,
    seed: int,
    template_spacing_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn tissue probability maps on the site grid into a float T1 image (before scaling)."""
    means = tissue_intensities(site)
    jitter = 1.0 + 0.02 * rng.standard_normal(3)  # subject-level intensity variation
    image = (
        tissues["csf"] * np.float32(means["csf"] * jitter[0])
        + tissues["gm"] * np.float32(means["gm"] * jitter[1])
        + tissues["wm"] * np.float32(means["wm"] * jitter[2])
    )
    image *= bias_field(site_name, site, seed, image.shape, rng)
    # Blur: the site's point-spread function plus the extra partial-volume of voxels larger
    # than the template's (slice thickness), as Gaussians in millimetres.
    voxel = np.asarray(site.voxel_size)
    extra = np.maximum(voxel**2 - template_spacing_mm**2, 0.0)
    sigma_vox = np.sqrt(site.blur_fwhm_mm**2 + extra) / FWHM_PER_SIGMA / voxel
    if np.any(sigma_vox > 0.05):
        image = ndimage.gaussian_filter(image, sigma=sigma_vox, mode="constant")
    # Magnitude images carry Rician noise: Gaussian noise on both real and imaginary channels.
    if site.noise_std > 0:
        real = image + np.float32(site.noise_std) * rng.standard_normal(image.shape, np.float32)
        imag = np.float32(site.noise_std) * rng.standard_normal(image.shape, np.float32)
        image = np.sqrt(real**2 + imag**2)
    return image.astype(np.float32)


def to_nifti(image_ras: np.ndarray, affine_ras: np.ndarray, site: SiteSettings) -> nib.Nifti1Image:
    """Scale and store as the site does, in its axis orientation (affine still to MNI mm)."""
    scaled = image_ras * np.float32(site.intensity_scale)
    if site.dtype == "int16":
        data = np.round(np.clip(scaled, -32768, 32767)).astype(np.int16)
    else:
        data = scaled.astype(np.float32)
    img = nib.Nifti1Image(data, affine_ras)
    if site.dtype == "uint8":
        # nibabel stores floats as uint8 with scl_slope/scl_inter chosen to cover the range.
        img.set_data_dtype(np.uint8)
    else:
        img.set_data_dtype(data.dtype)
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(site.orientation)))
    img = img.as_reoriented(transform)
    img.header.set_xyzt_units("mm")
    img.set_sform(img.affine, code="mni")
    img.set_qform(img.affine, code="mni")
    return img


def nifti_bytes(img: nib.Nifti1Image, compressed: bool) -> bytes:
    """The file contents; gzip without a timestamp or name so the bytes depend on data only."""
    raw = img.to_bytes()
    if not compressed:
        return raw
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=1) as gz:
        gz.write(raw)
    return buffer.getvalue()
