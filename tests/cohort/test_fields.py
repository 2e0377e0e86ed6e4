"""Smooth B-spline fields: the basis sums to one, derivatives are right, fields are smooth."""

from __future__ import annotations

import numpy as np

from neurotransfer.cohort.fields import BSplineField, random_bspline_field


def test_constant_coefficients_give_a_constant_field() -> None:
    field = BSplineField(
        origin=(-40.0, -40.0, -40.0), spacing=10.0, coefficients=np.full((1, 10, 10, 10), 3.0)
    )
    axis = np.linspace(-15.0, 15.0, 7)
    values = field.on_grid(axis, axis, axis)
    np.testing.assert_allclose(values, 3.0, rtol=1e-5)  # cubic B-splines are a partition of unity
    np.testing.assert_allclose(field.on_grid(axis, axis, axis, derivative_axis=1), 0.0, atol=1e-5)


def test_derivative_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    field = random_bspline_field(rng, np.full(3, -30.0), np.full(3, 30.0), 15.0, 2, 1.0)
    xs, ys, zs = np.linspace(-20, 20, 9), np.linspace(-20, 20, 8), np.linspace(-20, 20, 7)
    h = 1e-3
    for axis in range(3):
        grids = [xs, ys, zs]
        plus = [g.copy() for g in grids]
        minus = [g.copy() for g in grids]
        plus[axis] = plus[axis] + h
        minus[axis] = minus[axis] - h
        numeric = (field.on_grid(*plus).astype(np.float64) - field.on_grid(*minus)) / (2 * h)
        analytic = field.on_grid(xs, ys, zs, derivative_axis=axis)
        np.testing.assert_allclose(analytic, numeric, atol=2e-3 * np.abs(analytic).max())


def test_random_field_is_centred_smooth_and_seeded() -> None:
    lower, upper = np.full(3, -60.0), np.full(3, 60.0)
    a = random_bspline_field(np.random.default_rng(0), lower, upper, 30.0, 3, 2.0)
    b = random_bspline_field(np.random.default_rng(0), lower, upper, 30.0, 3, 2.0)
    c = random_bspline_field(np.random.default_rng(1), lower, upper, 30.0, 3, 2.0)
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    assert not np.allclose(a.coefficients, c.coefficients)
    np.testing.assert_allclose(a.coefficients.mean(axis=(1, 2, 3)), 0.0, atol=1e-12)
    axis = np.arange(-60.0, 61.0, 2.0)
    values = a.on_grid(axis, axis, axis)
    # neighbouring 2 mm voxels barely differ next to the field's overall spread
    step = np.abs(np.diff(values, axis=1)).mean()
    assert step < 0.1 * values.std()
