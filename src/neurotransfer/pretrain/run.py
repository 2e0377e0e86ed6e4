"""The ``pretrain`` stage's work: initialise (and maybe train) the backbone, probe it, write it.

1. Check that ``pretrain.source`` can initialise ``model.name`` (before reading anything).
2. Build the backbone with ``pretrain.seed`` (its own initialisation: the ``scratch`` result).
3. ``imagenet`` / ``kinetics``: fetch the torchvision weights (:mod:`.external`) and map them
   onto the backbone with the mapping its model family declares (:mod:`.sources`).
   ``synthetic`` / ``ssl``: train on the synthetic volumes or the real pool with Lightning
   (:mod:`.module`), logging to ``pretrain.log_dir``.
4. Ridge age probe on frozen features of the real pool (:mod:`.probe`), for every source.
5. Write ``models/pretrained/`` (``backbone.safetensors`` + ``meta.json``, filled in a hidden
   temporary folder and renamed into place) and then ``metrics/pretrain.json``.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from neurotransfer.atomic import atomic_directory, write_json_atomic
from neurotransfer.config import EXTERNAL_SOURCES, TRAINED_SOURCES, Settings
from neurotransfer.data.manifest import manifest_path
from neurotransfer.models import build_backbone, save_backbone
from neurotransfer.pretrain import data as pdata
from neurotransfer.pretrain.external import external_weights
from neurotransfer.pretrain.module import ObjectiveConfig, PretrainModule, PretrainOptim
from neurotransfer.pretrain.probe import age_probe, extract_features
from neurotransfer.pretrain.sources import check_source, map_external
from neurotransfer.runtime import json_ready, resolve_device, resolve_precision

log = logging.getLogger(__name__)

META_VERSION = 1


def check_pretrain_settings(settings: Settings) -> None:
    """The checks that need no data: source/architecture compatibility."""
    check_source(settings.pretrain.source, settings.model.name, settings.model.options)


def mask_patch(settings: Settings) -> int | tuple[int, int, int]:
    """Masked cubes: the model's own patches for vit3d, ``pretrain.masked.patch_size`` else."""
    if settings.model.name == "vit3d":
        from neurotransfer.models import backbone_options

        patch = settings.model.options.get("patch_size", backbone_options("vit3d")["patch_size"])
        return patch if isinstance(patch, int) else tuple(int(p) for p in patch)
    return settings.pretrain.masked.patch_size


def train_backbone(
    settings: Settings,
    backbone: torch.nn.Module,
    dataset: pdata.VolumeDataset,
    log_dir: Path,
) -> dict[str, Any]:
    """Pre-train ``backbone`` in place on ``dataset``; return the training record."""
    from torch.utils.data import DataLoader

    from neurotransfer.live_logger import dvclive_logger

    cfg = settings.pretrain
    shape = tuple(settings.data.preprocess.shape)
    module = PretrainModule(
        backbone,
        cfg.objectives,
        ObjectiveConfig(
            input_shape=shape,
            n_covariates=len(cfg.covariates) if "covariates" in cfg.objectives else 0,
            temperature=cfg.simclr.temperature,
            projection_dim=cfg.simclr.projection_dim,
            hidden_dim=cfg.simclr.hidden_dim,
            crop_scale=tuple(cfg.simclr.crop_scale),
            noise_std=cfg.simclr.noise_std,
            mask_ratio=cfg.masked.mask_ratio,
            mask_patch=mask_patch(settings),
        ),
        PretrainOptim(
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_epochs=cfg.warmup_epochs,
            epochs=cfg.epochs,
        ),
    )
    if len(dataset) < 2:
        raise ValueError(f"pre-training needs at least 2 volumes, got {len(dataset)}")
    batch_size = min(cfg.batch_size, len(dataset))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        # Whole batches only: NT-Xent needs negatives, BatchNorm more than one sample.
        drop_last=len(dataset) % batch_size == 1 or "simclr" in cfg.objectives,
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=0,
    )
    on_gpu = resolve_device(cfg.accelerator, "pretrain.accelerator").type == "cuda"
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="gpu" if on_gpu else "cpu",
        devices=1,
        precision=resolve_precision(cfg.precision),
        # CUDA has no deterministic backward for some 3D pooling layers.
        deterministic=not on_gpu,
        logger=dvclive_logger(log_dir),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    final = {
        key.removeprefix("train/"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("train/")
    }
    backbone.cpu()
    return {
        "objectives": list(cfg.objectives),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "batch_size": batch_size,
        "train_seconds": round(seconds, 2),
        "final_losses": final,
        "device": "cuda" if on_gpu else "cpu",
        "precision": str(trainer.precision),
    }


def run_pretrain(settings: Settings, root: Path = Path(".")) -> dict[str, Any]:
    """Run the stage; write ``pretrain.out_dir`` and ``pretrain.metrics_path``; return metrics."""
    cfg = settings.pretrain
    architecture = settings.model.name
    check_pretrain_settings(settings)
    shape = tuple(settings.data.preprocess.shape)
    manifest = manifest_path(settings.data.processed_dir, root)
    # Only ssl trains on the pool; without one the other sources run and the probe is skipped.
    pool = pdata.read_pool_scans(manifest, root, required=cfg.source == "ssl")
    log_dir = root / cfg.log_dir
    shutil.rmtree(log_dir, ignore_errors=True)  # no curves of a previous source linger

    L.seed_everything(cfg.seed, workers=True)
    backbone = build_backbone(architecture, shape, **settings.model.options)
    meta: dict[str, Any] = {
        "meta_version": META_VERSION,
        "source": cfg.source,
        "seed": cfg.seed,
        "data": {},
        "versions": {"torch": torch.__version__},
    }
    training: dict[str, Any] = {"epochs": 0, "final_losses": {}}
    n_volumes = 0

    if cfg.source in EXTERNAL_SOURCES:
        import torchvision

        meta["versions"]["torchvision"] = torchvision.__version__
        local = None
        if cfg.weights_path is not None:  # relative paths are relative to the repository root
            local = str(root / Path(cfg.weights_path).expanduser())
        weights = external_weights(cfg.source, architecture, cfg.weights, local)
        mapped = map_external(cfg.source, architecture, weights.state, backbone)
        backbone.load_state_dict(mapped.state)
        meta["external"] = {**weights.record, **mapped.summary()}
    elif cfg.source in TRAINED_SOURCES:
        if cfg.source == "synthetic":
            scans = pdata.read_synthetic_scans(root / cfg.synthetic_dir, cfg.covariates)
            rows = pdata.cap_rows(scans.rows, cfg.max_volumes, cfg.seed)
            targets = None
            if "covariates" in cfg.objectives:
                values = rows[list(cfg.covariates)].to_numpy(dtype=float)
                targets, mean, std = pdata.standardise(values)
                meta["covariate_scaling"] = {
                    name: {"mean": float(m), "std": float(s)}
                    for name, m, s in zip(cfg.covariates, mean, std, strict=True)
                }
            dataset = pdata.VolumeDataset(list(rows["path"]), shape, "synthetic", targets)
            meta["data"].update(scans.data_record())
        else:
            rows = pdata.cap_rows(pool.rows, cfg.max_volumes, cfg.seed)
            dataset = pdata.VolumeDataset(list(rows["path"]), shape, "pool")
        n_volumes = len(dataset)
        training = train_backbone(settings, backbone, dataset, log_dir)
        meta["training"] = {
            **training,
            "n_volumes": n_volumes,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "warmup_epochs": cfg.warmup_epochs,
            "simclr": cfg.simclr.model_dump(mode="json") if "simclr" in cfg.objectives else None,
            "masked": (
                {**cfg.masked.model_dump(mode="json"), "patch_size": mask_patch(settings)}
                if "masked" in cfg.objectives
                else None
            ),
            "covariates": list(cfg.covariates) if "covariates" in cfg.objectives else None,
        }
    meta["data"].update(pool.data_record())

    device = resolve_device(cfg.accelerator, "pretrain.accelerator")
    if pool.rows.empty:
        probe: dict[str, Any] = {
            "target": "age",
            "skipped": f"{manifest}: no upstream pool (role == pool) to probe the features on",
        }
    else:
        features = extract_features(
            backbone,
            lambda path: pdata.read_pool_array(path, shape),
            list(pool.rows["path"]),
            cfg.batch_size,
            device,
        )
        probe = age_probe(
            features, pool.rows, cfg.probe.val_fraction, cfg.probe.ridge_alphas, cfg.seed
        )
    backbone.cpu()
    # The probe goes to metrics/pretrain.json only: meta.json describes the weights, so a change
    # in how they are scored does not change models/pretrained and re-run every fine-tuning.

    with atomic_directory(root / cfg.out_dir) as folder:
        save_backbone(backbone, folder, meta)
    metrics = {
        "source": cfg.source,
        "architecture": architecture,
        "input_shape": list(shape),
        "n_volumes": n_volumes,
        "epochs": training["epochs"],
        "final_losses": training["final_losses"],
        "probe": probe,
        "n_parameters": int(sum(p.numel() for p in backbone.parameters())),
        "device": str(device),
        "host": platform.node() or "unknown",
    }
    if "external" in meta:
        metrics["weights"] = meta["external"]["weights"]
    log_probe(log_dir, probe, resume=cfg.source in TRAINED_SOURCES)
    write_json_atomic(root / cfg.metrics_path, json_ready(metrics))
    return metrics


def log_probe(log_dir: Path, probe: dict[str, Any], resume: bool) -> None:
    """The probe's numbers in the dvclive folder too, so every source has curves to show."""
    from dvclive import Live

    with Live(
        dir=str(log_dir), resume=resume, dvcyaml=None, save_dvc_exp=False, report=None
    ) as live:
        for key in ("mae", "r2"):
            if probe.get(key) is not None:
                live.log_metric(f"probe/age_{key}", float(probe[key]))
    # dvc.yaml declares the curves as plots: without a pool probe (and a source that does not
    # train) there are none, but the folder exists.
    (log_dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
