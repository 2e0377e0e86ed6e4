"""One scan in, one normalised array on the common RAS grid out.

Steps: read and check (``volumes.load_scan``) -> optional N4 bias correction -> optional affine
registration to nilearn's MNI152 template (``registration.py``) -> a Gaussian anti-aliasing
filter when the grid is coarser than the scan -> one resampling onto the target grid (the grid's
axes are R, A, S, so this also reorients) -> the template's brain mask -> robust intensity
normalisation inside the brain. Only one interpolation touches the voxels: registration
estimates a transform, it does not resample the scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neurotransfer.config import PreprocessSettings
from neurotransfer.data.registration import TemplatePyramid, register_to_template
from neurotransfer.data.volumes import (
    ScanError,
    anti_alias,
    from_sitk,
    grid_affine,
    load_scan,
    reference_image,
    to_sitk,
)

# Part of the template brain mask the scan's field of view must cover; less means a wrong
# affine (the scan lies elsewhere in world space) or a partial acquisition.
MIN_BRAIN_COVERAGE = 0.8
# Intensity percentiles (inside the brain) treated as the black and white points.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


@dataclass(frozen=True)
class ScanResult:
    """What preprocessing one scan produced: the array and its QC numbers."""

    volume: np.ndarray  # float32 on the target grid
    template_correlation: float  # Pearson r with the template inside the brain mask
    brain_coverage: float  # fraction of the brain mask inside the scan's field of view
    seconds: float
    registration_scale: float | None = None  # scan size / template size; None: not registered


class TemplateSpace:
    """nilearn's MNI152 template and brain mask, and the target grid centred on the brain.

    Built once per worker process; everything derived from the settings is cached here.
    """

    def __init__(self, settings: PreprocessSettings) -> None:
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        self.settings = settings
        template = load_mni152_template(resolution=2)
        mask = load_mni152_brain_mask(resolution=2)
        self.template_image = to_sitk(template.get_fdata(dtype=np.float32), template.affine)
        self.mask_image = to_sitk(mask.get_fdata(dtype=np.float32), mask.affine)
        inside = np.argwhere(mask.get_fdata() > 0)
        bbox_centre_voxel = (inside.min(axis=0) + inside.max(axis=0)) / 2.0
        self.brain_centre_mm = (mask.affine @ np.r_[bbox_centre_voxel, 1.0])[:3]
        self.reference = reference_image(settings.spacing, settings.shape, self.brain_centre_mm)

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS (MNI mm) affine of the target grid."""
        return grid_affine(self.settings.spacing, self.settings.shape, self.brain_centre_mm)

    @cached_property
    def brain_mask(self) -> np.ndarray:
        """Boolean brain mask on the target grid."""
        resampled = sitk.Resample(
            self.mask_image, self.reference, sitk.Transform(), sitk.sitkLinear
        )
        return from_sitk(resampled) > 0.5

    @cached_property
    def template(self) -> np.ndarray:
        """The template's intensities on the target grid (float32)."""
        resampled = sitk.Resample(
            self.template_image, self.reference, sitk.Transform(), sitk.sitkLinear
        )
        return from_sitk(resampled).astype(np.float32)

    @cached_property
    def pyramid(self) -> TemplatePyramid:
        """The template at the registration's working resolutions."""
        return TemplatePyramid(self.template_image, self.mask_image)


def bias_correct(image: sitk.Image) -> sitk.Image:
    """N4 on a 4x shrunken copy (seconds, not minutes); the field is applied at full size."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    shrunk = sitk.Shrink(image, [4, 4, 4])
    head = sitk.OtsuThreshold(shrunk, 0, 1)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20, 10])
    corrector.Execute(shrunk, head)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    return image / sitk.Exp(log_field)


def normalise(volume: np.ndarray, brain: np.ndarray, method: str) -> np.ndarray:
    """Robust intensity normalisation from the voxels inside the brain.

    ``percentile``: the 0.5th and 99.5th percentiles map to 0 and 1 (clipped to [0, 1]);
    ``zscore``: intensities clipped to those percentiles, then zero mean, unit variance.
    """
    inside = volume[brain]
    low, high = np.percentile(inside, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not high > low:
        raise ScanError("<normalisation>", f"no contrast inside the brain (all about {low:g})")
    clipped = np.clip(volume, low, high)
    if method == "percentile":
        return ((clipped - low) / (high - low)).astype(np.float32)
    inside = clipped[brain]
    return ((clipped - inside.mean()) / max(float(inside.std()), 1e-6)).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def preprocess_scan(path: str | Path, space: TemplateSpace, seed: int = 0) -> ScanResult:
    """Preprocess one scan onto `space`'s grid; raises :class:`ScanError` naming the file."""
    start = time.perf_counter()
    settings = space.settings
    voxels, affine = load_scan(path, settings.max_voxel_size_mm)
    moving = to_sitk(voxels, affine)
    del voxels  # the SimpleITK copy is the one used from here on
    transform: sitk.Transform = sitk.Transform()
    scale = None
    try:
        if settings.bias_correction:
            moving = bias_correct(moving)
        if settings.registration:
            registration = register_to_template(
                moving,
                space.pyramid,
                settings.registration_sampling,
                settings.registration_iterations,
                seed,
            )
            transform, scale = registration.transform, registration.scale
    except ScanError as exc:
        raise ScanError(path, exc.problem) from exc

    # The scan's field of view on the grid: which brain voxels it actually covers.
    inside_scan = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    inside_scan.CopyInformation(moving)
    field_of_view = from_sitk(
        sitk.Resample(inside_scan, space.reference, transform, sitk.sitkNearestNeighbor, 0)
    ).astype(bool)
    brain = space.brain_mask
    coverage = float(field_of_view[brain].mean())
    if coverage < MIN_BRAIN_COVERAGE:
        raise ScanError(
            path,
            f"the scan covers only {coverage:.0%} of the brain on the target grid "
            "(wrong affine, or a partial field of view)",
        )

    smoothed = anti_alias(moving, min(settings.spacing))
    resampled = from_sitk(
        sitk.Resample(smoothed, space.reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    try:
        volume = normalise(resampled, brain & field_of_view, settings.normalisation)
    except ScanError as exc:
        raise ScanError(path, exc.problem) from exc
    if settings.brain_mask:
        volume = np.where(brain, volume, 0.0).astype(np.float32)
    correlation = pearson(volume[brain], space.template[brain])
    return ScanResult(volume, correlation, coverage, time.perf_counter() - start, scale)
