"""DVC stage `pretrain`: the backbone initialisation that `finetune` starts from.

Reads the `pretrain` and `model` params, the processed upstream pool (age probe; `ssl`
training) and, per source, the synthetic dataset or external torchvision weights; writes
`models/pretrained/` (`backbone.safetensors` + `meta.json`), `metrics/pretrain.json` and
`dvclive/pretrain/` (the paths are the `pretrain.out_dir`, `metrics_path` and `log_dir` params).
The science lives in `neurotransfer.pretrain`.

1. Check that ``pretrain.source`` can initialise ``model.name`` (before reading anything).
2. Build the backbone with ``pretrain.seed`` (its own initialisation: the ``scratch`` result).
3. ``imagenet`` / ``kinetics``: fetch the torchvision weights (``pretrain.external``) and map them
   onto the backbone with the mapping its model family declares (``pretrain.sources``).
   ``synthetic`` / ``ssl``: train on the synthetic volumes or the real pool with Lightning
   (``pretrain.training``), logging to ``pretrain.log_dir``.
4. Ridge age probe on frozen features of the real pool (``pretrain.probe``), for every source.
5. Write ``models/pretrained/`` (``backbone.safetensors`` + ``meta.json``, filled in a hidden
   temporary folder and renamed into place) and then ``metrics/pretrain.json``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotransfer.atomic import atomic_directory, write_json_atomic
from neurotransfer.config import EXTERNAL_SOURCES, TRAINED_SOURCES, Settings

# torch, Lightning and the science packages take seconds to import: they are imported inside
# the functions that use them, because the CLI imports every stage module to build its parser
# and `neurotransfer --help` must stay fast.
if TYPE_CHECKING:
    import torch

    from neurotransfer.pretrain.data import PoolScans, VolumeDataset

META_VERSION = 1


def run(settings: Settings, args: argparse.Namespace) -> None:
    run_pretrain(settings, Path("."))


def run_pretrain(settings: Settings, root: Path = Path(".")) -> dict[str, Any]:
    """Run the stage; write ``pretrain.out_dir`` and ``pretrain.metrics_path``; return metrics."""
    import lightning as L
    import torch

    from neurotransfer.data.manifest import manifest_path
    from neurotransfer.models import build_backbone, save_backbone
    from neurotransfer.pretrain.data import read_pool_scans
    from neurotransfer.pretrain.sources import check_source
    from neurotransfer.runtime import json_ready, resolve_device

    cfg = settings.pretrain
    # An impossible source/model pair fails before any work.
    check_source(cfg.source, settings.model.name, settings.model.options)
    shape = tuple(settings.data.preprocess.shape)
    manifest = manifest_path(settings.data.processed_dir, root)
    # Only ssl trains on the pool; without one the other sources run and the probe is skipped.
    pool = read_pool_scans(manifest, root, required=cfg.source == "ssl")
    log_dir = root / cfg.log_dir
    shutil.rmtree(log_dir, ignore_errors=True)  # no curves of a previous source linger

    L.seed_everything(cfg.seed, workers=True)
    backbone = build_backbone(settings.model.name, shape, **settings.model.options)
    meta: dict[str, Any] = {
        "meta_version": META_VERSION,
        "source": cfg.source,
        "seed": cfg.seed,
        "data": {},
        "versions": {"torch": torch.__version__},
    }
    training: dict[str, Any] = {"epochs": 0, "final_losses": {}, "n_volumes": 0}
    if cfg.source in EXTERNAL_SOURCES:
        load_external(settings, backbone, root, meta)
    elif cfg.source in TRAINED_SOURCES:
        training = pretrain_backbone(settings, backbone, pool, root, log_dir, meta)
    meta["data"].update(pool.data_record())

    device = resolve_device(cfg.accelerator, "pretrain.accelerator")
    probe = probe_backbone(settings, backbone, pool, manifest, device)
    backbone.cpu()
    # The probe goes to metrics/pretrain.json only: meta.json describes the weights, so a change
    # in how they are scored does not change models/pretrained and re-run every fine-tuning.

    with atomic_directory(root / cfg.out_dir) as folder:
        save_backbone(backbone, folder, meta)
    metrics = pretrain_metrics(settings, backbone, meta, training, probe, device)
    log_probe(log_dir, probe, resume=cfg.source in TRAINED_SOURCES)
    write_json_atomic(root / cfg.metrics_path, json_ready(metrics))
    return metrics


def load_external(
    settings: Settings, backbone: torch.nn.Module, root: Path, meta: dict[str, Any]
) -> None:
    """``imagenet`` / ``kinetics``: load the torchvision weights into ``backbone``; record them."""
    import torchvision

    from neurotransfer.pretrain.external import external_weights
    from neurotransfer.pretrain.sources import map_external

    cfg = settings.pretrain
    architecture = settings.model.name
    meta["versions"]["torchvision"] = torchvision.__version__
    local = None
    if cfg.weights_path is not None:  # relative paths are relative to the repository root
        local = str(root / Path(cfg.weights_path).expanduser())
    weights = external_weights(cfg.source, architecture, cfg.weights, local)
    mapped = map_external(cfg.source, architecture, weights.state, backbone)
    backbone.load_state_dict(mapped.state)
    meta["external"] = {**weights.record, **mapped.summary()}


def pretrain_backbone(
    settings: Settings,
    backbone: torch.nn.Module,
    pool: PoolScans,
    root: Path,
    log_dir: Path,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """``synthetic`` / ``ssl``: train ``backbone`` in place; record the run in ``meta``.

    Returns the training record of :func:`~neurotransfer.pretrain.training.train_backbone`
    with ``n_volumes``, the number of volumes it trained on."""
    from neurotransfer.pretrain.training import mask_patch, train_backbone

    cfg = settings.pretrain
    dataset = training_dataset(settings, pool, root, meta)
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
    return {**training, "n_volumes": n_volumes}


def training_dataset(
    settings: Settings, pool: PoolScans, root: Path, meta: dict[str, Any]
) -> VolumeDataset:
    """The volumes ``pretrain.source`` trains on (capped at ``pretrain.max_volumes``).

    ``synthetic`` records its data hash and, for the covariates objective, the scaling of the
    targets in ``meta``."""
    from neurotransfer.pretrain import data as pdata

    cfg = settings.pretrain
    shape = tuple(settings.data.preprocess.shape)
    if cfg.source != "synthetic":
        rows = pdata.cap_rows(pool.rows, cfg.max_volumes, cfg.seed)
        return pdata.VolumeDataset(list(rows["path"]), shape, "pool")
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
    return dataset


def probe_backbone(
    settings: Settings,
    backbone: torch.nn.Module,
    pool: PoolScans,
    manifest: Path,
    device: torch.device,
) -> dict[str, Any]:
    """The ridge age probe on frozen pool features (a ``skipped`` note without a pool)."""
    from neurotransfer.pretrain.data import read_pool_array
    from neurotransfer.pretrain.probe import age_probe, extract_features

    cfg = settings.pretrain
    if pool.rows.empty:
        return {
            "target": "age",
            "skipped": f"{manifest}: no upstream pool (role == pool) to probe the features on",
        }
    shape = tuple(settings.data.preprocess.shape)
    features = extract_features(
        backbone,
        lambda path: read_pool_array(path, shape),
        list(pool.rows["path"]),
        cfg.batch_size,
        device,
    )
    return age_probe(features, pool.rows, cfg.probe.val_fraction, cfg.probe.ridge_alphas, cfg.seed)


def pretrain_metrics(
    settings: Settings,
    backbone: torch.nn.Module,
    meta: dict[str, Any],
    training: dict[str, Any],
    probe: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """``metrics/pretrain.json``: the run's summary and the probe."""
    metrics = {
        "source": settings.pretrain.source,
        "architecture": settings.model.name,
        "input_shape": list(settings.data.preprocess.shape),
        "n_volumes": training["n_volumes"],
        "epochs": training["epochs"],
        "final_losses": training["final_losses"],
        "probe": probe,
        "n_parameters": int(sum(p.numel() for p in backbone.parameters())),
        "device": str(device),
        "host": platform.node() or "unknown",
    }
    if "external" in meta:
        metrics["weights"] = meta["external"]["weights"]
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
