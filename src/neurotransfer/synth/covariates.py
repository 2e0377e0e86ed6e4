"""Conditioning covariates: tissue volumes measured from the arrays, scaling, and sampling.

The brain LDM of Pinaya et al. is conditioned on four numbers, each scaled to [0, 1], in this
order: sex, age, ventricular volume and brain volume. Age and sex come from the manifest; the two
volumes are measured here from the intensity-normalised, brain-masked arrays themselves, so the
same measurement can later check whether the samples have the volumes they were asked for.

Measurement (on a volume in [0, 1], background 0 after brain masking):

- *tissue* (grey + white matter) is the largest connected set of voxels at or above
  ``csf_threshold``; isolated bright specks outside it (sampling noise) do not count;
- *brain volume* is the tissue volume;
- *CSF volume* is the volume of the cavities the tissue encloses once gaps narrower than
  ``CLOSING_MM`` (8 mm) are closed (morphological closing, then ``binary_fill_holes``, minus
  the tissue): the ventricles and enclosed sulcal CSF, both of which grow with age. Because the
  cavities must be enclosed, the dark background of a sample never counts, however noisy it
  is. It is the measurable stand-in for the bundle's ventricular volume.

``csf_threshold`` defaults to the intensity halfway between the CSF and grey-matter classes of a
three-class Otsu split (CSF | GM | WM, SimpleITK) of the training scans' voxels above
``foreground_threshold``, so it follows whatever normalisation ``preprocess`` applied; it is
recorded with the model and reused unchanged on the samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

log = logging.getLogger(__name__)

#: The conditioning vector, in the brain LDM bundle's order (gender, age, ventricular_vol,
#: brain_vol).
COVARIATES: tuple[str, ...] = ("sex", "age", "csf_volume_ml", "brain_volume_ml")
CONTINUOUS_COVARIATES: tuple[str, ...] = COVARIATES[1:]
#: UK Biobank's coding, used by the bundle: 0 female, 1 male.
SEX_CODES: dict[str, float] = {"F": 0.0, "M": 1.0}


#: Gaps in the tissue narrower than this are closed before cavities are filled: at 4 mm the
#: ventricles of a template-registered brain touch the mask edge through a voxel or two, and
#: would otherwise not count as enclosed at all.
CLOSING_MM = 8.0


@dataclass(frozen=True)
class VolumeMeasurement:
    """Thresholds (on intensities in [0, 1]) and the voxel size that turn an array into ml."""

    foreground_threshold: float
    csf_threshold: float
    voxel_volume_ml: float
    closing_iterations: int = 2

    @classmethod
    def for_spacing(
        cls, foreground_threshold: float, csf_threshold: float, spacing: Iterable[float]
    ) -> VolumeMeasurement:
        """The measurement for a grid of this voxel size (mm), closing gaps up to CLOSING_MM."""
        spacing = tuple(float(s) for s in spacing)
        iterations = max(1, round(CLOSING_MM / 2 / max(spacing)))
        return cls(foreground_threshold, csf_threshold, math.prod(spacing) / 1e3, iterations)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VolumeMeasurement:
        return cls(
            float(values["foreground_threshold"]),
            float(values["csf_threshold"]),
            float(values["voxel_volume_ml"]),
            int(values["closing_iterations"]),
        )

    def measure(self, volume: np.ndarray) -> tuple[float, float]:
        """Return ``(csf_volume_ml, brain_volume_ml)`` of one 3D volume."""
        if volume.ndim != 3:
            raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
        labels, n_components = ndimage.label(volume >= self.csf_threshold)
        if n_components == 0:
            return 0.0, 0.0
        sizes = np.bincount(labels.ravel())[1:]
        tissue = labels == (int(np.argmax(sizes)) + 1)
        closed = ndimage.binary_closing(
            tissue,
            ndimage.generate_binary_structure(3, 1),
            self.closing_iterations,
            border_value=0,
        )
        enclosed = ndimage.binary_fill_holes(closed | tissue) & ~tissue
        return (
            int(enclosed.sum()) * self.voxel_volume_ml,
            int(tissue.sum()) * self.voxel_volume_ml,
        )

    def measure_all(self, volumes: Iterable[np.ndarray]) -> np.ndarray:
        """``[N, 2]`` array of (CSF ml, brain ml), one row per volume."""
        rows = [self.measure(np.asarray(v, dtype=np.float32)) for v in volumes]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def otsu_csf_threshold(
    volumes: Iterable[np.ndarray], foreground_threshold: float, max_voxels: int = 2_000_000
) -> float:
    """CSF/tissue threshold: halfway between the CSF and grey-matter classes of a three-class
    Otsu split of the voxels of ``volumes`` above the background.

    Halfway between the class means rather than Otsu's own threshold: the CSF class is small, so
    Otsu's boundary sits close to it, and a slightly blurred ventricle (in an autoencoder
    reconstruction or a sample) would then no longer count as CSF at all.
    """
    import SimpleITK as sitk

    values = [
        volume[volume > foreground_threshold]
        for volume in (np.asarray(v, dtype=np.float32) for v in volumes)
    ]
    if not values or sum(v.size for v in values) == 0:
        raise ValueError("no voxels above the foreground threshold to fit the CSF threshold on")
    pooled = np.concatenate(values)
    stride = max(1, pooled.size // max_voxels)  # a deterministic subsample keeps this fast
    pooled = pooled[::stride]
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.SetNumberOfHistogramBins(128)
    otsu.Execute(sitk.GetImageFromArray(pooled.reshape(1, -1)))
    lower, upper = otsu.GetThresholds()
    csf, grey = pooled[pooled < lower], pooled[(pooled >= lower) & (pooled < upper)]
    if csf.size == 0 or grey.size == 0:
        raise ValueError(
            "the intensities do not split into CSF, grey and white matter: set "
            "synthesize.quality.csf_threshold explicitly"
        )
    return float((csf.mean() + grey.mean()) / 2)


@dataclass(frozen=True)
class CovariateScaler:
    """Min–max scaling of the continuous covariates to [0, 1], fitted on the training pool.

    Sex is coded 0 (F) / 1 (M) as in the bundle. Values outside the fitted range (explicitly
    requested ones) are clipped to [0, 1] with a warning: the model has never seen them.
    """

    minimum: dict[str, float]
    maximum: dict[str, float]

    @classmethod
    def fit(cls, table: pd.DataFrame) -> CovariateScaler:
        minimum, maximum = {}, {}
        for name in CONTINUOUS_COVARIATES:
            column = table[name].astype(float)
            lo, hi = float(column.min()), float(column.max())
            if not hi > lo:
                raise ValueError(
                    f"covariate {name!r} is constant ({lo:g}) over the training pool: "
                    "the model cannot be conditioned on it"
                )
            minimum[name], maximum[name] = lo, hi
        return cls(minimum, maximum)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """``[N, 4]`` float32 conditioning vectors in :data:`COVARIATES` order."""
        unknown = sorted(set(table["sex"]) - set(SEX_CODES))
        if unknown:
            raise ValueError(f"sex must be one of {sorted(SEX_CODES)}, got {unknown}")
        columns = [table["sex"].map(SEX_CODES).to_numpy(dtype=np.float64)]
        for name in CONTINUOUS_COVARIATES:
            lo, hi = self.minimum[name], self.maximum[name]
            scaled = (table[name].to_numpy(dtype=np.float64) - lo) / (hi - lo)
            outside = int(((scaled < 0) | (scaled > 1)).sum())
            if outside:
                log.warning(
                    "%d requested %s value(s) outside the training range [%g, %g] "
                    "were clipped to it",
                    outside,
                    name,
                    lo,
                    hi,
                )
            columns.append(np.clip(scaled, 0.0, 1.0))
        return np.stack(columns, axis=1).astype(np.float32)

    def inverse(self, scaled: np.ndarray) -> pd.DataFrame:
        """Raw covariates (sex as M/F) from ``[N, 4]`` scaled vectors."""
        scaled = np.asarray(scaled, dtype=np.float64)
        table = pd.DataFrame({"sex": np.where(scaled[:, 0] >= 0.5, "M", "F")})
        for i, name in enumerate(CONTINUOUS_COVARIATES, start=1):
            lo, hi = self.minimum[name], self.maximum[name]
            table[name] = lo + scaled[:, i] * (hi - lo)
        return table

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            "minimum": dict(self.minimum),
            "maximum": dict(self.maximum),
            "sex_codes": dict(SEX_CODES),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CovariateScaler:
        return cls(dict(values["minimum"]), dict(values["maximum"]))


def draw_covariates(
    pool: pd.DataFrame, scaler: CovariateScaler, n: int, jitter: float, seed: int
) -> np.ndarray:
    """Draw ``n`` scaled conditioning vectors from the pool's joint covariate distribution.

    A smoothed bootstrap: pick training-pool subjects at random (with replacement), keep their
    sex, and add Gaussian noise of standard deviation ``jitter`` (in scaled units, i.e. a
    fraction of each covariate's pool range) to their age and volumes. This keeps the pool's
    correlations (older subjects have larger ventricles) without repeating exact subjects.
    """
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    rng = np.random.default_rng(seed)
    base = scaler.transform(pool)[rng.integers(0, len(pool), size=n)]
    base[:, 1:] += rng.normal(0.0, jitter, size=(n, base.shape[1] - 1)).astype(np.float32)
    return np.clip(base, 0.0, 1.0).astype(np.float32)


def requested_covariates(rows: Iterable[Any], scaler: CovariateScaler) -> np.ndarray:
    """Scaled conditioning vectors for covariates given in params (``CovariateRow``s)."""
    records = [
        {name: getattr(row, name) for name in COVARIATES} for row in rows for _ in range(row.count)
    ]
    if not records:
        raise ValueError("no covariate rows given")
    return scaler.transform(pd.DataFrame.from_records(records))
