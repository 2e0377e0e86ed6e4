"""Volumes measured from the arrays, covariate scaling, and drawing covariates from the pool."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurotransfer.synth.covariates import (
    COVARIATES,
    CovariateScaler,
    VolumeMeasurement,
    draw_covariates,
    otsu_csf_threshold,
)
from tests.synth.phantoms import CSF, GREY, WHITE, phantom_volume

MEASURE = VolumeMeasurement(foreground_threshold=0.05, csf_threshold=0.3, voxel_volume_ml=0.064)


def ball(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape) - (np.array(shape) - 1)[:, None, None, None] / 2
    return np.sqrt((grid**2).sum(axis=0)) <= radius


def test_measures_enclosed_csf_and_tissue_in_ml() -> None:
    volume = np.where(ball((21, 21, 21), 8), WHITE, 0.0).astype(np.float32)
    cavity = ball((21, 21, 21), 3)
    volume[cavity] = CSF
    csf_ml, brain_ml = MEASURE.measure(volume)
    assert csf_ml == pytest.approx(cavity.sum() * 0.064)
    assert brain_ml == pytest.approx((ball((21, 21, 21), 8) & ~cavity).sum() * 0.064)


def test_dark_background_and_stray_specks_are_not_brain_or_csf() -> None:
    volume = np.where(ball((21, 21, 21), 6), GREY, 0.0).astype(np.float32)
    volume[0, 0, 0] = WHITE  # a bright speck outside the brain, as sampling noise makes
    volume[volume == 0] = CSF  # a noisy dark background at CSF intensity
    csf_ml, brain_ml = MEASURE.measure(volume)
    assert csf_ml == 0.0
    assert brain_ml == pytest.approx(ball((21, 21, 21), 6).sum() * 0.064)


def test_phantom_ventricles_grow_and_brain_shrinks_with_age() -> None:
    rng = np.random.default_rng(0)
    young = MEASURE.measure(phantom_volume((24, 24, 24), 25, "F", rng))
    old = MEASURE.measure(phantom_volume((24, 24, 24), 85, "F", rng))
    assert old[0] > young[0] > 0
    assert old[1] < young[1]


def test_otsu_threshold_separates_csf_from_grey_matter() -> None:
    rng = np.random.default_rng(1)
    volumes = [phantom_volume((24, 24, 24), age, "M", rng) for age in (30, 60, 85)]
    threshold = otsu_csf_threshold(volumes, foreground_threshold=0.05)
    assert CSF < threshold < GREY


def test_otsu_threshold_rejects_empty_volumes() -> None:
    with pytest.raises(ValueError, match="no voxels above the foreground"):
        otsu_csf_threshold([np.zeros((8, 8, 8), np.float32)], foreground_threshold=0.05)


def pool_table() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    age = rng.uniform(20, 90, 60)
    return pd.DataFrame(
        {
            "sex": np.where(np.arange(60) % 3, "M", "F"),
            "age": age,
            "csf_volume_ml": 10 + 0.8 * age + rng.normal(0, 3, 60),
            "brain_volume_ml": 1300 - 4 * age + rng.normal(0, 20, 60),
        }
    )


def test_scaler_maps_the_pool_to_unit_range_in_bundle_order_and_back() -> None:
    table = pool_table()
    scaler = CovariateScaler.fit(table)
    scaled = scaler.transform(table)
    assert scaled.shape == (60, len(COVARIATES))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_array_equal(scaled[:, 0], (table["sex"] == "M").astype(np.float32))
    back = scaler.inverse(scaled)
    assert list(back["sex"]) == list(table["sex"])
    np.testing.assert_allclose(back["age"], table["age"], rtol=1e-5)
    restored = CovariateScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(restored.transform(table), scaled)


def test_scaler_clips_values_outside_the_pool_range(caplog: pytest.LogCaptureFixture) -> None:
    table = pool_table()
    scaler = CovariateScaler.fit(table)
    request = table.iloc[:1].assign(age=150.0)
    assert scaler.transform(request)[0, 1] == 1.0
    assert "outside the training range" in caplog.text


def test_scaler_refuses_a_constant_covariate_and_unknown_sex() -> None:
    table = pool_table()
    with pytest.raises(ValueError, match="'age' is constant"):
        CovariateScaler.fit(table.assign(age=50.0))
    scaler = CovariateScaler.fit(table)
    with pytest.raises(ValueError, match="sex must be one of"):
        scaler.transform(table.assign(sex="X"))


def test_drawn_covariates_keep_the_pool_correlations_and_are_reproducible() -> None:
    table = pool_table()
    scaler = CovariateScaler.fit(table)
    drawn = draw_covariates(table, scaler, n=500, jitter=0.05, seed=3)
    assert drawn.shape == (500, 4) and drawn.min() >= 0.0 and drawn.max() <= 1.0
    assert set(np.unique(drawn[:, 0])) <= {0.0, 1.0}
    assert np.corrcoef(drawn[:, 1], drawn[:, 2])[0, 1] > 0.8  # older -> more CSF, as the pool
    np.testing.assert_array_equal(drawn, draw_covariates(table, scaler, 500, 0.05, seed=3))
    assert not np.array_equal(drawn, draw_covariates(table, scaler, 500, 0.05, seed=4))


def test_a_ventricle_leaking_through_a_narrow_gap_still_counts_as_csf() -> None:
    volume = np.where(ball((21, 21, 21), 8), WHITE, 0.0).astype(np.float32)
    cavity = ball((21, 21, 21), 3)
    volume[cavity] = CSF
    volume[10, 10, 10:] = CSF  # a one-voxel channel from the ventricle to the outside
    csf_ml, _ = MEASURE.measure(volume)
    assert csf_ml >= cavity.sum() * 0.064


def test_closing_scales_with_the_voxel_size() -> None:
    assert VolumeMeasurement.for_spacing(0.05, 0.3, (4.0, 4.0, 4.0)).closing_iterations == 1
    fine = VolumeMeasurement.for_spacing(0.05, 0.3, (1.5, 1.5, 1.5))
    assert fine.closing_iterations == 3
    assert fine.voxel_volume_ml == pytest.approx(1.5**3 / 1000)
    assert VolumeMeasurement.from_dict(fine.to_dict()) == fine
