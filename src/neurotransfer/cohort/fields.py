"""Smooth random fields as tensor-product cubic B-splines (free-form deformations, bias fields).

A field is a coarse grid of control coefficients; its value anywhere is the weighted sum of the
cubic B-spline basis functions around that point. On a regular grid aligned with the world axes
(every grid this package samples is one) the basis is separable, so evaluating the field is three
small matrix products instead of an interpolation at each of a million voxels: the deformation
and bias fields cost milliseconds. The derivatives come from the same basis, which gives exact
Jacobians of a deformation for the true regional volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]


def cubic_bspline(t: NDArray[np.floating]) -> NDArray[np.float64]:
    """The uniform cubic B-spline basis function (support [-2, 2], integrates to 1)."""
    a = np.abs(np.asarray(t, dtype=np.float64))
    inner = 2.0 / 3.0 - a**2 + 0.5 * a**3
    outer = (2.0 - a) ** 3 / 6.0
    return np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


def cubic_bspline_derivative(t: NDArray[np.floating]) -> NDArray[np.float64]:
    """Derivative of :func:`cubic_bspline` with respect to ``t``."""
    t = np.asarray(t, dtype=np.float64)
    a = np.abs(t)
    inner = -2.0 * a + 1.5 * a**2
    outer = -0.5 * (2.0 - a) ** 2
    return np.sign(t) * np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


@dataclass(frozen=True)
class BSplineField:
    """A vector field on world space (mm): ``components`` cubic B-splines on one control grid.

    ``origin`` is the world position of control point 0 along each axis, ``spacing`` the control
    spacing in mm, ``coefficients`` has shape ``(components, nx, ny, nz)``.
    """

    origin: tuple[float, float, float]
    spacing: float
    coefficients: NDArray[np.float64]

    def axis_weights(
        self, axis: int, positions: NDArray[np.floating], derivative: bool = False
    ) -> NDArray[np.float64]:
        """Basis weights (points x control points) for world ``positions`` along ``axis``."""
        n_ctrl = self.coefficients.shape[1 + axis]
        t = (np.asarray(positions, dtype=np.float64)[:, None] - self.origin[axis]) / self.spacing
        t = t - np.arange(n_ctrl)[None, :]
        if derivative:
            return cubic_bspline_derivative(t) / self.spacing
        return cubic_bspline(t)

    def on_grid(
        self,
        xs: NDArray[np.floating],
        ys: NDArray[np.floating],
        zs: NDArray[np.floating],
        derivative_axis: int | None = None,
    ) -> FloatArray:
        """Field (or its derivative along one world axis) on the grid ``xs x ys x zs``.

        Returns ``(components, len(xs), len(ys), len(zs))`` float32.
        """
        wx, wy, wz = (
            self.axis_weights(axis, pos, derivative=derivative_axis == axis)
            for axis, pos in enumerate((xs, ys, zs))
        )
        # contract one control axis at a time, each a float32 matrix product (BLAS):
        # coefficients[c, i, j, k] -> [c, x, j, k] -> [c, x, y, k] -> field[c, x, y, z]
        coefficients = self.coefficients.astype(np.float32)
        n_comp, n_i, n_j, n_k = coefficients.shape
        out = wx.astype(np.float32) @ coefficients.reshape(n_comp, n_i, n_j * n_k)
        out = out.reshape(n_comp, len(xs), n_j, n_k)
        out = wy.astype(np.float32) @ out  # batched over [c, x]: [j, k] -> [y, k]
        return out @ wz.T.astype(np.float32)


def random_bspline_field(
    rng: np.random.Generator,
    lower_mm: NDArray[np.floating],
    upper_mm: NDArray[np.floating],
    spacing_mm: float,
    components: int,
    coefficient_sd: float,
) -> BSplineField:
    """A random smooth field covering the box ``[lower_mm, upper_mm]``.

    Control points extend two spacings beyond the box on each side so the field is fully
    supported inside it. Coefficients are i.i.d. normal with ``coefficient_sd``; the mean of
    each component is removed so the field adds no global offset (no global misalignment).
    """
    lower = np.asarray(lower_mm, dtype=np.float64) - 2.0 * spacing_mm
    upper = np.asarray(upper_mm, dtype=np.float64) + 2.0 * spacing_mm
    n_ctrl = np.ceil((upper - lower) / spacing_mm).astype(int) + 1
    coefficients = rng.normal(0.0, coefficient_sd, size=(components, *n_ctrl))
    coefficients -= coefficients.mean(axis=(1, 2, 3), keepdims=True)
    return BSplineField(
        origin=(float(lower[0]), float(lower[1]), float(lower[2])),
        spacing=float(spacing_mm),
        coefficients=coefficients,
    )
