"""Two-stage latent diffusion training in Lightning, logged with dvclive.

Stage 1 trains MONAI's ``AutoencoderKL`` with an L1 reconstruction loss and a small KL penalty
(no perceptual loss: its pretrained 2D/3D feature networks cannot be downloaded here), plus, when
``adversarial_weight > 0``, a least-squares ``PatchDiscriminator`` (as the brain LDM was trained).

Stage 2 freezes the autoencoder and trains ``DiffusionModelUNet`` to predict the noise added to
scaled latents, conditioned on the covariates (concatenation + cross-attention). With
``condition_dropout > 0`` a random fraction of the steps sees the "unconditional" covariate value
instead, so that sampling can use classifier-free guidance (Ho & Salimans 2022), which makes the
weak conditioning of briefly trained small models visible. The frozen
encoder's posterior (mean, sigma) is computed once per scan and a latent is drawn from it at
every step, which is what ``LatentDiffusionInferer`` does per step but without re-running the
encoder; MONAI's ``DiffusionInferer`` then noises the latent and calls the UNet. Latents are
multiplied by ``scale_factor = 1 / std(z)`` over the training set (Rombach et al.) so the
diffusion model sees unit-variance inputs; sampling divides it out again.

No checkpoints are written mid-run: the caller saves the final weights once, as safetensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from neurotransfer.config import (
    AutoencoderTrainSettings,
    DiffusionTrainSettings,
    SynthesizeSettings,
)
from neurotransfer.live_logger import dvclive_logger
from neurotransfer.runtime import resolve_precision
from neurotransfer.synth.networks import UNCONDITIONAL_VALUE, CovariateConditionedUNet
from neurotransfer.synth.pool import load_volume
from neurotransfer.synth.sampling import ddpm_scheduler

log = logging.getLogger(__name__)


class VolumeDataset(Dataset):
    """Pool arrays read on demand (memory-mapped), optionally as random crops of ``patch_size``.

    Crops use torch's global generator, which Lightning seeds, so they are reproducible.
    """

    def __init__(
        self,
        paths: Sequence[str],
        shape: tuple[int, int, int],
        patch_size: tuple[int, int, int] | None = None,
    ) -> None:
        if patch_size is not None and any(p > s for p, s in zip(patch_size, shape, strict=True)):
            raise ValueError(f"patch_size {patch_size} is larger than the volumes {shape}")
        self.paths, self.shape, self.patch_size = list(paths), shape, patch_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        volume = torch.from_numpy(load_volume(self.paths[index], self.shape))
        if self.patch_size is not None:
            starts = [
                int(torch.randint(0, s - p + 1, (1,)))
                for s, p in zip(self.shape, self.patch_size, strict=True)
            ]
            volume = volume[
                tuple(slice(a, a + p) for a, p in zip(starts, self.patch_size, strict=True))
            ]
        return volume.unsqueeze(0)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


class AutoencoderModule(L.LightningModule):
    """AutoencoderKL with L1 + KL losses and an optional patch-GAN (manual optimisation)."""

    def __init__(self, autoencoder: AutoencoderKL, settings: AutoencoderTrainSettings) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.settings = settings
        self.discriminator: nn.Module | None = None
        if settings.adversarial_weight > 0:
            self.discriminator = PatchDiscriminator(
                spatial_dims=3,
                channels=settings.discriminator_channels,
                in_channels=1,
                out_channels=1,
                num_layers_d=settings.discriminator_layers,
            )
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self.automatic_optimization = False

    def configure_optimizers(self) -> Any:
        lr = self.settings.lr
        generator = torch.optim.Adam(self.autoencoder.parameters(), lr=lr)
        if self.discriminator is None:
            return generator
        return [generator, torch.optim.Adam(self.discriminator.parameters(), lr=lr)]

    def training_step(self, images: torch.Tensor, batch_idx: int) -> None:
        optimisers = self.optimizers()
        if not isinstance(optimisers, list):
            optimisers = [optimisers]
        reconstruction, z_mu, z_sigma = self.autoencoder(images)
        l1 = F.l1_loss(reconstruction.float(), images.float())
        kl = kl_divergence(z_mu.float(), z_sigma.float())
        loss = l1 + self.settings.kl_weight * kl
        adversarial = (
            self.discriminator is not None
            and self.current_epoch >= self.settings.adversarial_start_epoch
        )
        logged = {"autoencoder/l1": l1.detach(), "autoencoder/kl": kl.detach()}
        if adversarial:
            assert self.discriminator is not None
            logits_fake = self.discriminator(reconstruction.contiguous().float())[-1]
            generator_adv = self.adversarial_loss(
                logits_fake, target_is_real=True, for_discriminator=False
            )
            loss = loss + self.settings.adversarial_weight * generator_adv
            logged["autoencoder/generator_adv"] = generator_adv.detach()
        optimisers[0].zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimisers[0].step()

        if adversarial:
            assert self.discriminator is not None
            fake = self.discriminator(reconstruction.detach().contiguous().float())[-1]
            real = self.discriminator(images.contiguous().float())[-1]
            discriminator_loss = 0.5 * (
                self.adversarial_loss(fake, target_is_real=False, for_discriminator=True)
                + self.adversarial_loss(real, target_is_real=True, for_discriminator=True)
            )
            optimisers[1].zero_grad(set_to_none=True)
            self.manual_backward(self.settings.adversarial_weight * discriminator_loss)
            optimisers[1].step()
            logged["autoencoder/discriminator"] = discriminator_loss.detach()
        logged["autoencoder/loss"] = loss.detach()
        self.log_dict(logged, on_step=False, on_epoch=True, batch_size=images.shape[0])


class LatentDiffusionModule(L.LightningModule):
    """Noise-prediction training of the conditioned UNet on cached latent posteriors."""

    def __init__(
        self, unet: nn.Module, settings: DiffusionTrainSettings, scale_factor: float
    ) -> None:
        super().__init__()
        self.model = CovariateConditionedUNet(unet)
        self.settings = settings
        self.scale_factor = scale_factor
        self.scheduler = ddpm_scheduler(settings.schedule)
        self.inferer = DiffusionInferer(self.scheduler)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.model.parameters(), lr=self.settings.lr)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        z_mu, z_sigma, conditioning = batch
        if self.settings.condition_dropout > 0:
            dropped = torch.rand(conditioning.shape[0], device=conditioning.device)
            conditioning = torch.where(
                (dropped < self.settings.condition_dropout)[:, None],
                torch.full_like(conditioning, UNCONDITIONAL_VALUE),
                conditioning,
            )
        latents = (z_mu + z_sigma * torch.randn_like(z_sigma)) * self.scale_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.scheduler.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        prediction = self.inferer(
            inputs=latents,
            diffusion_model=self.model,
            noise=noise,
            timesteps=timesteps,
            condition=conditioning.unsqueeze(1),
            mode="crossattn",
        )
        loss = F.mse_loss(prediction.float(), noise.float())
        self.log(
            "diffusion/mse",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            batch_size=latents.shape[0],
        )
        return loss


@dataclass(frozen=True)
class TrainingSummary:
    epochs: int
    steps: int
    seconds: float
    final_loss: float


def _trainer(settings: SynthesizeSettings, epochs: int, log_dir: Path | None) -> L.Trainer:
    logger: Any = False
    if log_dir is not None:
        logger = dvclive_logger(log_dir)
    return L.Trainer(
        max_epochs=epochs,
        accelerator=settings.accelerator,
        devices=1,
        precision=resolve_precision(settings.precision),  # type: ignore[arg-type]
        deterministic=settings.deterministic,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def _fit_and_summarise(
    module: L.LightningModule,
    loader: DataLoader,
    settings: SynthesizeSettings,
    epochs: int,
    log_dir: Path | None,
    stage: str,
    metric: str,
) -> TrainingSummary:
    """Train `module` for `epochs`; log and return the time taken and ``<stage>/<metric>`` at
    the end (NaN when it was never logged)."""
    trainer = _trainer(settings, epochs, log_dir)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    final = float(trainer.callback_metrics.get(f"{stage}/{metric}", float("nan")))
    log.info(
        "%s: %d epochs in %.1f s, final %s %.4f", stage, epochs, seconds, metric.upper(), final
    )
    return TrainingSummary(epochs, trainer.global_step, seconds, final)


def train_autoencoder(
    autoencoder: AutoencoderKL,
    paths: Sequence[str],
    shape: tuple[int, int, int],
    settings: SynthesizeSettings,
    log_dir: Path | None,
) -> TrainingSummary:
    """Stage 1 on the training scans; leaves ``autoencoder`` trained, in eval mode, on the CPU."""
    config = settings.autoencoder
    module = AutoencoderModule(autoencoder, config)
    loader = DataLoader(
        VolumeDataset(paths, shape, config.patch_size),
        batch_size=min(config.batch_size, len(paths)),
        shuffle=True,
        drop_last=False,
        num_workers=settings.num_workers,
        persistent_workers=settings.num_workers > 0,
    )
    summary = _fit_and_summarise(
        module, loader, settings, config.epochs, log_dir, "autoencoder", "l1"
    )
    autoencoder.cpu().eval()
    return summary


@torch.no_grad()
def encode_posteriors(
    autoencoder: AutoencoderKL,
    paths: Sequence[str],
    shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent posterior mean and sigma of every scan (``[N, C, *latent]`` each, on the CPU)."""
    autoencoder = autoencoder.to(device).eval()
    dataset = VolumeDataset(paths, shape)
    means, sigmas = [], []
    for start in range(0, len(dataset), batch_size):
        batch = torch.stack(
            [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        )
        z_mu, z_sigma = autoencoder.encode(batch.to(device))
        means.append(z_mu.float().cpu())
        sigmas.append(z_sigma.float().cpu())
    autoencoder.cpu()
    return torch.cat(means), torch.cat(sigmas)


def latent_scale_factor(z_mu: torch.Tensor, z_sigma: torch.Tensor, seed: int) -> float:
    """``1 / std`` of latents drawn from the posteriors (one draw per scan, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    latents = z_mu + z_sigma * torch.randn(z_sigma.shape, generator=generator)
    std = float(latents.std())
    if not np.isfinite(std) or std <= 0:
        raise RuntimeError(f"latent standard deviation is {std}: the autoencoder collapsed")
    return 1.0 / std


def train_diffusion(
    unet: nn.Module,
    z_mu: torch.Tensor,
    z_sigma: torch.Tensor,
    conditioning: np.ndarray,
    scale_factor: float,
    settings: SynthesizeSettings,
    log_dir: Path | None,
) -> TrainingSummary:
    """Stage 2: leaves ``unet`` trained, in eval mode, on the CPU."""
    config = settings.diffusion
    module = LatentDiffusionModule(unet, config, scale_factor)
    dataset = TensorDataset(z_mu, z_sigma, torch.as_tensor(conditioning, dtype=torch.float32))
    loader = DataLoader(
        dataset, batch_size=min(config.batch_size, len(dataset)), shuffle=True, drop_last=False
    )
    summary = _fit_and_summarise(
        module, loader, settings, config.epochs, log_dir, "diffusion", "mse"
    )
    unet.cpu().eval()
    return summary
