"""The reference anatomy: MNI152 2009 tissue maps, anatomical regions and a synthetic scalp.

Everything here lives on the template grid (MNI152 2009c symmetric, shipped with nilearn, no
download), cropped to the head. Tissue maps: grey and white matter from nilearn's probability
templates; CSF is the brain mask minus GM minus WM (ventricles, sulci, cisterns).

Regions cannot come from a downloaded atlas, so each is a union of ellipsoids placed at
approximate MNI152 coordinates of the structure (centres of mass as tabulated for the
Harvard-Oxford subcortical atlas; substantia nigra/midbrain from common literature coordinates,
SN about (+-11, -17, -10)), with extents chosen on this template so that the ellipsoid covers the
structure and little else. Each region is intersected with the tissue it describes where it is
used (grey matter for the medial temporal lobe and putamen, CSF for the ventricles, GM+WM for the
midbrain). They are approximations, which is enough here: the same definitions create the effects
and measure them. ``<truth_dir>/regions_mni.nii.gz`` holds them as labels to overlay on the
template.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

FloatArray = NDArray[np.float32]
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Ellipsoid:
    """A solid ellipsoid in MNI152 mm; ``pitch_deg`` tilts it about the left-right axis."""

    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    pitch_deg: float = 0.0


def _left_right(
    centre: tuple[float, float, float], radii: tuple[float, float, float], pitch: float = 0.0
) -> tuple[Ellipsoid, Ellipsoid]:
    """Both hemispheres' copies of a structure (the 2009c symmetric template is mirrored)."""
    x, y, z = centre
    return (Ellipsoid((-abs(x), y, z), radii, pitch), Ellipsoid((abs(x), y, z), radii, pitch))


# Region name -> ellipsoids (MNI152 mm). The first four carry the simulated effects; the last
# three only say where cortical thinning does not apply.
REGIONS: dict[str, tuple[Ellipsoid, ...]] = {
    # hippocampus (long axis tilted, tail higher than head) and the amygdala in front of it
    "medial_temporal": (
        *_left_right((26.0, -22.0, -13.0), (6.0, 17.0, 7.0), pitch=25.0),
        *_left_right((23.0, -5.0, -18.0), (6.0, 6.0, 6.0)),
    ),
    # lateral ventricles (bodies, frontal and occipital horns) and the third ventricle
    "ventricles": _left_right((14.0, -8.0, 14.0), (12.0, 36.0, 16.0)),
    "putamen": _left_right((25.0, 2.0, 0.0), (5.0, 13.0, 8.0)),
    # midbrain, including the substantia nigra
    "midbrain": (Ellipsoid((0.0, -24.0, -10.0), (11.0, 9.0, 8.0)),),
    # caudate, pallidum, thalamus (and the putamen again)
    "deep_grey": _left_right((18.0, -6.0, 4.0), (14.0, 26.0, 14.0)),
    "cerebellum": (Ellipsoid((0.0, -60.0, -38.0), (52.0, 28.0, 24.0)),),
    "brainstem": (Ellipsoid((0.0, -28.0, -34.0), (12.0, 14.0, 28.0)),),
}
REGION_LABELS = {name: index + 1 for index, name in enumerate(REGIONS)}

# Ventricles grow by at most this much (mm); they may grow only inside the ventricle ellipsoids
# enlarged by it, so the growth never leaks into cortical sulci.
MAX_VENTRICLE_EXPANSION_MM = 8.0

# Extracerebral layers by distance outside the brain surface (mm): CSF and meninges (dark),
# skull (cortical bone, darkest), scalp (fat, bright on T1).
SCALP_LAYERS_MM = {"extracerebral_csf": (0.0, 2.0), "skull": (2.0, 8.0), "scalp": (8.0, 14.0)}


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Template-space maps on the cropped template grid (shared, read-only).

    All arrays have the same shape; ``affine`` maps their indices to MNI152 mm (axis-aligned,
    RAS). ``fov_lower_mm``/``fov_upper_mm`` bound the full, uncropped template grid, which every
    simulated scan covers. ``regions`` are soft weights (0..1 with a one-voxel edge) that are
    non-zero only inside ``region_boxes``; ``ventricle_growth_distance_mm`` is the distance
    from the ventricles inside the zone they may grow into, infinite elsewhere.
    """

    resolution_mm: float
    affine: NDArray[np.float64]
    fov_lower_mm: NDArray[np.float64]
    fov_upper_mm: NDArray[np.float64]
    centre_mm: NDArray[np.float64]
    gm: FloatArray
    wm: FloatArray
    brain: FloatArray
    extracerebral_csf: FloatArray
    skull: FloatArray
    scalp: FloatArray
    cortex: FloatArray
    regions: dict[str, FloatArray]
    region_boxes: dict[str, Box]
    ventricle_growth_distance_mm: FloatArray
    full_affine: NDArray[np.float64]
    region_labels_full: NDArray[np.uint8]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]

    @property
    def voxel_ml(self) -> float:
        return self.resolution_mm**3 / 1000.0

    def axis_mm(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """World coordinate of every index along x, y and z."""
        return tuple(  # type: ignore[return-value]
            self.affine[axis, 3] + self.resolution_mm * np.arange(n)
            for axis, n in enumerate(self.shape)
        )


def ellipsoid_weight(
    axis_mm: tuple[NDArray[np.floating], ...], ellipsoids: tuple[Ellipsoid, ...], edge_mm: float
) -> FloatArray:
    """Soft membership of a union of ellipsoids on an axis-aligned grid.

    1 inside, 0 outside, linear across about ``edge_mm`` at the surface.
    """
    xs, ys, zs = (np.asarray(a, dtype=np.float32) for a in axis_mm)
    weight = np.zeros((len(xs), len(ys), len(zs)), dtype=np.float32)
    for e in ellipsoids:
        dx = (xs - e.centre_mm[0])[:, None, None]
        dy = (ys - e.centre_mm[1])[None, :, None]
        dz = (zs - e.centre_mm[2])[None, None, :]
        pitch = np.deg2rad(e.pitch_deg)
        # coordinates in the ellipsoid's frame, whose long (y) axis points anterior and down
        # for a positive pitch: its posterior end is the higher one
        along = np.cos(pitch) * dy - np.sin(pitch) * dz
        up = np.sin(pitch) * dy + np.cos(pitch) * dz
        radius = np.sqrt(
            (dx / e.radii_mm[0]) ** 2 + (along / e.radii_mm[1]) ** 2 + (up / e.radii_mm[2]) ** 2
        )
        inside = np.clip(0.5 + (1.0 - radius) * min(e.radii_mm) / edge_mm, 0.0, 1.0)
        np.maximum(weight, inside, out=weight)
    return weight


def _enlarged(ellipsoids: tuple[Ellipsoid, ...], by_mm: float) -> tuple[Ellipsoid, ...]:
    return tuple(
        Ellipsoid(
            e.centre_mm,
            (e.radii_mm[0] + by_mm, e.radii_mm[1] + by_mm, e.radii_mm[2] + by_mm),
            e.pitch_deg,
        )
        for e in ellipsoids
    )


def _bounding_box(mask: NDArray[np.bool_]) -> Box:
    where = np.argwhere(mask)
    if where.size == 0:
        raise RuntimeError("an anatomical region lies outside the template grid")
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    return (
        slice(int(lo[0]), int(hi[0])),
        slice(int(lo[1]), int(hi[1])),
        slice(int(lo[2]), int(hi[2])),
    )


def _load_templates(resolution_mm: int) -> dict[str, object]:
    """The MNI152 2009 templates nilearn ships, at the requested resolution."""
    from nilearn import datasets

    return {
        "gm": datasets.load_mni152_gm_template(resolution=resolution_mm),
        "wm": datasets.load_mni152_wm_template(resolution=resolution_mm),
        "mask": datasets.load_mni152_brain_mask(resolution=resolution_mm),
    }


def _template_tissues(
    resolution_mm: int,
) -> tuple[NDArray[np.float64], FloatArray, FloatArray, FloatArray]:
    """The templates' affine and their grey matter, white matter and brain on the full grid."""
    images = _load_templates(resolution_mm)
    full_affine = np.asarray(images["gm"].affine, dtype=np.float64)  # type: ignore[attr-defined]
    res = float(resolution_mm)
    if not np.allclose(full_affine[:3, :3], np.eye(3) * res):
        raise RuntimeError(f"MNI152 template affine is not axis-aligned RAS at {res} mm")
    raw = {k: img.get_fdata(dtype=np.float32) for k, img in images.items()}  # type: ignore[attr-defined]
    gm = np.clip(raw["gm"], 0.0, 1.0)
    wm = np.clip(raw["wm"], 0.0, 1.0)
    # the GM template reaches slightly beyond the binary mask: the brain is their union
    brain = np.clip(np.maximum(raw["mask"], gm + wm), 0.0, 1.0)
    return full_affine, gm, wm, brain


def _head_crop(brain: FloatArray, full_shape: tuple[int, ...], res: float) -> Box:
    """The head on the full grid: the brain, its scalp layers and a margin for deformation and
    blur."""
    margin = int(np.ceil((max(far for _, far in SCALP_LAYERS_MM.values()) + 8.0) / res))
    head = _bounding_box(brain > 0.01)
    return tuple(  # type: ignore[return-value]
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(head, full_shape, strict=True)
    )


def _scalp_layers(brain: FloatArray, res: float) -> dict[str, FloatArray]:
    """Each of `SCALP_LAYERS_MM`, soft-edged, outside the brain."""
    outside_mm = ndimage.distance_transform_edt(brain < 0.5, sampling=res)
    layers = {}
    for name, (near, far) in SCALP_LAYERS_MM.items():
        layer = ((outside_mm > near) & (outside_mm <= far)).astype(np.float32)
        layers[name] = ndimage.gaussian_filter(layer, sigma=1.0 / res) * (1.0 - brain)
    return layers


def _ventricle_growth_distance(
    csf: FloatArray, ventricles: FloatArray, envelope: FloatArray, res: float
) -> FloatArray:
    """Distance (mm) from the ventricles (the CSF inside their ellipsoids) within the
    `envelope` they may grow into; infinite elsewhere."""
    core = (csf > 0.5) & (ventricles > 0.5)
    growth_distance = ndimage.distance_transform_edt(~core, sampling=res).astype(np.float32)
    # ventricles grow into the envelope only; the core itself is already ventricle
    growth_distance[(envelope <= 0.0) | core] = np.inf
    return growth_distance


def _region_labels_full(
    weights: dict[str, FloatArray], full_shape: tuple[int, ...], crop: Box
) -> NDArray[np.uint8]:
    """`REGION_LABELS` on the full template grid (where regions overlap, the first one's)."""
    labels_full = np.zeros(full_shape, dtype=np.uint8)
    labels = labels_full[crop]  # a view: filled in place
    for name, w in weights.items():
        labels[(w > 0.5) & (labels == 0)] = REGION_LABELS[name]
    return labels_full


def _make_read_only(anatomy: Anatomy) -> None:
    """Lock every array of `anatomy`: it is cached and shared (also by forked workers)."""
    for f in fields(anatomy):
        value = getattr(anatomy, f.name)
        arrays = value.values() if isinstance(value, dict) else [value]
        for array in arrays:
            if isinstance(array, np.ndarray):
                array.flags.writeable = False


@functools.lru_cache(maxsize=2)
def build_anatomy(resolution_mm: int = 2) -> Anatomy:
    """Load the templates and derive every template-space map the generator needs.

    Cached per process and read-only: the stage builds it once; forked workers share it.
    """
    res = float(resolution_mm)
    full_affine, gm, wm, brain = _template_tissues(resolution_mm)
    full_shape = gm.shape
    crop = _head_crop(brain, full_shape, res)
    affine = full_affine.copy()
    affine[:3, 3] += res * np.array([s.start for s in crop])
    gm, wm, brain = (np.ascontiguousarray(a[crop]) for a in (gm, wm, brain))
    axis_mm = tuple(affine[i, 3] + res * np.arange(gm.shape[i]) for i in range(3))

    weights = {name: ellipsoid_weight(axis_mm, e, edge_mm=res) for name, e in REGIONS.items()}
    non_cortical = np.maximum.reduce([weights[n] for n in REGIONS if n != "ventricles"])
    envelope = ellipsoid_weight(
        axis_mm, _enlarged(REGIONS["ventricles"], MAX_VENTRICLE_EXPANSION_MM), edge_mm=res
    )
    effect_regions = {
        "medial_temporal": weights["medial_temporal"],
        "putamen": weights["putamen"],
        "midbrain": weights["midbrain"],
        "ventricles": envelope,
    }
    layers = _scalp_layers(brain, res)
    fov_lower = full_affine[:3, 3].copy()
    anatomy = Anatomy(
        resolution_mm=res,
        affine=affine,
        fov_lower_mm=fov_lower,
        fov_upper_mm=fov_lower + res * (np.asarray(full_shape) - 1),
        centre_mm=affine[:3, 3] + res * np.argwhere(brain > 0.5).mean(axis=0),
        gm=gm,
        wm=wm,
        brain=brain,
        extracerebral_csf=layers["extracerebral_csf"],
        skull=layers["skull"],
        scalp=layers["scalp"],
        cortex=(1.0 - non_cortical).astype(np.float32),
        regions=effect_regions,
        region_boxes={name: _bounding_box(w > 0.0) for name, w in effect_regions.items()},
        ventricle_growth_distance_mm=_ventricle_growth_distance(
            brain - gm - wm, weights["ventricles"], envelope, res
        ),
        full_affine=full_affine,
        region_labels_full=_region_labels_full(weights, full_shape, crop),
    )
    _make_read_only(anatomy)
    return anatomy
