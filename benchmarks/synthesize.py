"""Sampling speed of the brain LDM: volumes per second against batch size and DDIM steps.

Times ``neurotransfer.synth.sampling.sample_volumes`` (MONAI ``LatentDiffusionInferer`` with
DDIM, noise to decoded volume) with randomly initialised networks; the speed does not depend on
the weights. Two architectures:

- ``--model params``: the networks the ``synthesize`` stage trains under the given params file
  (the CPU profile's tiny networks on 40x48x40 by default);
- ``--model bundle``: the published brain LDM (Pinaya et al.; conf/synthesize/pretrained.yaml)
  at 160x224x160, the scale of the issue's goal (<= 0.5 s per volume on an H100, bf16, batched).

Examples::

    python benchmarks/synthesize.py --model params --batch-sizes 1 10 50 --ddim-steps 10 20
    python benchmarks/synthesize.py --model bundle --batch-sizes 1 4 8 16 --ddim-steps 25 50 \
        --precision bf16-mixed --out reports/benchmarks/synthesize_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import load_settings, settings_from_dict
from neurotransfer.runtime import resolve_device
from neurotransfer.synth.networks import build_autoencoder, build_unet, latent_shape
from neurotransfer.synth.sampling import sample_volumes


def architecture(model: str, params: Path) -> dict[str, Any]:
    """Networks, schedule and image grid of the trained (params) or published (bundle) LDM."""
    if model == "params":
        settings = load_settings(params)
        if settings.synthesize is None:
            raise SystemExit(f"{params}: no `synthesize` block")
        config = settings.synthesize
        return {
            "autoencoder": config.autoencoder.net,
            "diffusion": config.diffusion.net,
            "schedule": config.diffusion.schedule,
            "image_shape": tuple(settings.data.preprocess.shape),
        }
    settings = settings_from_dict(yaml.safe_load(compose_params(["synthesize=pretrained"])))
    assert settings.synthesize is not None and settings.synthesize.pretrained is not None
    bundle = settings.synthesize.pretrained
    return {
        "autoencoder": bundle.autoencoder,
        "diffusion": bundle.diffusion,
        "schedule": bundle.schedule,
        "image_shape": tuple(bundle.image_shape),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    arch = architecture(args.model, args.params)
    device = resolve_device(args.accelerator)
    latent = latent_shape(
        arch["image_shape"], arch["autoencoder"], arch["diffusion"], key="image shape"
    )
    torch.manual_seed(0)
    autoencoder = build_autoencoder(arch["autoencoder"]).eval()
    unet = build_unet(arch["diffusion"], arch["autoencoder"].latent_channels).eval()

    def sample(n: int, batch_size: int, steps: int) -> float:
        _, timing = sample_volumes(
            autoencoder,
            unet,
            torch.rand(n, 4),
            latent_shape=latent,
            latent_channels=arch["autoencoder"].latent_channels,
            scale_factor=1.0,
            schedule=arch["schedule"],
            ddim_steps=steps,
            batch_size=batch_size,
            seed=0,
            device=device,
            precision=args.precision,
        )
        return timing.seconds

    rows = []
    for steps in args.ddim_steps:
        for batch_size in args.batch_sizes:
            sample(batch_size, batch_size, min(steps, 2))  # warm-up: kernels, allocator
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            n = batch_size * args.batches
            seconds = sample(n, batch_size, steps)
            row = {
                "ddim_steps": steps,
                "batch_size": batch_size,
                "volumes": n,
                "seconds": round(seconds, 3),
                "seconds_per_volume": round(seconds / n, 4),
                "volumes_per_second": round(n / seconds, 3),
            }
            if device.type == "cuda":
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {
        "model": args.model,
        "image_shape": list(arch["image_shape"]),
        "latent_shape": list(latent),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["params", "bundle"], default="params")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--batches", type=int, default=2, help="timed batches per setting")
    parser.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument(
        "--precision", choices=["auto", "32", "bf16-mixed", "16-mixed"], default="auto"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
