"""Training throughput and model FLOP utilisation: a naive loop vs the pipeline path.

    .venv/bin/python benchmarks/train_throughput.py [--models densenet121,sfcn,vit_b]
        [--sizes 128,96] [--batch 8] [--steps 20] [--warmup 5] [--volumes 64] [--workers 8]
        [--ablate] [--out benchmarks/results]

For each model and cubic volume size, side by side in one run:

(a) naive: the loop of MONAI's tutorials (densenet_training_array): NIfTI files (.nii.gz, int16)
    read by ``monai.data.ImageDataset`` with ``ScaleIntensity, EnsureChannelFirst,
    RandRotate90``, a plain DataLoader, fp32, ``Adam``, blocking host-to-device copies and
    ``loss.item()`` every step. (The tutorial's ``Resize`` is left out: the files are already on
    the grid.)
(b) pipeline: the cached fp16 arrays the preprocess stage writes; on a GPU the whole cache
    resident in GPU memory (random batches gathered on the device, a left-right flip there),
    else a DataLoader over the arrays with pinned memory, persistent workers and non-blocking
    copies; bf16 autocast, channels-last-3d weights for the CNNs, ``torch.compile``, fused
    AdamW, cuDNN autotuning, no host sync inside the loop. Each of these can be forced on or off
    (``--amp``, ``--channels-last``, ``--compile``, ``--cache``); ``--ablate`` also runs the
    pipeline with each one switched off in turn, so "where it helps" is measured, not assumed.

Both paths train the same backbone (``neurotransfer.models.build_backbone``) + ``TaskHead`` on a
binary target. The pipeline loop is what ``fit_task_model``'s Trainer runs per step, less
Lightning's own per-step bookkeeping.

Figures: volumes/s over the timed steps; data stall = % of step time spent waiting for the next
batch (including its host-to-device copy); each timed step ends with a device synchronisation,
so the stall is an upper bound and the step time is the true one. MFU = 3 x forward FLOPs per
volume x volumes/s / the device's dense bf16 peak (for both paths: what share of the hardware
the loop gets); forward FLOPs come from ``torch.utils.flop_counter`` (a multiply-add counts 2;
convolutions, matmuls and attention, not norms or pointwise ops) on the meta device. On a CPU no
bf16 peak is known, so MFU is reported only with ``--peak-tflops``.

Writes ``<out>/train_throughput_<device>.json`` with the device name, the torch / CUDA / cuDNN
versions and every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from machine_info import load, machine
from torch import nn

from neurotransfer.models import TaskHead, build_backbone

REPO = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. Matched
# against torch.cuda.get_device_name() in this order (first substring wins).
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
)
# Issue #8's targets on an H100/H200, for DenseNet121-3D at 128^3.
TARGET_MFU = 0.30
TARGET_SPEEDUP = 10.0
TARGET_STALL_PCT = 5.0

# name -> (registry name, options, is a CNN). Paper-size networks: DenseNet121 (MONAI
# defaults), SFCN at the paper's widths, ViT-B/16.
MODELS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "densenet121": ("densenet121", {}, True),
    "sfcn": ("sfcn", {"channels": (32, 64, 128, 256, 256, 64)}, True),
    "vit_b": ("vit3d", {"patch_size": 16}, False),
}
# --tiny: the same families, small enough for a test on two CPU cores.
TINY_MODELS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "densenet121": (
        "densenet121",
        {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1, 1), "bn_size": 2},
        True,
    ),
    "sfcn": ("sfcn", {"channels": (4, 8, 8)}, True),
    "vit_b": (
        "vit3d",
        {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2},
        False,
    ),
}


# --------------------------------------------------------------------------------------------
# machine and versions
# --------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({machine().split(',')[0]})"


def versions() -> dict[str, str | None]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn else None,
    }


def bf16_peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


# --------------------------------------------------------------------------------------------
# data: NIfTI files for the naive loop, cached fp16 arrays for the pipeline
# --------------------------------------------------------------------------------------------
def synthetic_volume(size: int, seed: int) -> np.ndarray:
    """A head-like ellipsoid with tissue-like texture and noise, in [0, 1] (compresses like MRI
    rather than like white noise, which matters for the .nii.gz reads)."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2 < 1
    texture = 0.6 + 0.3 * np.sin(6 * x + seed) * np.cos(5 * y) * np.sin(4 * z)
    volume = inside * texture + rng.normal(0, 0.03, inside.shape).astype(np.float32)
    return np.clip(volume, 0, 1).astype(np.float32)


def write_volumes(folder: Path, size: int, n: int) -> tuple[list[Path], list[Path]]:
    """The same n volumes as int16 .nii.gz (raw scans) and fp16 .npy (the preprocess cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    niftis, arrays = [], []
    affine = np.diag([128 / size * 1.5] * 3 + [1.0])
    for i in range(n):
        volume = synthetic_volume(size, i)
        nifti, array = folder / f"scan_{i}.nii.gz", folder / f"scan_{i}.npy"
        nib.save(nib.Nifti1Image((volume * 1000).astype(np.int16), affine), nifti)
        np.save(array, volume.astype(np.float16))
        niftis.append(nifti)
        arrays.append(array)
    return niftis, arrays


class CachedArrays(torch.utils.data.Dataset):
    """Cached fp16 arrays, served as fp16 (half the bytes of float32 through pinned memory and
    the host-to-device copy; the device widens them)."""

    def __init__(self, paths: list[Path], labels: np.ndarray) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        volume = torch.from_numpy(np.load(self.paths[index], allow_pickle=False))
        return volume[None], torch.tensor(self.labels[index], dtype=torch.float32)


class CachedItems(CachedArrays):
    """As the DataModule's CachedVolumeDataset serves TaskModule: dicts, float32 images."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        volume, target = super().__getitem__(index)
        return {"image": volume.to(torch.float32), "target": target}


def cycle(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


# --------------------------------------------------------------------------------------------
# models and FLOPs
# --------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = TaskHead(backbone.out_features)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(volumes)).reshape(-1)


def build_model(spec: tuple[str, dict[str, Any], bool], size: int) -> Classifier:
    name, options, _ = spec
    return Classifier(build_backbone(name, (size, size, size), **options))


def forward_flops(spec: tuple[str, dict[str, Any], bool], size: int) -> int:
    """Forward FLOPs for one volume, counted on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        # eval(): BatchNorm refuses one sample in training mode; the FLOPs are the same.
        model = build_model(spec, size).eval()
        volume = torch.empty(1, 1, size, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(volume)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------------------------
# the two loops
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineOptions:
    amp: bool
    channels_last: bool
    compile: bool
    cache: str  # "resident" (whole cache in device memory) or "loader" (pinned DataLoader)
    fused: bool


@dataclass
class Timing:
    volumes_per_s: float
    step_s: float
    data_s: float
    stall_pct: float
    steps: int
    peak_memory_gib: float | None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    train_step: Callable[[torch.Tensor, torch.Tensor], None],
    device: torch.device,
    batch: int,
    warmup: int,
    steps: int,
) -> Timing:
    for _ in range(warmup):  # compilation, cuDNN autotuning, worker start-up, allocator
        train_step(*next_batch())
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data_s = step_s = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        volumes, targets = next_batch()
        got = time.perf_counter()
        train_step(volumes, targets)
        synchronize(device)
        end = time.perf_counter()
        data_s += got - start
        step_s += end - start
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Timing(
        volumes_per_s=batch * steps / step_s,
        step_s=step_s / steps,
        data_s=data_s / steps,
        stall_pct=100 * data_s / step_s,
        steps=steps,
        peak_memory_gib=memory,
    )


def run_naive(
    model: Classifier,
    niftis: list[Path],
    labels: np.ndarray,
    device: torch.device,
    args: argparse.Namespace,
) -> Timing:
    from monai.data import DataLoader, ImageDataset
    from monai.transforms import Compose, EnsureChannelFirst, RandRotate90, ScaleIntensity

    transform = Compose([ScaleIntensity(), EnsureChannelFirst(), RandRotate90()])
    dataset = ImageDataset(
        image_files=[str(p) for p in niftis], labels=labels.tolist(), transform=transform
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    batches = cycle(loader)
    # torch's defaults, as the tutorial leaves them: no cuDNN autotuning, no TF32 matmuls.
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-5)
    loss_fn = nn.BCEWithLogitsLoss()
    running = [0.0]

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        volumes, targets = next(batches)
        return torch.as_tensor(volumes).to(device), targets.to(device).float()

    def train_step(volumes: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss = loss_fn(model(volumes), targets)
        loss.backward()
        optimizer.step()
        running[0] += loss.item()  # as the tutorial does: a host sync every step

    return timed_loop(next_batch, train_step, device, args.batch, args.warmup, args.steps)


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    if fused:
        try:
            return torch.optim.AdamW(model.parameters(), 1e-4, fused=True)
        except (RuntimeError, ValueError):
            pass  # no fused kernel for this device: the multi-tensor version is the next best
    return torch.optim.AdamW(model.parameters(), 1e-4, foreach=True)


def run_pipeline(
    model: Classifier,
    arrays: list[Path],
    labels: np.ndarray,
    device: torch.device,
    options: PipelineOptions,
    args: argparse.Namespace,
) -> Timing:
    # Autotune the 3D convolutions once per shape; TF32 for what runs outside autocast.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    model = model.to(device).train()
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, options.fused)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if options.compile:
        forward = torch.compile(model)
    loss_fn = nn.BCEWithLogitsLoss()
    dtype = torch.bfloat16 if options.amp else torch.float32
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if options.amp
        else contextlib.nullcontext()
    )

    if options.cache == "resident":
        # One fp16 tensor in device memory (64 volumes of 128^3 = 256 MiB); a batch is a gather.
        cache = torch.stack([torch.from_numpy(np.load(p)) for p in arrays])[:, None].to(device)
        targets_all = torch.as_tensor(labels, dtype=torch.float32, device=device)
        generator = torch.Generator(device=device).manual_seed(0)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.randint(len(arrays), (args.batch,), device=device, generator=generator)
            volumes = cache[index].to(dtype)
            # Left-right flip of a random half of the batch, on the device.
            flip = torch.rand(args.batch, device=device, generator=generator) < 0.5
            volumes = torch.where(flip[:, None, None, None, None], volumes.flip(2), volumes)
            return volumes, targets_all[index]

    else:
        loader = torch.utils.data.DataLoader(
            CachedArrays(arrays, labels),
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
            prefetch_factor=4 if args.workers > 0 else None,
            drop_last=True,
        )
        batches = cycle(loader)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            volumes, targets = next(batches)
            volumes = volumes.to(device, non_blocking=True).to(dtype)
            return volumes, targets.to(device, non_blocking=True)

    def train_step(volumes: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(volumes)
        loss = loss_fn(logits.float(), targets)
        loss.backward()
        optimizer.step()

    return timed_loop(next_batch, train_step, device, args.batch, args.warmup, args.steps)


def run_lightning(
    spec: tuple[str, dict[str, Any], bool],
    size: int,
    arrays: list[Path],
    labels: np.ndarray,
    device: torch.device,
    options: PipelineOptions,
    args: argparse.Namespace,
) -> Timing:
    """The fine-tuning code itself: ``fit_task_model`` (Lightning Trainer, TaskModule) with the
    FinetuneSettings the options map to (the GPU profile's on a GPU), one epoch of
    warm-up + timed steps, served by a pinned-memory DataLoader over the cached arrays."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from neurotransfer.config import FinetuneSettings
    from neurotransfer.train.fit import fit_task_model
    from neurotransfer.train.module import OptimConfig, TaskModule

    cuda = device.type == "cuda"
    batch, warmup, steps = args.batch, args.warmup, args.steps

    class Data(L.LightningDataModule):
        def loader(self, n_batches: int | None) -> torch.utils.data.DataLoader:
            # Training: random batches for exactly warm-up + timed steps; validation (needed
            # by the fit loop, not timed): the first batch, in order.
            sampler = (
                torch.utils.data.RandomSampler(
                    range(len(arrays)), replacement=True, num_samples=batch * n_batches
                )
                if n_batches
                else range(batch)
            )
            return torch.utils.data.DataLoader(
                CachedItems(arrays, labels),
                batch_size=batch,
                sampler=sampler,
                num_workers=args.workers,
                pin_memory=cuda,
                persistent_workers=args.workers > 0,
                drop_last=True,
            )

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return self.loader(warmup + steps)

        def val_dataloader(self) -> torch.utils.data.DataLoader:
            return self.loader(None)

    class StepTimer(Callback):
        """Step = end of one training batch to the end of the next; data = the gap before
        ``on_train_batch_start`` (Lightning fetches and copies the batch in it)."""

        def __init__(self) -> None:
            self.last_end: float | None = None
            self.data_s = self.step_s = 0.0

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, index: int) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, index: int
        ) -> None:
            synchronize(device)
            end = time.perf_counter()
            if index >= warmup and self.last_end is not None:
                self.data_s += self.start - self.last_end
                self.step_s += end - self.last_end
            self.last_end = end

    torch.manual_seed(0)
    name, model_options, _ = spec
    backbone = build_backbone(name, (size, size, size), **model_options)
    module = TaskModule(
        backbone,
        TaskHead(backbone.out_features),
        "binary",
        OptimConfig(lr=1e-4, warmup_epochs=0, max_epochs=1),
    )
    settings = FinetuneSettings(
        max_epochs=1,
        accelerator="gpu" if cuda else "cpu",
        devices=[device.index or 0] if cuda else 1,
        precision="bf16-mixed" if options.amp else "32",
        channels_last=options.channels_last,
        compile=options.compile,
        cudnn_benchmark=cuda,
        deterministic=False,
        early_stopping_patience=0,
        num_workers=args.workers,
    )
    timer = StepTimer()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    fit_task_model(
        module,
        Data(),
        settings,
        extra_callbacks=[timer],
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return Timing(
        volumes_per_s=batch * steps / timer.step_s,
        step_s=timer.step_s / steps,
        data_s=timer.data_s / steps,
        stall_pct=100 * timer.data_s / timer.step_s,
        steps=steps,
        peak_memory_gib=memory,
    )


def resolve_options(args: argparse.Namespace, device: torch.device, cnn: bool) -> PipelineOptions:
    cuda = device.type == "cuda"

    def choose(setting: str, auto: bool) -> bool:
        return auto if setting == "auto" else setting == "on"

    # Defaults: every speed-up on a GPU (channels-last only for CNNs: a ViT has one
    # convolution, its patch embedding). On a CPU, bf16 autocast and compilation are slower
    # or take longer to compile than these short runs last, so the CPU path is fp32, eager.
    amp = choose(args.amp, cuda and torch.cuda.is_bf16_supported())
    return PipelineOptions(
        amp=amp,
        channels_last=choose(args.channels_last, cuda and cnn),
        compile=choose(args.compile, cuda),
        cache=args.cache if args.cache != "auto" else ("resident" if cuda else "loader"),
        fused=choose(args.fused, True),
    )


def ablations(options: PipelineOptions) -> dict[str, PipelineOptions]:
    """The pipeline with each speed-up switched off in turn."""
    variants: dict[str, PipelineOptions] = {}
    for field in ("amp", "channels_last", "compile", "fused"):
        if getattr(options, field):
            variants[f"no_{field}"] = replace(options, **{field: False})
    if options.cache == "resident":
        variants["loader_cache"] = replace(options, cache="loader")
    return variants


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def fmt(value: float | None, spec: str, missing: str = "n/a") -> str:
    return missing if value is None or not math.isfinite(value) else format(value, spec)


def row_text(row: dict[str, Any]) -> str:
    mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    speedup = fmt(row.get("speedup_vs_naive"), ".1f") + "x"
    return (
        f"  {row['model']:<12} {row['size']:>4}^3  {row['path']:<22} "
        f"{row['volumes_per_s']:>9.2f} {mfu:>8} {row['stall_pct']:>7.1f}% "
        f"{row['step_s'] * 1e3:>9.1f} {speedup:>9}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="densenet121,sfcn,vit_b")
    parser.add_argument("--sizes", default="128,96", help="cubic volume sides")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compile, autotune)")
    parser.add_argument("--volumes", type=int, default=64, help="distinct volumes on disk")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--paths", default="naive,pipeline,lightning", help="which loops to run")
    for name in ("amp", "channels-last", "compile", "fused"):
        parser.add_argument(f"--{name}", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--cache", choices=("auto", "resident", "loader"), default="auto")
    parser.add_argument("--ablate", action="store_true", help="also each speed-up off in turn")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--tiny", action="store_true", help="small networks (tests)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the volumes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Lightning's start-up notices would interleave with the table (its import sets the level,
    # so it is imported first), and a validation batch of one class is expected here.
    import lightning.pytorch  # noqa: F401

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No (negative|positive) samples in targets")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    specs = TINY_MODELS if args.tiny else MODELS
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(specs))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(specs)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = [p.strip() for p in args.paths.split(",")]
    peak = bf16_peak_flops(device, args.peak_tflops)
    name = device_name(device)
    info = versions()

    print(f"machine: {machine()}")
    print(f"device: {name}")
    print(f"torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}")
    print(f"load average at start: {load()} (other processes compete for the cores above 0)")
    peak_text = f"{peak / 1e12:.1f} TFLOP/s" if peak else "unknown (MFU n/a; --peak-tflops)"
    print(f"dense bf16 peak: {peak_text}")
    print(
        f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, "
        f"{args.volumes} volumes, {args.workers} loader workers"
    )
    header = (
        f"  {'model':<12} {'size':>6}  {'path':<22} {'volumes/s':>9} {'MFU':>8} "
        f"{'stall':>8} {'step ms':>9} {'vs naive':>9}"
    )
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.volumes).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in sizes:
            start = time.perf_counter()
            niftis, arrays = write_volumes(Path(tmp) / str(size), size, args.volumes)
            print(
                f"\n{size}^3: wrote {args.volumes} volumes in {time.perf_counter() - start:.1f} s"
            )
            print(header)
            for model_name in models:
                spec = specs[model_name]
                flops = forward_flops(spec, size)
                runs: list[tuple[str, PipelineOptions | None]] = []
                if "naive" in paths:
                    runs.append(("naive", None))
                options = resolve_options(args, device, cnn=spec[2])
                if "pipeline" in paths:
                    runs.append(("pipeline", options))
                    if args.ablate:
                        runs += [(f"pipeline:{k}", v) for k, v in ablations(options).items()]
                if "lightning" in paths:
                    runs.append(("lightning", options))
                naive_rate = None
                for path, options in runs:
                    torch.manual_seed(0)
                    model = build_model(spec, size)
                    try:
                        if options is None:
                            timing = run_naive(model, niftis, labels, device, args)
                        elif path == "lightning":
                            timing = run_lightning(
                                spec, size, arrays, labels, device, options, args
                            )
                        else:
                            timing = run_pipeline(model, arrays, labels, device, options, args)
                    except torch.OutOfMemoryError:
                        print(f"  {model_name:<12} {size:>4}^3  {path:<22} out of memory")
                        continue
                    finally:
                        del model
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    if path == "naive":
                        naive_rate = timing.volumes_per_s
                    row = {
                        "model": model_name,
                        "size": size,
                        "path": path,
                        "options": asdict(options) if options else None,
                        "forward_gflops_per_volume": flops / 1e9,
                        "mfu": 3 * flops * timing.volumes_per_s / peak if peak else None,
                        "speedup_vs_naive": (
                            timing.volumes_per_s / naive_rate if naive_rate else None
                        ),
                        **asdict(timing),
                    }
                    rows.append(row)
                    print(row_text(row), flush=True)

    checks = target_checks(rows, device)
    for line in checks["lines"]:
        print(line)
    print(f"load average at end: {load()}")
    report = {
        "benchmark": "train_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": name,
        "machine": machine(),
        "versions": info,
        "bf16_peak_tflops": peak / 1e12 if peak else None,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "tmp"
        },
        "results": rows,
        "targets": checks["targets"],
        "note": (
            "CPU run: figures show the benchmark works, not GPU performance"
            if device.type == "cpu"
            else "GPU run"
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_tiny" if args.tiny else ""
    out = args.out / f"train_throughput_{slug(name.split('(')[0])}{suffix}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def target_checks(rows: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Issue #8's targets for DenseNet121-3D at 128^3 (meant for an H100/H200)."""
    row = next(
        (r for r in rows if (r["model"], r["size"], r["path"]) == ("densenet121", 128, "pipeline")),
        None,
    )
    if row is None:
        return {"targets": None, "lines": ["targets: densenet121 at 128^3 not measured"]}
    targets = {
        "mfu": {"value": row["mfu"], "target": TARGET_MFU},
        "speedup_vs_naive": {"value": row["speedup_vs_naive"], "target": TARGET_SPEEDUP},
        "stall_pct": {"value": row["stall_pct"], "target_below": TARGET_STALL_PCT},
    }
    mfu = fmt(None if row["mfu"] is None else 100 * row["mfu"], ".1f")
    speedup = fmt(row["speedup_vs_naive"], ".1f")
    lines = [
        f"targets (densenet121, 128^3, pipeline; meant for H100/H200, this is {device.type}): "
        f"MFU {mfu}% (>= {100 * TARGET_MFU:.0f}%), {speedup}x naive (>= {TARGET_SPEEDUP:.0f}x), "
        f"stall {row['stall_pct']:.1f}% (< {TARGET_STALL_PCT:.0f}%)"
    ]
    return {"targets": targets, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
