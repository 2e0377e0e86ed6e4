"""Training on the phantom pool: losses fall, and conditioning moves the measured volumes of the
samples in the requested direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neurotransfer.synth.covariates import CovariateScaler, VolumeMeasurement, otsu_csf_threshold
from neurotransfer.synth.networks import UNCONDITIONAL_VALUE, build_autoencoder, build_unet
from neurotransfer.synth.pool import load_volumes, read_pool
from neurotransfer.synth.sampling import sample_volumes
from neurotransfer.synth.training import (
    LatentDiffusionModule,
    encode_posteriors,
    kl_divergence,
    latent_scale_factor,
    train_autoencoder,
    train_diffusion,
)
from tests.synth.helpers import needs_einops, tiny_settings
from tests.synth.phantoms import write_phantom_pool

SHAPE = (16, 16, 16)


def test_kl_divergence_is_zero_for_the_prior_and_grows_away_from_it() -> None:
    zeros, ones = torch.zeros(2, 3, 4, 4, 4), torch.ones(2, 3, 4, 4, 4)
    assert float(kl_divergence(zeros, ones)) == pytest.approx(0.0)
    assert float(kl_divergence(zeros + 1, ones)) == pytest.approx(0.5 * 3 * 64)
    assert float(kl_divergence(zeros, ones * 0.5)) > 0


@needs_einops
@pytest.mark.slow
def test_conditioning_moves_the_measured_volumes_in_the_requested_direction(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    write_phantom_pool(tmp_path, n_pool=48, shape=SHAPE)
    pool = read_pool(tmp_path / "data/processed/manifest.csv", tmp_path).scans
    paths = list(pool["path"])
    volumes = load_volumes(paths, SHAPE)
    measurement = VolumeMeasurement(0.05, otsu_csf_threshold(volumes, 0.05), 0.064)
    measured = measurement.measure_all(volumes)
    pool = pool.assign(csf_volume_ml=measured[:, 0], brain_volume_ml=measured[:, 1])
    scaler = CovariateScaler.fit(pool)

    settings = tiny_settings(
        autoencoder={"epochs": 30, "batch_size": 8, "lr": 2e-3},
        diffusion={
            "epochs": 100,
            "batch_size": 16,
            "lr": 2e-3,
            "condition_dropout": 0.15,
            "guidance_scale": 3.0,
        },
    ).synthesize
    assert settings is not None
    autoencoder = build_autoencoder(settings.autoencoder.net)
    ae_summary = train_autoencoder(autoencoder, paths, SHAPE, settings, log_dir=None)
    assert ae_summary.final_loss < 0.08  # L1 on intensities in [0, 1]
    z_mu, z_sigma = encode_posteriors(autoencoder, paths, SHAPE, 16, torch.device("cpu"))
    scale_factor = latent_scale_factor(z_mu, z_sigma, seed=0)
    unet = build_unet(settings.diffusion.net, latent_channels=3)
    diffusion_summary = train_diffusion(
        unet, z_mu, z_sigma, scaler.transform(pool), scale_factor, settings, log_dir=None
    )
    assert diffusion_summary.final_loss < 0.5

    by_age = pool.sort_values("age")
    young, old = by_age.iloc[:8], by_age.iloc[-8:]  # small vs large ventricles and brains
    conditioning = torch.from_numpy(scaler.transform(pd.concat([young, old])))
    samples, _ = sample_volumes(
        autoencoder,
        unet,
        conditioning,
        latent_shape=(8, 8, 8),
        latent_channels=3,
        scale_factor=scale_factor,
        schedule=settings.diffusion.schedule,
        ddim_steps=20,
        batch_size=16,
        seed=0,
        device=torch.device("cpu"),
        guidance_scale=settings.diffusion.guidance_scale,
    )
    result = measurement.measure_all(samples[:, 0].numpy())
    young_brain, old_brain = result[:8, 1].mean(), result[8:, 1].mean()
    assert young_brain > old_brain  # the requested brains were larger for the young
    # a direction, not a size: two minutes of CPU training condition weakly (r ~0.2 here)
    assert (
        np.corrcoef(scaler.inverse(conditioning.numpy())["brain_volume_ml"], result[:, 1])[0, 1]
        > 0.0
    )


@needs_einops
def test_condition_dropout_replaces_whole_covariate_rows_by_the_unconditional_value() -> None:
    settings = tiny_settings(diffusion={"condition_dropout": 0.5}).synthesize
    assert settings is not None
    module = LatentDiffusionModule(build_unet(settings.diffusion.net, 3), settings.diffusion, 1.0)
    seen: list[torch.Tensor] = []

    def record(**kwargs: torch.Tensor) -> torch.Tensor:
        seen.append(kwargs["condition"])
        return kwargs["noise"]

    module.inferer = record  # type: ignore[assignment]
    conditioning = torch.rand(32, 4)
    torch.manual_seed(0)
    module.training_step((torch.zeros(32, 3, 4, 4, 4), torch.ones(32, 3, 4, 4, 4), conditioning), 0)
    given = seen[0][:, 0, :]
    dropped = (given == UNCONDITIONAL_VALUE).all(dim=1)
    assert 0 < int(dropped.sum()) < 32
    torch.testing.assert_close(given[~dropped], conditioning[~dropped])
