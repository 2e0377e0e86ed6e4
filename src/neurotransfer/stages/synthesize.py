"""DVC stage `synthesize`: train (or load) the conditional brain LDM and sample a synthetic pool.

Reads the processed upstream pool (`data/processed/manifest.csv`); writes `models/ldm/`,
`data/synthetic/` (BIDS-like, read by `pretrain: synthetic`), `reports/synthetic/` and
`metrics/synthesize.json`. This module is the orchestration; the science (networks, training,
sampling, covariates, quality metrics, pictures, storage formats) lives in `neurotransfer.synth`.

1. Read the processed upstream pool (never downstream subjects), hold out whole subjects.
2. Measure CSF and brain volume on every training scan; fit the covariate scaling.
3. Train the autoencoder and the conditional latent UNet (``source: train``), or load the
   published bundle weights (``source: pretrained``).
4. Sample volumes with DDIM at covariates drawn from the pool (or given in params), resampled to
   the ``data.preprocess`` grid that ``pretrain`` reads.
5. Quality and privacy metrics (:mod:`neurotransfer.synth.quality`), pictures, outputs.

The CLI imports this module to build its parser, so torch, Lightning, pandas and the
``neurotransfer.synth`` modules are imported inside the functions that use them:
``neurotransfer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotransfer.atomic import atomic_directory, write_json_atomic, write_skipped_notes
from neurotransfer.config import (
    AutoencoderNetSettings,
    DiffusionNetSettings,
    NoiseScheduleSettings,
    Settings,
    SettingsError,
    SynthesizeSettings,
)
from neurotransfer.paths import LIVE_PLOTS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from neurotransfer.synth.covariates import CovariateScaler, VolumeMeasurement
    from neurotransfer.synth.quality import MemorisationResult
    from neurotransfer.synth.sampling import SamplingTiming

log = logging.getLogger(__name__)

#: Training scans used to fit the Otsu CSF threshold (plenty for a histogram, fast on big pools).
OTSU_SCANS = 64

Grid = tuple[tuple[int, int, int], tuple[float, float, float]]  # (shape, spacing)


def synthesize_settings(settings: Settings) -> SynthesizeSettings:
    if settings.synthesize is None:
        raise SettingsError(
            "params.yaml has no `synthesize` block: add `synthesize: ldm` to the defaults in "
            "conf/config.yaml and recompose params.yaml"
        )
    return settings.synthesize


def model_grid(settings: Settings) -> tuple[Grid, tuple[int, int, int]]:
    """The grid the model samples on and its latent shape; fails early on a bad combination."""
    from neurotransfer.synth.networks import latent_shape

    config = synthesize_settings(settings)
    if config.source == "train":
        shape = tuple(settings.data.preprocess.shape)
        spacing = tuple(settings.data.preprocess.spacing)
        latent = latent_shape(shape, config.autoencoder.net, config.diffusion.net)
        return (shape, spacing), latent
    assert config.pretrained is not None  # guaranteed by the settings validator
    shape, spacing = tuple(config.pretrained.image_shape), tuple(config.pretrained.spacing)
    latent = latent_shape(
        shape,
        config.pretrained.autoencoder,
        config.pretrained.diffusion,
        key="synthesize.pretrained.image_shape",
    )
    return (shape, spacing), latent


@dataclass
class PoolData:
    """What the stage needs from the pool: tables, held-out volumes, per-scan summaries."""

    train: pd.DataFrame  # with measured csf_volume_ml and brain_volume_ml
    heldout: pd.DataFrame
    excluded: pd.DataFrame
    heldout_volumes: torch.Tensor  # [N, 1, D, H, W]
    train_distance_rows: torch.Tensor  # for the memorisation check
    train_features: torch.Tensor  # for the real-to-real Fréchet reference
    measurement: VolumeMeasurement
    scaler: CovariateScaler


@dataclass
class LatentDiffusionModel:
    autoencoder: nn.Module
    unet: nn.Module
    autoencoder_net: AutoencoderNetSettings
    unet_net: DiffusionNetSettings
    schedule: NoiseScheduleSettings
    scale_factor: float
    provenance: dict[str, Any]


@dataclass
class SampleChecks:
    """Everything measured on the samples (and the held-out scans) for metrics and pictures."""

    measured: np.ndarray  # [N, 2] CSF and brain volume (ml) of each sample
    reconstructed: torch.Tensor  # autoencoder reconstructions of the held-out scans
    memorisation: MemorisationResult
    metrics: dict[str, Any]


def _volume_batches(
    paths: Sequence[str], shape: tuple[int, int, int], size: int
) -> Iterator[torch.Tensor]:
    import torch

    from neurotransfer.synth.pool import load_volumes

    for start in range(0, len(paths), size):
        yield torch.from_numpy(load_volumes(list(paths[start : start + size]), shape)).unsqueeze(1)


def prepare_pool(
    settings: Settings, root: Path, features_net: nn.Module, device: torch.device
) -> PoolData:
    """Read the pool, hold out subjects, measure volumes and summarise the training scans."""
    import numpy as np
    import torch

    from neurotransfer.data.manifest import manifest_path
    from neurotransfer.data.splits import holdout_mask
    from neurotransfer.synth import quality
    from neurotransfer.synth.covariates import (
        CovariateScaler,
        VolumeMeasurement,
        otsu_csf_threshold,
    )
    from neurotransfer.synth.pool import load_volumes, read_pool

    config = synthesize_settings(settings)
    q = config.quality
    shape = tuple(settings.data.preprocess.shape)
    pool = read_pool(manifest_path(settings.data.processed_dir, root), root)
    held = holdout_mask(pool.scans["subject_id"], q.holdout_fraction, config.seed)
    train = pool.scans[~held].reset_index(drop=True)
    heldout = pool.scans[held].reset_index(drop=True)
    paths = list(train["path"])
    log.info(
        "pool: %d training, %d held-out, %d excluded scans",
        len(train),
        len(heldout),
        len(pool.excluded),
    )

    csf_threshold = q.csf_threshold
    if csf_threshold is None:
        csf_threshold = otsu_csf_threshold(
            load_volumes(paths[:OTSU_SCANS], shape), q.foreground_threshold
        )
    measurement = VolumeMeasurement.for_spacing(
        q.foreground_threshold, csf_threshold, settings.data.preprocess.spacing
    )
    measured, distance_rows, features = [], [], []
    for batch in _volume_batches(paths, shape, q.feature_batch_size):
        measured.append(measurement.measure_all(batch[:, 0].numpy()))
        distance_rows.append(quality.flatten_for_distance(batch, q.memorisation_downsample))
        features.append(quality.extract_features(features_net, batch, device, len(batch)))
    volumes = np.concatenate(measured)
    train = train.assign(csf_volume_ml=volumes[:, 0], brain_volume_ml=volumes[:, 1])
    heldout_volumes = torch.from_numpy(load_volumes(list(heldout["path"]), shape)).unsqueeze(1)
    return PoolData(
        train=train,
        heldout=heldout,
        excluded=pool.excluded,
        heldout_volumes=heldout_volumes,
        train_distance_rows=torch.cat(distance_rows),
        train_features=torch.cat(features),
        measurement=measurement,
        scaler=CovariateScaler.fit(train),
    )


def load_pretrained_model(config: SynthesizeSettings, root: Path) -> LatentDiffusionModel:
    """The published bundle's networks (``source: pretrained``), with their provenance."""
    from neurotransfer.synth.bundle import load_pretrained_ldm

    assert config.pretrained is not None
    autoencoder, unet, layouts = load_pretrained_ldm(config.pretrained, root)
    return LatentDiffusionModel(
        autoencoder,
        unet,
        config.pretrained.autoencoder,
        config.pretrained.diffusion,
        config.pretrained.schedule,
        config.pretrained.scale_factor,
        {
            "pretrained": {
                "autoencoder_path": config.pretrained.autoencoder_path,
                "unet_path": config.pretrained.unet_path,
                "layouts": layouts,
            }
        },
    )


def train_or_load_model(
    settings: Settings, root: Path, pool: PoolData, device: torch.device
) -> LatentDiffusionModel:
    from neurotransfer.synth.networks import build_autoencoder, build_unet
    from neurotransfer.synth.training import (
        encode_posteriors,
        latent_scale_factor,
        train_autoencoder,
        train_diffusion,
    )

    config = synthesize_settings(settings)
    if config.source == "pretrained":
        return load_pretrained_model(config, root)
    shape = tuple(settings.data.preprocess.shape)
    paths = list(pool.train["path"])
    log_dir = root / config.log_dir
    autoencoder = build_autoencoder(config.autoencoder.net)
    ae_summary = train_autoencoder(autoencoder, paths, shape, config, log_dir / "autoencoder")
    z_mu, z_sigma = encode_posteriors(
        autoencoder, paths, shape, config.autoencoder.batch_size, device
    )
    scale_factor = latent_scale_factor(z_mu, z_sigma, config.seed)
    unet = build_unet(config.diffusion.net, config.autoencoder.net.latent_channels)
    diffusion_summary = train_diffusion(
        unet,
        z_mu,
        z_sigma,
        pool.scaler.transform(pool.train),
        scale_factor,
        config,
        log_dir / "diffusion",
    )
    return LatentDiffusionModel(
        autoencoder,
        unet,
        config.autoencoder.net,
        config.diffusion.net,
        config.diffusion.schedule,
        scale_factor,
        {
            "training": {
                "autoencoder": vars(ae_summary),
                "diffusion": vars(diffusion_summary),
                "condition_dropout": config.diffusion.condition_dropout,
            }
        },
    )


def covariates_to_sample(
    config: SynthesizeSettings, pool: PoolData
) -> tuple[np.ndarray, pd.DataFrame]:
    """The covariates to sample at: scaled as given to the model, and raw (a table)."""
    from neurotransfer.synth.covariates import draw_covariates, requested_covariates

    s = config.sampling
    if s.covariates:
        scaled = requested_covariates(s.covariates, pool.scaler)
    else:
        scaled = draw_covariates(
            pool.train, pool.scaler, s.n_samples, s.covariate_jitter, config.seed
        )
    return scaled, pool.scaler.inverse(scaled)


def guidance_scale(config: SynthesizeSettings) -> float | None:
    # guidance is a property of the model we train; the published bundle had no condition dropout
    return config.diffusion.guidance_scale if config.source == "train" else None


def sample_on_grid(
    config: SynthesizeSettings,
    model: LatentDiffusionModel,
    scaled: np.ndarray,
    latent: tuple[int, int, int],
    grids: tuple[Grid, Grid],
    device: torch.device,
) -> tuple[torch.Tensor, SamplingTiming]:
    """DDIM samples on the model's grid, resampled to the output grid."""
    import torch

    from neurotransfer.synth.sampling import resample_to_grid, sample_volumes

    s = config.sampling
    (output_shape, output_spacing), (_, model_spacing) = grids
    native, sampling = sample_volumes(
        model.autoencoder,
        model.unet,
        torch.from_numpy(scaled),
        latent_shape=latent,
        latent_channels=model.autoencoder_net.latent_channels,
        scale_factor=model.scale_factor,
        schedule=model.schedule,
        ddim_steps=s.ddim_steps,
        batch_size=s.batch_size,
        seed=config.seed,
        device=device,
        precision=config.precision,
        guidance_scale=guidance_scale(config),
    )
    return resample_to_grid(native, model_spacing, output_spacing, output_shape), sampling


def check_samples(
    config: SynthesizeSettings,
    pool: PoolData,
    model: LatentDiffusionModel,
    samples: torch.Tensor,
    requested: pd.DataFrame,
    grids: tuple[Grid, Grid],
    features_net: nn.Module,
    device: torch.device,
) -> SampleChecks:
    """Reconstruction, diversity, realism, memorisation and conditioning (module quality)."""
    from neurotransfer.synth import quality
    from neurotransfer.synth.sampling import resample_to_grid

    q = config.quality
    (shape, spacing), (model_shape, model_spacing) = grids
    to_model = partial(
        resample_to_grid,
        source_spacing=spacing,
        target_spacing=model_spacing,
        target_shape=model_shape,
    )
    from_model = partial(
        resample_to_grid, source_spacing=model_spacing, target_spacing=spacing, target_shape=shape
    )
    heldout = pool.heldout_volumes
    reconstructed = quality.reconstruct(
        model.autoencoder, heldout, device, q.feature_batch_size, to_model, from_model
    )
    measured = pool.measurement.measure_all(samples[:, 0].numpy())
    memorisation = quality.memorisation_check(
        quality.flatten_for_distance(samples, q.memorisation_downsample),
        pool.train_distance_rows,
        quality.flatten_for_distance(heldout, q.memorisation_downsample),
        q.memorisation_quantile,
    )
    heldout_features = quality.extract_features(features_net, heldout, device, q.feature_batch_size)
    sample_features = quality.extract_features(features_net, samples, device, q.feature_batch_size)
    kernel, seed = q.ms_ssim_kernel_size, config.seed
    metrics = {
        "reconstruction": quality.reconstruction_metrics(heldout, reconstructed, kernel),
        "diversity_ms_ssim": {
            "samples": quality.diversity(samples, q.ms_ssim_pairs, kernel, seed)
            if len(samples) > 1
            else None,
            "heldout_real": quality.diversity(heldout, q.ms_ssim_pairs, kernel, seed),
        },
        "realism_fid": {
            "samples_vs_heldout": quality.frechet_distance(sample_features, heldout_features),
            "train_vs_heldout": quality.frechet_distance(pool.train_features, heldout_features),
            "features": f"MONAI resnet10 with random weights (seed {seed}), 512 pooled",
        },
        "memorisation": memorisation.summary(),
        "conditioning": {
            **quality.conditioning_agreement(requested, measured),
            "age_vs_measured_csf_volume_r": quality.pearson(
                requested["age"].to_numpy(), measured[:, 0]
            ),
        },
    }
    return SampleChecks(measured, reconstructed, memorisation, metrics)


def pool_metrics(pool: PoolData) -> dict[str, Any]:
    from neurotransfer.synth.quality import pearson

    return {
        "n_train": len(pool.train),
        "n_heldout": len(pool.heldout),
        "n_excluded": len(pool.excluded),
        "excluded": pool.excluded[["subject_id", "reason"]].to_dict(orient="records"),
        "csf_threshold": pool.measurement.csf_threshold,
        "csf_volume_ml_mean": float(pool.train["csf_volume_ml"].mean()),
        "brain_volume_ml_mean": float(pool.train["brain_volume_ml"].mean()),
        "age_vs_csf_volume_r": pearson(
            pool.train["age"].to_numpy(), pool.train["csf_volume_ml"].to_numpy()
        ),
    }


def stage_metrics(
    config: SynthesizeSettings,
    pool: PoolData,
    model: LatentDiffusionModel,
    latent: tuple[int, int, int],
    samples: torch.Tensor,
    sampling: SamplingTiming,
    device: torch.device,
    checks: SampleChecks,
) -> dict[str, Any]:
    """``metrics/synthesize.json`` without the timing (added once the outputs are written)."""
    s = config.sampling
    return {
        "source": config.source,
        "pool": pool_metrics(pool),
        "model": {
            "scale_factor": model.scale_factor,
            "latent_shape": list(latent),
            **model.provenance,
        },
        "sampling": {
            "n_samples": len(samples),
            "ddim_steps": s.ddim_steps,
            "batch_size": s.batch_size,
            "guidance_scale": guidance_scale(config),
            "device": device.type,
            "seconds_per_volume": sampling.seconds_per_volume,
        },
        **checks.metrics,
    }


def model_config(
    config: SynthesizeSettings,
    pool: PoolData,
    model: LatentDiffusionModel,
    latent: tuple[int, int, int],
    grids: tuple[Grid, Grid],
) -> dict[str, Any]:
    """``models/ldm/config.json``: everything needed to sample again (``synth.store.load_ldm``)."""
    from neurotransfer.synth.covariates import COVARIATES
    from neurotransfer.synth.networks import UNCONDITIONAL_VALUE

    output_grid, sampling_grid = grids
    return {
        "source": config.source,
        "seed": config.seed,
        "autoencoder": model.autoencoder_net.model_dump(),
        "diffusion": model.unet_net.model_dump(),
        "schedule": model.schedule.model_dump(),
        "scale_factor": model.scale_factor,
        "image_shape": list(sampling_grid[0]),
        "spacing": list(sampling_grid[1]),
        "latent_shape": list(latent),
        "output_shape": list(output_grid[0]),
        "output_spacing": list(output_grid[1]),
        "covariates": list(COVARIATES),
        "unconditional_value": UNCONDITIONAL_VALUE,
        "covariate_scaler": pool.scaler.to_dict(),
        "volume_measurement": pool.measurement.to_dict(),
        **model.provenance,
    }


def write_pictures(
    figures: Path,
    config: SynthesizeSettings,
    samples: torch.Tensor,
    participants: pd.DataFrame,
    pool: PoolData,
    requested: pd.DataFrame,
    checks: SampleChecks,
) -> None:
    """``reports/synthetic/``: the montages, plots and the memorisation table."""
    from neurotransfer.synth import report

    q = config.quality
    sample_arrays, real_arrays = samples[:, 0].numpy(), pool.heldout_volumes[:, 0].numpy()
    report.samples_by_age(
        sample_arrays, requested, q.montage_columns, figures / "samples_by_age.png"
    )
    report.real_vs_synthetic(
        real_arrays,
        pool.heldout,
        sample_arrays,
        requested,
        q.montage_columns,
        figures / "real_vs_synthetic.png",
    )
    report.reconstructions(
        real_arrays,
        checks.reconstructed[:, 0].numpy(),
        min(q.montage_columns, 6),
        figures / "reconstruction.png",
    )
    report.conditioning_scatter(requested, checks.measured, figures / "conditioning.png")
    memorisation = checks.memorisation
    report.memorisation_histogram(
        memorisation.sample_distance,
        memorisation.heldout_distance,
        memorisation.threshold,
        figures / "memorisation.png",
    )
    neighbours = pool.train["subject_id"].to_numpy()[memorisation.sample_neighbour]
    participants[["participant_id", "nearest_training_rms", "memorisation_flag"]].assign(
        nearest_training_subject=neighbours
    ).to_csv(figures / "memorisation.csv", index=False, float_format="%.6g")


def write_outputs(
    root: Path,
    config: SynthesizeSettings,
    model: LatentDiffusionModel,
    ldm_config: dict[str, Any],
    samples: torch.Tensor,
    participants: pd.DataFrame,
    pool: PoolData,
    requested: pd.DataFrame,
    checks: SampleChecks,
    spacing: tuple[float, float, float],
) -> None:
    """The model folder, the synthetic dataset and the pictures, published together."""
    from neurotransfer.synth.store import save_ldm, write_synthetic_dataset

    description = {
        "Name": "neurotransfer synthetic T1w volumes (conditional latent diffusion)",
        "GeneratedBy": [
            {
                "Name": "neurotransfer synthesize",
                "Description": f"brain LDM ({config.source}), {config.sampling.ddim_steps} DDIM "
                "steps",
            }
        ],
    }
    # Filled as hidden temporaries; renamed into place only when all three are complete, and
    # all discarded on any error.
    with (
        atomic_directory(root / config.model_dir) as model_dir,
        atomic_directory(root / config.out_dir) as data_dir,
        atomic_directory(root / config.report_dir) as figures,
    ):
        save_ldm(model_dir, model.autoencoder, model.unet, ldm_config)
        write_synthetic_dataset(data_dir, samples, participants, spacing, description)
        write_pictures(figures, config, samples, participants, pool, requested, checks)


def not_needed_reason(settings: Settings) -> str | None:
    """Why the diffusion model is not trained this run (``synthesize.when: needed`` and a
    pre-training source that does not read the synthetic pool), or None when it is."""
    config = synthesize_settings(settings)
    source = settings.pretrain.source
    if config.when == "always" or source == "synthetic":
        return None
    return (
        f"pretrain.source is {source!r} and synthesize.when is 'needed': only "
        "pretrain.source=synthetic reads the synthetic pool, so no diffusion model was trained "
        "and no volumes were sampled (set synthesize.when=always to run it anyway)"
    )


def skip_reason(settings: Settings, root: Path) -> str | None:
    """Why the stage writes notes instead of a model this run, or None when it runs."""
    from neurotransfer.data.manifest import has_pool, manifest_path

    not_needed = not_needed_reason(settings)
    if not_needed is not None:
        return not_needed
    manifest = manifest_path(settings.data.processed_dir, root)
    if not has_pool(manifest):
        # Data without an upstream pool (downstream datasets only): nothing to train on.
        return (
            f"{manifest}: no upstream pool scans (role == pool), so no diffusion model "
            "was trained and no synthetic volumes were sampled"
        )
    return None


def skip_stage(config: SynthesizeSettings, root: Path, reason: str) -> dict[str, Any]:
    """Write the stage's outputs as a note saying why nothing was trained, and return the
    metrics recording the skip. A ``synthetic`` pre-training that reads the outputs stops,
    quoting the note."""
    write_skipped_notes(
        [root / folder for folder in (config.model_dir, config.out_dir, config.report_dir)],
        "synthesize",
        reason,
    )
    # dvc.yaml declares the training curves as plots: they exist, with no curves in them.
    log_dir = root / config.log_dir
    shutil.rmtree(log_dir, ignore_errors=True)
    for network in ("autoencoder", "diffusion"):
        (log_dir / network / LIVE_PLOTS).mkdir(parents=True)
    log.warning("synthesize skipped: %s", reason)
    return {"source": config.source, "skipped": reason}


def run_synthesize(settings: Settings, root: Path) -> dict[str, Any]:
    """Run the whole stage under ``root``; return the metrics (the caller writes them)."""
    config = synthesize_settings(settings)
    reason = skip_reason(settings, root)
    if reason is not None:
        # Before the imports below: a skip writes notes, and importing torch and Lightning
        # would add about 7 s to every run that skips (the default pipeline's included).
        return skip_stage(config, root, reason)
    import lightning as L

    from neurotransfer.runtime import resolve_device
    from neurotransfer.synth.networks import require_einops
    from neurotransfer.synth.quality import feature_network
    from neurotransfer.synth.store import participants_table

    require_einops()
    sampling_grid, latent = model_grid(settings)
    output_grid: Grid = (
        tuple(settings.data.preprocess.shape),
        tuple(settings.data.preprocess.spacing),
    )
    grids = (output_grid, sampling_grid)
    L.seed_everything(config.seed, workers=True, verbose=False)
    device = resolve_device(config.accelerator, "synthesize.accelerator")
    clock = time.perf_counter()
    timing: dict[str, float] = {}

    features_net = feature_network(config.seed)
    pool = prepare_pool(settings, root, features_net, device)
    timing["pool_seconds"] = time.perf_counter() - clock
    model = train_or_load_model(settings, root, pool, device)
    timing["model_seconds"] = time.perf_counter() - clock - sum(timing.values())

    scaled, requested = covariates_to_sample(config, pool)
    samples, sampling = sample_on_grid(config, model, scaled, latent, grids, device)
    timing["sampling_seconds"] = sampling.seconds

    checks = check_samples(config, pool, model, samples, requested, grids, features_net, device)
    metrics = stage_metrics(config, pool, model, latent, samples, sampling, device, checks)
    ldm_config = model_config(config, pool, model, latent, grids)
    participants = participants_table(requested, scaled, checks.measured, checks.memorisation)
    write_outputs(
        root,
        config,
        model,
        ldm_config,
        samples,
        participants,
        pool,
        requested,
        checks,
        output_grid[1],
    )
    timing["total_seconds"] = time.perf_counter() - clock
    metrics["timing"] = timing
    log.info("synthesize: %d volumes in %.1f s", len(samples), timing["total_seconds"])
    return metrics


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.runtime import json_ready

    config = synthesize_settings(settings)  # a missing block fails before any work
    metrics = run_synthesize(settings, Path("."))
    write_json_atomic(config.metrics_path, json_ready(metrics))
