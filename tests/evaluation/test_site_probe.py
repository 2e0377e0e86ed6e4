"""Site-predictability probe on features and the OpenBHB combined score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurotransfer.evaluation import openbhb_score, site_probe


def _sites(n: int, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    return np.array([f"site-{i}" for i in rng.integers(0, n_sites, n)])


def test_probe_finds_an_injected_site_signal() -> None:
    rng = np.random.default_rng(0)
    sites = _sites(240, 4, rng)
    features = rng.normal(0.0, 1.0, (240, 32))
    site_index = np.unique(sites, return_inverse=True)[1]
    features[np.arange(240), site_index] += 2.0  # each site shifts its own feature
    result = site_probe(features, sites, folds=5, seed=0)
    assert result["n_sites"] == 4 and result["n"] == 240 and result["folds"] == 5
    assert result["chance_level"] == pytest.approx(0.25)
    assert result["balanced_accuracy"] > 0.6  # well above chance
    assert result["dropped_sites"] == {} and result["note"] is None


def test_probe_on_pure_noise_sits_near_chance() -> None:
    rng = np.random.default_rng(1)
    sites = _sites(300, 4, rng)
    result = site_probe(rng.normal(0.0, 1.0, (300, 32)), sites, folds=5, seed=0)
    assert abs(result["balanced_accuracy"] - result["chance_level"]) < 0.1


def test_probe_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(2)
    sites = _sites(120, 3, rng)
    features = rng.normal(0.0, 1.0, (120, 16))
    assert site_probe(features, sites, seed=3) == site_probe(features, sites, seed=3)


def test_small_sites_reduce_folds_and_singletons_are_dropped_with_a_record() -> None:
    rng = np.random.default_rng(3)
    sites = np.array(["A"] * 30 + ["B"] * 30 + ["C"] * 3 + ["D"])
    features = rng.normal(0.0, 1.0, (len(sites), 8))
    result = site_probe(features, sites, folds=5, seed=0)
    assert result["dropped_sites"] == {"D": 1}
    assert result["n_sites"] == 3 and result["n"] == 63
    assert result["folds"] == 3  # site C has 3 samples
    assert "folds reduced from 5 to 3" in result["note"]
    assert result["chance_level"] == pytest.approx(1 / 3)


def test_single_site_has_nothing_to_probe() -> None:
    result = site_probe(np.zeros((10, 4)), ["A"] * 10)
    assert math.isnan(result["balanced_accuracy"])
    assert result["n_sites"] == 1 and "nothing to probe" in result["note"]


def test_probe_rejects_mismatched_or_non_finite_features() -> None:
    with pytest.raises(ValueError, match="3 site labels for 4 feature rows"):
        site_probe(np.zeros((4, 2)), ["A", "B", "A"])
    with pytest.raises(ValueError, match="non-finite"):
        site_probe(np.full((4, 2), np.nan), ["A", "B", "A", "B"])
    with pytest.raises(ValueError, match="1 missing label"):
        site_probe(np.zeros((4, 2)), ["A", "B", None, "B"])


def test_openbhb_score_is_bacc_to_the_point_three_times_mae() -> None:
    assert openbhb_score(4.0, 0.5, 10) == pytest.approx(0.5**0.3 * 4.0)
    # Lower is better: less site information or a smaller error both lower the score.
    assert openbhb_score(4.0, 0.2, 10) < openbhb_score(4.0, 0.5, 10)
    assert openbhb_score(3.0, 0.5, 10) < openbhb_score(4.0, 0.5, 10)
    assert openbhb_score(4.0, 1.0, 10) == pytest.approx(4.0)


def test_openbhb_score_is_nan_when_undefined_and_rejects_impossible_values() -> None:
    assert math.isnan(openbhb_score(4.0, 0.5, 1))
    assert math.isnan(openbhb_score(float("nan"), 0.5, 10))
    assert math.isnan(openbhb_score(4.0, float("nan"), 10))
    with pytest.raises(ValueError, match="balanced accuracy"):
        openbhb_score(4.0, 1.5, 10)
    with pytest.raises(ValueError, match="MAE"):
        openbhb_score(-1.0, 0.5, 10)
