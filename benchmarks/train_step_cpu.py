"""Seconds per fine-tuning step on the CPU: fp32, channels-last-3d, bf16 autocast, and both.

    .venv/bin/python benchmarks/train_step_cpu.py [--models sfcn,densenet121] [--steps 5]
        [--warmup 3] [--rounds 7] [--threads N] [--out benchmarks/results/train_step_cpu.json]

One step is what ``fit_task_model`` runs per training batch (less Lightning's bookkeeping):
``TaskModule`` forward + BCE loss, backward, AdamW step, on a batch of random volumes. The
architecture and its options come from ``conf/`` composed as ``params.yaml`` is (``sfcn`` is
the CPU profile's model; ``densenet121`` is composed with ``model=densenet121``), the volume
shape and batch size from the CPU profile. The four variants use the pipeline's own switches:

- ``channels_last``: ``finetune.channels_last: true`` (``apply_speedups`` turns the backbone's
  5-D weights channels-last-3d; oneDNN then runs the convolutions in NDHWC),
- ``bf16``: ``finetune.precision: bf16-mixed`` (Lightning's CPU autocast to bfloat16; the
  weights, the optimizer and the loss stay fp32).

The variants are timed in interleaved rounds (each round runs every variant once), so a change
in the machine's load hits all of them alike. Each round's mean s/step is recorded; the
headline figure is the fastest round (the least disturbed by other processes on a shared
machine, as ``timeit`` reports), and the median is printed beside it. Writes a JSON with the
machine (``lscpu`` model name, cores, the flags that matter: avx512f, avx512_bf16, amx_bf16),
the torch version, the load average and every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from machine_info import load

from neurotransfer.compose import compose_params
from neurotransfer.config import FinetuneSettings, settings_from_dict
from neurotransfer.models import TaskHead, build_backbone
from neurotransfer.train.fit import apply_speedups
from neurotransfer.train.module import OptimConfig, TaskModule

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, tuple[bool, bool]] = {  # name -> (channels_last, bf16)
    "fp32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "channels_last+bf16": (True, True),
}


def lscpu() -> dict[str, Any]:
    """CPU model name, core count and the instruction-set flags bf16 speed depends on."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = set(fields.get("Flags", "").split())
    return {
        "model_name": fields.get("Model name", "unknown"),
        "cpus": os.cpu_count(),
        "cores_per_socket": fields.get("Core(s) per socket"),
        "threads_per_core": fields.get("Thread(s) per core"),
        "flags": {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")},
    }


def model_setup(name: str) -> tuple[str, dict[str, Any], tuple[int, ...], int]:
    """(architecture, options, volume shape, batch size) as the CPU profile composes them."""
    overrides = [] if name == "sfcn" else [f"model={name}"]
    settings = settings_from_dict(yaml.safe_load(compose_params(overrides, REPO / "conf")))
    if settings.model.name != name:
        raise SystemExit(f"conf/ composed model {settings.model.name!r}, expected {name!r}")
    shape = tuple(settings.data.preprocess.shape)
    return settings.model.name, dict(settings.model.options), shape, settings.finetune.batch_size


def build_step(
    name: str, options: dict[str, Any], shape: tuple[int, ...], batch: int, variant: str
) -> Any:
    """A closure running one training step of `variant` on a fixed random batch."""
    channels_last, bf16 = VARIANTS[variant]
    torch.manual_seed(0)
    backbone = build_backbone(name, shape, **options)
    module = TaskModule(
        backbone, TaskHead(backbone.out_features), "binary", OptimConfig(lr=1e-4)
    ).train()
    apply_speedups(module, FinetuneSettings(channels_last=channels_last, accelerator="cpu"))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    volumes = torch.randn(batch, 1, *shape, generator=generator)
    targets = torch.randint(0, 2, (batch,), generator=generator).float()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            out = module(volumes).float()
        loss = module.loss_fn(out, targets)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def time_steps(step: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="sfcn", help="comma-separated: sfcn, densenet121")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "train_step_cpu.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = lscpu()
    print(f"cpu: {cpu['model_name']}, {cpu['cpus']} CPUs, flags {cpu['flags']}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    load_start = load()
    print(
        f"load average at start: {load_start} (other processes compete for the cores above 0)",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        name, options, shape, batch = model_setup(model)
        print(f"\n{name} {options}, batch {batch} x {'x'.join(map(str, shape))}", flush=True)
        steps = {v: build_step(name, options, shape, batch, v) for v in VARIANTS}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant, step in steps.items():
                rounds[variant].append(time_steps(step, args.steps))
        fp32 = min(rounds["fp32"])
        for variant, values in rounds.items():
            seconds, median = min(values), statistics.median(values)
            print(
                f"  {variant:<20} {seconds:.3f} s/step  ({fp32 / seconds:.2f}x fp32; median of "
                f"{len(values)} rounds {median:.3f})",
                flush=True,
            )
            results.append(
                {
                    "model": name,
                    "options": options,
                    "shape": list(shape),
                    "batch": batch,
                    "variant": variant,
                    "channels_last": VARIANTS[variant][0],
                    "bf16": VARIANTS[variant][1],
                    "seconds_per_step": round(seconds, 4),
                    "median_seconds_per_step": round(median, 4),
                    "speedup_vs_fp32": round(fp32 / seconds, 3),
                    "rounds_seconds_per_step": [round(v, 4) for v in values],
                }
            )
    load_end = load()
    print(f"\nload average at end: {load_end}")
    report = {
        "benchmark": "train_step_cpu",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": load_end},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
