"""Quality and privacy metrics move the right way on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from neurotransfer.synth import quality
from tests.synth.phantoms import phantom_volume


def phantoms(n: int, seed: int, shape: tuple[int, int, int] = (24, 24, 24)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    volumes = [phantom_volume(shape, rng.uniform(20, 90), "MF"[i % 2], rng) for i in range(n)]
    return torch.from_numpy(np.stack(volumes)).unsqueeze(1)


@pytest.mark.parametrize(
    ("shape", "kernel", "scales"),
    [((40, 48, 40), 7, 3), ((128, 128, 128), 7, 5), ((16, 16, 16), 3, 3), ((16, 16, 16), 7, 2)],
)
def test_ms_ssim_uses_the_scales_the_volume_allows(
    shape: tuple[int, int, int], kernel: int, scales: int
) -> None:
    weights = quality.ms_ssim_weights(shape, kernel)
    assert len(weights) == scales
    assert sum(weights) == pytest.approx(1.0)


def test_ms_ssim_refuses_volumes_smaller_than_the_kernel() -> None:
    with pytest.raises(ValueError, match="smaller than the MS-SSIM kernel"):
        quality.ms_ssim_weights((6, 6, 6), 7)


def test_identical_volumes_are_least_diverse() -> None:
    volumes = phantoms(6, seed=0)
    copies = volumes[:1].repeat(6, 1, 1, 1, 1)
    assert quality.diversity(copies, n_pairs=10, kernel_size=3, seed=0) == pytest.approx(1.0)
    assert quality.diversity(volumes, n_pairs=10, kernel_size=3, seed=0) < 0.99


def test_random_pairs_are_distinct_and_capped() -> None:
    pairs = quality.random_pairs(10, n_pairs=20, seed=0)
    assert len(pairs) == 20 and len({tuple(p) for p in pairs}) == 20
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(quality.random_pairs(4, n_pairs=100, seed=0)) == 6


def test_reconstruction_metrics_reward_the_better_reconstruction() -> None:
    originals = phantoms(3, seed=1)
    good = quality.reconstruction_metrics(originals, (originals + 0.01).clamp(0, 1), 3)
    bad = quality.reconstruction_metrics(originals, (originals * 0.5), 3)
    assert good["mae"] < bad["mae"]
    assert good["psnr_db"] > bad["psnr_db"]
    assert good["ms_ssim"] > bad["ms_ssim"]


def test_feature_distance_is_zero_for_the_same_set_and_grows_with_a_shift() -> None:
    network = quality.feature_network(seed=0)
    real = quality.extract_features(network, phantoms(12, seed=2), torch.device("cpu"), 4)
    same = quality.extract_features(network, phantoms(12, seed=2), torch.device("cpu"), 4)
    other = quality.extract_features(network, phantoms(12, seed=3), torch.device("cpu"), 4)
    darker = quality.extract_features(network, phantoms(12, seed=3) * 0.5, torch.device("cpu"), 4)
    assert real.shape == (12, 512)
    assert quality.frechet_distance(real, same) == pytest.approx(0.0, abs=1e-6)
    assert quality.frechet_distance(real, darker) > quality.frechet_distance(real, other)


def test_memorised_training_scans_are_flagged_and_new_ones_are_not() -> None:
    training, heldout = phantoms(10, seed=4), phantoms(5, seed=5)
    generator = torch.Generator().manual_seed(0)
    copied = training[:3] + 0.001 * torch.randn(training[:3].shape, generator=generator)
    # as far from the training scans as unseen real scans are (plus independent noise)
    unseen = heldout + 0.01 * torch.randn(heldout.shape, generator=generator)
    samples = torch.cat([copied, unseen])
    result = quality.memorisation_check(
        quality.flatten_for_distance(samples, 1),
        quality.flatten_for_distance(training, 1),
        quality.flatten_for_distance(heldout, 1),
        quantile=0.0,
    )
    assert result.flagged.tolist() == [True] * 3 + [False] * 5
    assert result.sample_neighbour[:3].tolist() == [0, 1, 2]
    assert result.summary()["flagged"] == 3


def test_nearest_neighbour_distance_is_rms_and_downsampling_shrinks_rows() -> None:
    a = torch.zeros(1, 1, 4, 4, 4)
    b = torch.full((1, 1, 4, 4, 4), 0.5)
    distance, index = quality.nearest_neighbours(
        quality.flatten_for_distance(a, 1), quality.flatten_for_distance(b, 1)
    )
    assert distance[0] == pytest.approx(0.5) and index[0] == 0
    assert quality.flatten_for_distance(a, 2).shape == (1, 8)


def test_conditioning_agreement_reports_correlation_and_error() -> None:
    requested = pd.DataFrame(
        {"csf_volume_ml": [10.0, 20, 30, 40], "brain_volume_ml": [900.0, 1000, 1100, 1200]}
    )
    measured = np.array([[12.0, 1200], [19, 1100], [33, 1000], [41, 900]])
    result = quality.conditioning_agreement(requested, measured)
    assert result["csf_volume_ml"]["pearson_r"] > 0.95
    assert result["csf_volume_ml"]["mean_abs_error_ml"] == pytest.approx(1.75)
    assert result["brain_volume_ml"]["pearson_r"] == pytest.approx(-1.0)
    assert result["brain_volume_ml"]["slope"] == pytest.approx(-1.0)
