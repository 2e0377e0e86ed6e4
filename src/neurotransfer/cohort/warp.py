"""A subject's head: global size and a smooth random deformation of the template anatomy.

The warp is stored as the pull-back map from the subject's space (world mm, which is MNI152 mm
for every written scan) to the template:

    template(x) = c + (x - c) / head_scale + u(x)

with ``c`` the template brain's centre and ``u`` a smooth cubic B-spline displacement whose
coefficients have zero mean. So a subject is the template scaled about its centre and gently
deformed, never globally shifted: the preprocess stage can resample by world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from neurotransfer.cohort.anatomy import Anatomy
from neurotransfer.cohort.fields import BSplineField, random_bspline_field

# Shape variability: a displacement with control points every 30 mm; coefficient s.d. 2.5 mm
# gives about 1.5 mm RMS displacement over the head (recorded per subject).
DEFORMATION_CONTROL_SPACING_MM = 30.0
DEFORMATION_COEFFICIENT_SD_MM = 2.5


@dataclass(frozen=True)
class SubjectWarp:
    """``template(x) = centre + (x - centre) / head_scale + displacement(x)`` (all in mm)."""

    head_scale: float
    centre_mm: NDArray[np.float64]
    displacement: BSplineField  # u(x), three components, mm

    def template_voxels(
        self,
        anatomy: Anatomy,
        xs: NDArray[np.floating],
        ys: NDArray[np.floating],
        zs: NDArray[np.floating],
    ) -> NDArray[np.float32]:
        """Template voxel coordinates ``(3, nx, ny, nz)`` of the subject-space grid xs x ys x zs.

        The global part is separable, so only the displacement is a full-size computation.
        """
        coords = self.displacement.on_grid(xs, ys, zs)
        coords /= np.float32(anatomy.resolution_mm)
        for axis, positions in enumerate((xs, ys, zs)):
            scaled = self.centre_mm[axis] + (positions - self.centre_mm[axis]) / self.head_scale
            index = ((scaled - anatomy.affine[axis, 3]) / anatomy.resolution_mm).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = -1
            coords[axis] += index.reshape(shape)
        return coords

    def volume_ratio_on_template(self, anatomy: Anatomy, stride: int = 2) -> NDArray[np.float32]:
        """Subject volume per template volume at each template voxel (the Jacobian).

        A template voxel at ``y`` lands at ``x ~ c + s (y - c)`` in the subject (to first order
        in the small displacement), where the pull-back has derivative ``I / s + Du(x)``; the
        ratio is ``1 / det`` of that. Evaluated every ``stride`` voxels (the field varies over
        30 mm) and repeated to full size.
        """
        template_axes = [a[::stride] for a in anatomy.axis_mm()]
        subject_axes = [
            self.centre_mm[i] + self.head_scale * (template_axes[i] - self.centre_mm[i])
            for i in range(3)
        ]
        jacobian = np.empty((3, 3, *(len(a) for a in subject_axes)), dtype=np.float32)
        for axis in range(3):  # d u_c / d x_axis for every component c
            jacobian[:, axis] = self.displacement.on_grid(*subject_axes, derivative_axis=axis)
            jacobian[axis, axis] += np.float32(1.0 / self.head_scale)
        (a, b, c), (d, e, f), (g, h, i) = jacobian
        det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
        if np.any(det <= 0.0):
            raise RuntimeError("subject deformation folds (non-positive Jacobian); lower its s.d.")
        ratio = (1.0 / det).astype(np.float32)
        for axis in range(3):
            ratio = np.repeat(ratio, stride, axis=axis)
        return ratio[: anatomy.shape[0], : anatomy.shape[1], : anatomy.shape[2]]

    def displacement_rms_mm(self, anatomy: Anatomy, stride: int = 4) -> float:
        """RMS length of the displacement over the template brain."""
        axes = [a[::stride] for a in anatomy.axis_mm()]
        u = self.displacement.on_grid(*axes)
        inside = anatomy.brain[::stride, ::stride, ::stride] > 0.5
        return float(np.sqrt((u**2).sum(axis=0)[inside].mean()))


def draw_warp(rng: np.random.Generator, head_scale: float, anatomy: Anatomy) -> SubjectWarp:
    field = random_bspline_field(
        rng,
        anatomy.fov_lower_mm,
        anatomy.fov_upper_mm,
        spacing_mm=DEFORMATION_CONTROL_SPACING_MM,
        components=3,
        coefficient_sd=DEFORMATION_COEFFICIENT_SD_MM,
    )
    return SubjectWarp(head_scale=head_scale, centre_mm=anatomy.centre_mm, displacement=field)
