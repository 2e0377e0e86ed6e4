"""Subject anatomy from the MNI152 2009 tissue templates that nilearn ships (no download).

A subject is the template's grey-matter (GM), white-matter (WM) and CSF probability maps
(CSF = brain mask minus GM minus WM), warped by a smooth random deformation, a head-size scale
about the brain centre and a local magnification of the ventricles, and then thinned in chosen
regions: GM that is lost becomes CSF, as atrophy does on a T1 scan.

Regions cannot come from a downloaded atlas, so they are soft ellipsoids around MNI152
coordinates (millimetres, RAS). Centres follow the centroids of the Harvard-Oxford subcortical
atlas (hippocampus ~(+-26, -21, -14), amygdala ~(+-23, -5, -19), putamen ~(+-25, 2, 0)), the
midbrain / substantia nigra level of the Talairach-Tournoux atlas (~(0, -22, -10)) and, for the
lateral ventricles, the centroid of the template's own CSF > 0.5 voxels within 25 mm of the
midline (measured: (0, -14, 13), spanning y -44..32 and z -4..30). Ellipsoid weights are
evaluated at the template-space position each subject voxel samples from, so they move with the
anatomy without being resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.special import expit


@dataclass(frozen=True)
class Ellipsoid:
    """A soft ellipsoid in MNI mm: weight ~1 inside, ~0 outside, a 10 % soft edge."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]

    def radius(self, points_mm: np.ndarray) -> np.ndarray:
        """Normalised ellipsoidal radius (1 on the surface) of points shaped ``[3, ...]``."""
        squared = None
        for axis in range(3):
            term = (points_mm[axis] - np.float32(self.centre[axis])) / np.float32(
                self.semi_axes[axis]
            )
            squared = term * term if squared is None else squared + term * term
        return np.sqrt(squared)

    def weight(self, points_mm: np.ndarray) -> np.ndarray:
        return expit((1.0 - self.radius(points_mm)) / 0.1).astype(np.float32)


def _mirrored(centre: tuple[float, float, float], axes: tuple[float, float, float]) -> tuple:
    left = Ellipsoid((-abs(centre[0]), centre[1], centre[2]), axes)
    right = Ellipsoid((abs(centre[0]), centre[1], centre[2]), axes)
    return left, right


# Medial temporal lobe: hippocampus with the amygdala in front of it (one ellipsoid a side).
MEDIAL_TEMPORAL = _mirrored((26.0, -18.0, -15.0), (8.0, 20.0, 10.0))
PUTAMEN = _mirrored((25.0, 2.0, 0.0), (6.0, 12.0, 8.0))
MIDBRAIN = (Ellipsoid((0.0, -22.0, -10.0), (10.0, 9.0, 8.0)),)
# Lateral (and third) ventricles: the CSF inside this ellipsoid.
VENTRICLES = (Ellipsoid((0.0, -12.0, 12.0), (24.0, 38.0, 18.0)),)
# Deep grey matter (basal ganglia, thalami) excluded from "cortex" together with the above.
DEEP_GREY = (Ellipsoid((0.0, -8.0, 4.0), (32.0, 30.0, 18.0)),)


def region_weight(regions: tuple[Ellipsoid, ...], points_mm: np.ndarray) -> np.ndarray:
    """Union (maximum) of the soft weights of several ellipsoids at ``[3, ...]`` points."""
    weight = regions[0].weight(points_mm)
    for region in regions[1:]:
        np.maximum(weight, region.weight(points_mm), out=weight)
    return weight


@dataclass(frozen=True, eq=False)  # hashed by identity: site grids are cached per template
class Template:
    """The cropped MNI152 tissue maps and the grid they live on."""

    gm: np.ndarray  # float32 probability maps on the cropped template grid
    wm: np.ndarray
    brain: np.ndarray  # brain mask (0/1) as float32
    near_brain: np.ndarray  # bool: voxels within one voxel (26-neighbourhood) of the brain
    affine: np.ndarray  # voxel -> MNI mm of the cropped grid
    brain_centre_mm: np.ndarray  # centroid of the brain mask, the centre of head-size scaling
    fov_min_mm: np.ndarray  # corners of the field of view every site grid covers
    fov_max_mm: np.ndarray

    @property
    def spacing_mm(self) -> float:
        return float(self.affine[0, 0])


# Room around the brain for larger heads and deformations (mm).
FOV_MARGIN_MM = 8.0


@lru_cache(maxsize=2)
def load_template(resolution_mm: int = 2) -> Template:
    """Load nilearn's MNI152 2009 GM/WM/brain-mask templates and crop them to the brain."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=resolution_mm)
    wm_img = datasets.load_mni152_wm_template(resolution=resolution_mm)
    mask_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    brain = np.asarray(mask_img.get_fdata(), dtype=np.float32) > 0.5
    gm = np.clip(np.asarray(gm_img.get_fdata(), dtype=np.float32), 0.0, 1.0) * brain
    wm = np.clip(np.asarray(wm_img.get_fdata(), dtype=np.float32), 0.0, 1.0) * brain
    # Probabilities must not exceed one in total, whatever rounding the templates carry.
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]

    spacing = float(affine[0, 0])
    pad = int(np.ceil(FOV_MARGIN_MM / spacing))
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    cropped_affine = affine.copy()
    cropped_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]

    brain_c = brain[crop].astype(np.float32)
    centre_vox = np.argwhere(brain_c > 0).mean(axis=0)
    centre_mm = cropped_affine[:3, :3] @ centre_vox + cropped_affine[:3, 3]
    corner_max = cropped_affine[:3, :3] @ (np.array(brain_c.shape) - 1) + cropped_affine[:3, 3]
    return Template(
        gm=np.ascontiguousarray(gm[crop]),
        wm=np.ascontiguousarray(wm[crop]),
        brain=np.ascontiguousarray(brain_c),
        near_brain=ndimage.binary_dilation(brain_c > 0, structure=np.ones((3, 3, 3), bool)),
        affine=cropped_affine,
        brain_centre_mm=centre_mm,
        fov_min_mm=cropped_affine[:3, 3].copy(),
        fov_max_mm=corner_max,
    )


def _interpolation_matrix(size: int, control_points: int) -> np.ndarray:
    """[size, control_points] weights of a normalised Gaussian kernel over evenly spaced knots."""
    positions = np.linspace(0.0, control_points - 1.0, size)
    knots = np.arange(control_points)
    weights = np.exp(-0.5 * ((positions[:, None] - knots[None, :]) / 0.7) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth_random_field(
    rng: np.random.Generator, shape: tuple[int, ...], control_points: int, n_fields: int = 1
) -> np.ndarray:
    """``n_fields`` smooth random fields of unit standard deviation on a grid of ``shape``.

    White noise on a coarse ``control_points``^3 lattice, interpolated separably with a
    Gaussian kernel (three small matrix products: much cheaper than spline zooming):
    variation over a few centimetres, like a bias field or inter-subject shape differences.
    """
    coarse = rng.standard_normal((n_fields, *([control_points] * 3))).astype(np.float32)
    mx, my, mz = (_interpolation_matrix(s, control_points) for s in shape)
    fields = (mx @ coarse.reshape(n_fields, control_points, -1)).reshape(
        n_fields, shape[0], control_points, control_points
    )
    fields = (my @ fields) @ mz.T  # matrix products broadcast over the leading axes
    fields -= fields.mean(axis=(1, 2, 3), keepdims=True)
    fields /= fields.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    return np.ascontiguousarray(fields)


@dataclass(frozen=True)
class Warp:
    """The subject -> template mapping: head scale, random displacement, ventricle magnification."""

    head_scale: float  # linear size factor about the brain centre (>1: larger head)
    displacement_mm: np.ndarray  # [3, *grid] smooth random displacement, in mm
    ventricle_magnification: float  # linear factor at the ventricle centre (>=1)


def template_positions(grid_mm: np.ndarray, warp: Warp, template: Template) -> np.ndarray:
    """Template-space mm each subject-space point ``[3, *grid]`` takes its tissue from."""
    centre = template.brain_centre_mm.astype(np.float32).reshape(3, 1, 1, 1)
    source = centre + (grid_mm - centre) / np.float32(warp.head_scale) + warp.displacement_mm
    # Local magnification x -> c + (x - c)(1 - s w(x)) with a Gaussian w around the ventricles:
    # the ventricles look 1/(1-s) times larger in each direction and push the periventricular
    # tissue outwards, as ventricular enlargement does. Invertible for s < 1.
    (ventricles,) = VENTRICLES
    shrink = 1.0 - 1.0 / warp.ventricle_magnification
    if shrink > 0:
        vent_centre = np.asarray(ventricles.centre, np.float32).reshape(3, 1, 1, 1)
        gauss = np.exp(-0.5 * ventricles.radius(source) ** 2)
        source = source - np.float32(shrink) * gauss * (source - vent_centre)
    return source


def template_voxel_coordinates(source_mm: np.ndarray, template: Template) -> np.ndarray:
    """Continuous template voxel indices ``[3, N]`` of mm positions ``[3, N]``."""
    inv = np.linalg.inv(template.affine).astype(np.float32)
    return inv[:3, :3] @ source_mm + inv[:3, 3:4]


def near_brain(voxel_coords: np.ndarray, template: Template) -> np.ndarray:
    """Which positions can receive tissue: their nearest template voxel is within one voxel of
    the brain, so every trilinear corner outside this set is zero and skipping them is exact."""
    nearest = np.rint(voxel_coords).astype(np.int64)
    shape = np.array(template.brain.shape)[:, None]
    inside = np.all((nearest >= 0) & (nearest < shape), axis=0)
    keep = np.zeros(voxel_coords.shape[1], bool)
    idx = nearest[:, inside]
    keep[inside] = template.near_brain[idx[0], idx[1], idx[2]]
    return keep


def sample_tissues(voxel_coords: np.ndarray, template: Template) -> np.ndarray:
    """Trilinear GM, WM and brain-mask values ``[3, N]`` at template voxel coordinates."""
    out = np.empty((3, voxel_coords.shape[1]), np.float32)
    for channel, volume in enumerate((template.gm, template.wm, template.brain)):
        ndimage.map_coordinates(volume, voxel_coords, output=out[channel], order=1, mode="constant")
    return out
