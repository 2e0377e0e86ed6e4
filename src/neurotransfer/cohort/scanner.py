"""Site (scanner) appearance: tissue contrast, bias field, blur and slice thickness, voxel grid,
noise, orientation, stored data type and file format.

Every written image's affine maps voxels to MNI152 mm whatever its orientation and voxel size,
so a reader that resamples by world coordinates puts it back on the template grid without
registration. A scan is simulated on an axis-aligned RAS grid with the site's voxel size
covering the template's field of view, then stored in the site's axis order.
"""

from __future__ import annotations

import functools
import gzip
import io
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from numpy.typing import NDArray
from scipy import ndimage

from neurotransfer.cohort.anatomy import Anatomy
from neurotransfer.cohort.fields import BSplineField, random_bspline_field
from neurotransfer.cohort.warp import SubjectWarp
from neurotransfer.config import SiteSettings

FloatArray = NDArray[np.float32]

# Mean T1 intensity of each tissue before the site's scaling: white matter brightest, CSF dark,
# bone darkest, scalp fat bright. A site's gm_wm_contrast (and age) stretch the WM-GM gap.
WM_INTENSITY = 0.85
GM_WM_DIFFERENCE = 0.35
CSF_INTENSITY = 0.15
SKULL_INTENSITY = 0.05
SCALP_INTENSITY = 0.75
TISSUE_JITTER_SD = 0.02  # subject-to-subject variation of tissue intensities
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
# Bias field: smooth (control points every 60 mm), log-amplitude of unit RMS times the site's
# bias_field; a fixed pattern per site (its coil) mixed with a per-subject part (positioning).
BIAS_CONTROL_SPACING_MM = 60.0
SUBJECT_BIAS_SHARE = 0.35


def tissue_intensities(site: SiteSettings, contrast_factor: float = 1.0) -> dict[str, float]:
    """Mean intensity of each tissue at a site (before scaling), for a given age contrast."""
    return {
        "wm": WM_INTENSITY,
        "gm": WM_INTENSITY - GM_WM_DIFFERENCE * site.gm_wm_contrast * contrast_factor,
        "csf": CSF_INTENSITY,
        "skull": SKULL_INTENSITY,
        "scalp": SCALP_INTENSITY,
    }


def synthesize_t1(
    anatomy: Anatomy, gm: FloatArray, wm: FloatArray, csf: FloatArray, means: dict[str, float]
) -> FloatArray:
    """Noise-free T1 on the template grid: tissue fractions times their mean intensities."""
    image = gm * np.float32(means["gm"])
    image += wm * np.float32(means["wm"])
    image += (csf + anatomy.extracerebral_csf) * np.float32(means["csf"])
    image += anatomy.skull * np.float32(means["skull"])
    image += anatomy.scalp * np.float32(means["scalp"])
    return image


@dataclass(frozen=True)
class SiteGrid:
    """An axis-aligned RAS grid in MNI mm: ``axes`` are the world coordinates along x, y, z."""

    affine: NDArray[np.float64]
    axes: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.axes[0]), len(self.axes[1]), len(self.axes[2]))


@functools.lru_cache(maxsize=32)
def _grid(lower: tuple[float, ...], upper: tuple[float, ...], voxel: tuple[float, ...]) -> SiteGrid:
    low, high, spacing = (np.asarray(v, dtype=np.float64) for v in (lower, upper, voxel))
    shape = np.floor((high - low) / spacing + 1e-6).astype(int) + 1
    start = (low + high) / 2.0 - spacing * (shape - 1) / 2.0  # centred on the template's FOV
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = start
    axes = tuple(start[d] + spacing[d] * np.arange(shape[d]) for d in range(3))
    return SiteGrid(affine=affine, axes=axes)  # type: ignore[arg-type]


def site_grid(anatomy: Anatomy, voxel_size: tuple[float, float, float]) -> SiteGrid:
    """The RAS grid a site samples: its voxel size (along L-R, P-A, I-S) over the template FOV."""
    return _grid(
        tuple(anatomy.fov_lower_mm.tolist()),
        tuple(anatomy.fov_upper_mm.tolist()),
        tuple(float(v) for v in voxel_size),
    )


@functools.lru_cache(maxsize=64)
def site_bias_pattern(site_name: str, seed: int, anatomy: Anatomy) -> BSplineField:
    """The site's own bias-field pattern (the same for all its subjects)."""
    rng = np.random.default_rng([seed, zlib.crc32(site_name.encode("utf-8"))])
    return _bias_field(rng, anatomy)


def _bias_field(rng: np.random.Generator, anatomy: Anatomy) -> BSplineField:
    field = random_bspline_field(
        rng, anatomy.fov_lower_mm, anatomy.fov_upper_mm, BIAS_CONTROL_SPACING_MM, 1, 1.0
    )
    # scale to unit RMS over the head, so bias_field is the log-amplitude's s.d.
    probe = field.on_grid(*(a[::4] for a in anatomy.axis_mm()))[0]
    rms = float(np.sqrt(np.mean(probe**2)))
    return BSplineField(field.origin, field.spacing, field.coefficients / rms)


def acquire(
    t1_template: FloatArray,
    anatomy: Anatomy,
    warp: SubjectWarp,
    grid: SiteGrid,
    site: SiteSettings,
    site_bias: BSplineField,
    rng: np.random.Generator,
) -> FloatArray:
    """Scan a template-space T1 of a subject at a site: a float image on the site's RAS grid.

    The point-spread function and the voxel's extent (slice thickness) blur the object (done on
    the template grid before the warp places the subject's anatomy, which scales it by a few
    per cent at most), the receive coil's bias multiplies the signal, and magnitude
    reconstruction adds Rician noise (``noise_std`` per channel, on the scale where white
    matter is 0.85) before the site's ``intensity_scale`` and storage type apply.
    """
    # Gaussian PSF (FWHM) plus a voxel's box profile beyond the template's own (std v/sqrt(12)).
    voxel = np.asarray(site.voxel_size, dtype=np.float64)
    res = anatomy.resolution_mm
    sigma_mm = np.sqrt(
        (site.blur_fwhm_mm / FWHM_PER_SIGMA) ** 2 + np.maximum(voxel**2 - res**2, 0.0) / 12.0
    )
    if np.any(sigma_mm / res > 0.05):
        t1_template = ndimage.gaussian_filter(t1_template, sigma=sigma_mm / res, mode="constant")

    coords = warp.template_voxels(anatomy, *grid.axes)
    image = ndimage.map_coordinates(
        t1_template, coords, output=np.float32, order=1, mode="constant", cval=0.0, prefilter=False
    )
    del coords

    # site pattern and subject part share one control grid: mixing coefficients mixes fields
    subject_bias = _bias_field(rng, anatomy)
    mixed = BSplineField(
        site_bias.origin,
        site_bias.spacing,
        np.sqrt(1.0 - SUBJECT_BIAS_SHARE**2) * site_bias.coefficients
        + SUBJECT_BIAS_SHARE * subject_bias.coefficients,
    )
    bias = mixed.on_grid(*grid.axes)[0]
    bias *= np.float32(site.bias_field)
    image *= np.exp(bias, out=bias)

    if site.noise_std > 0:  # magnitude of a complex signal with Gaussian noise in each channel
        sd = np.float32(site.noise_std)
        real = rng.standard_normal(image.shape, dtype=np.float32)
        real *= sd
        real += image
        imaginary = rng.standard_normal(image.shape, dtype=np.float32)
        imaginary *= sd
        image = np.hypot(real, imaginary, out=real)
    return image


def to_nifti(
    image_ras: FloatArray, affine_ras: NDArray[np.float64], site: SiteSettings
) -> nib.Nifti1Image:
    """Scale and store as the site does, in its axis order (the affine still maps to MNI mm)."""
    scaled = image_ras * np.float32(site.intensity_scale)
    if site.dtype == "int16":  # raw integers, no scale factor
        data = np.round(np.clip(scaled, -32768, 32767)).astype(np.int16)
    else:
        data = scaled.astype(np.float32)
    img = nib.Nifti1Image(data, affine_ras)
    # uint8: nibabel stores the floats as bytes with scl_slope/scl_inter covering their range
    img.set_data_dtype(np.uint8 if site.dtype == "uint8" else data.dtype)
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(site.orientation)))
    img = img.as_reoriented(transform)
    img.header.set_xyzt_units("mm")
    # the world space is MNI152 by construction
    img.set_sform(img.affine, code="mni")
    img.set_qform(img.affine, code="mni")
    return img


def nifti_bytes(img: nib.Nifti1Image, compressed: bool) -> bytes:
    """The file's bytes; gzip without timestamp or file name, so bytes depend on data only."""
    raw = img.to_bytes()
    if not compressed:
        return raw
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=1) as gz:
        gz.write(raw)
    return buffer.getvalue()
