"""DDIM sampling through MONAI's LatentDiffusionInferer: shapes, range, reproducibility, and
resampling between the model's grid and the preprocess grid."""

from __future__ import annotations

import pytest
import torch

from neurotransfer.config import AutoencoderNetSettings, DiffusionNetSettings, NoiseScheduleSettings
from neurotransfer.synth.networks import (
    CovariateConditionedUNet,
    build_autoencoder,
    build_unet,
    latent_shape,
)
from neurotransfer.synth.sampling import ddim_scheduler, resample_to_grid, sample_volumes
from tests.synth.helpers import needs_einops, randomise

AE_NET = AutoencoderNetSettings(channels=[8, 16], attention_levels=[False, False])
UNET_NET = DiffusionNetSettings(
    channels=[16, 32], attention_levels=[False, True], num_head_channels=[0, 16]
)


def test_latent_shape_follows_the_downsampling_and_names_a_bad_shape() -> None:
    assert latent_shape((16, 24, 32), AE_NET, UNET_NET) == (8, 12, 16)
    with pytest.raises(
        ValueError,
        match=r"data\.preprocess\.shape \(16, 16, 18\) must be "
        r"divisible by 4",
    ):
        latent_shape((16, 16, 18), AE_NET, UNET_NET)


def test_ddim_steps_cannot_exceed_training_timesteps() -> None:
    with pytest.raises(ValueError, match="exceeds the 1000 training timesteps"):
        ddim_scheduler(NoiseScheduleSettings(), steps=1001)
    assert len(ddim_scheduler(NoiseScheduleSettings(), steps=10).timesteps) == 10


@needs_einops
def test_conditioned_unet_concatenates_and_attends_to_the_covariates() -> None:
    model = CovariateConditionedUNet(randomise(build_unet(UNET_NET, latent_channels=3), 0)).eval()
    x = torch.randn(2, 3, 8, 8, 8)
    context = torch.rand(2, 1, 4)
    with torch.no_grad():
        out = model(x, timesteps=torch.tensor([10, 500]), context=context)
        other = model(x, timesteps=torch.tensor([10, 500]), context=1 - context)
    assert out.shape == x.shape
    assert not torch.allclose(out, other)  # the covariates reach the prediction
    with pytest.raises(ValueError, match=r"context must have shape \[B, 1, 4\]"):
        model(x, timesteps=torch.tensor([10, 500]), context=torch.rand(2, 4))


@needs_einops
def test_samples_have_the_image_shape_unit_range_and_do_not_depend_on_batching() -> None:
    autoencoder = randomise(build_autoencoder(AE_NET), 1)
    unet = randomise(build_unet(UNET_NET, 3), 2)
    conditioning = torch.rand(5, 4)

    def sample(batch_size: int, seed: int) -> torch.Tensor:
        volumes, timing = sample_volumes(
            autoencoder,
            unet,
            conditioning,
            latent_shape=(8, 8, 8),
            latent_channels=3,
            scale_factor=1.5,
            schedule=NoiseScheduleSettings(),
            ddim_steps=4,
            batch_size=batch_size,
            seed=seed,
            device=torch.device("cpu"),
        )
        assert timing.volumes == 5 and timing.seconds > 0
        return volumes

    volumes = sample(batch_size=2, seed=7)
    assert volumes.shape == (5, 1, 16, 16, 16)
    assert volumes.dtype == torch.float32
    assert volumes.min() >= 0.0 and volumes.max() <= 1.0
    torch.testing.assert_close(volumes, sample(batch_size=5, seed=7), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(volumes, sample(batch_size=5, seed=8))


@needs_einops
def test_guided_sampling_keeps_the_shape_and_changes_the_samples() -> None:
    autoencoder = randomise(build_autoencoder(AE_NET), 1)
    unet = randomise(build_unet(UNET_NET, 3), 2)
    conditioning = torch.rand(3, 4)
    kwargs = dict(
        latent_shape=(8, 8, 8),
        latent_channels=3,
        scale_factor=1.0,
        schedule=NoiseScheduleSettings(),
        ddim_steps=3,
        batch_size=3,
        seed=0,
        device=torch.device("cpu"),
    )
    plain, _ = sample_volumes(autoencoder, unet, conditioning, **kwargs)
    guided, _ = sample_volumes(autoencoder, unet, conditioning, guidance_scale=3.0, **kwargs)
    assert guided.shape == plain.shape
    assert guided.min() >= 0.0 and guided.max() <= 1.0
    assert not torch.allclose(guided, plain)


def test_sampling_refuses_conditioning_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"conditioning must be \[N, 4\]"):
        sample_volumes(
            torch.nn.Identity(),
            torch.nn.Identity(),
            torch.rand(3, 2),
            latent_shape=(4, 4, 4),
            latent_channels=3,
            scale_factor=1.0,
            schedule=NoiseScheduleSettings(),
            ddim_steps=2,
            batch_size=2,
            seed=0,
            device=torch.device("cpu"),
        )


def test_resampling_the_bundle_grid_to_the_cpu_grid_keeps_the_brain_centred() -> None:
    bundle = torch.zeros(1, 1, 160, 224, 160)
    bundle[:, :, 60:100, 92:132, 60:100] = 1.0  # a centred 40 mm cube
    cpu = resample_to_grid(bundle, (1.0, 1.0, 1.0), (4.0, 4.0, 4.0), (40, 48, 40))
    assert cpu.shape == (1, 1, 40, 48, 40)
    assert float(cpu.sum()) * 64 == pytest.approx(float(bundle.sum()), rel=0.02)  # mm^3 preserved
    inside = cpu[0, 0] > 0.5
    centre = torch.stack(torch.nonzero(inside, as_tuple=True)).float().mean(dim=1)
    torch.testing.assert_close(centre, torch.tensor([19.5, 23.5, 19.5]), atol=0.6, rtol=0)
    back = resample_to_grid(cpu, (4.0, 4.0, 4.0), (1.0, 1.0, 1.0), (160, 224, 160))
    assert back.shape == bundle.shape


def test_resampling_to_the_same_grid_is_the_identity() -> None:
    volumes = torch.rand(2, 1, 8, 8, 8)
    assert resample_to_grid(volumes, (2.0,) * 3, (2.0,) * 3, (8, 8, 8)) is volumes
