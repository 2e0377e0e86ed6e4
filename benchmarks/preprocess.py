"""Preprocessing and cache throughput, printed with the machine it ran on.

    .venv/bin/python benchmarks/preprocess.py [--scans 16] [--ixi ../shared/data/ixi-hh]

1. scans/s with and without registration (2 mm grid, `--workers` processes) on real IXI-HH
   scans when the folder exists, else on synthetic MNI-space heads;
2. cached read throughput (volumes/s) at the CPU-profile grid and at 128^3 (fp16 .npy, memory
   mapped and copied to float32, the DataModule's read path).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from neurotransfer.config import PreprocessSettings
from neurotransfer.data.cache import load_cached_volume
from neurotransfer.data.pipeline import process_scans

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}, "
        f"load average {load:.1f} at start"
    )


def synthetic_scans(folder: Path, n: int) -> list[Path]:
    sys.path.insert(0, str(REPO))
    from tests.data.niftis import mni_phantom

    paths = []
    for i in range(n):
        path = folder / f"synthetic_{i}.nii.gz"
        nib.save(mni_phantom(("PSR", "LPS")[i % 2], (2.0, 2.0, 2.0), "uint8", seed=i), path)
        paths.append(path)
    return paths


def preprocessing_rate(paths: list[Path], settings: PreprocessSettings, out: Path) -> float:
    jobs = [(str(p), str(out / f"{i}.npy")) for i, p in enumerate(paths)]
    start = time.perf_counter()
    results = process_scans(jobs, settings, progress=False)
    seconds = time.perf_counter() - start
    failed = [r["exclusion_reason"] for r in results if r["exclusion_reason"]]
    if failed:
        print(f"  {len(failed)} scan(s) failed: {failed[:3]}")
    return len(paths) / seconds


def read_rate(
    shape: tuple[int, int, int], folder: Path, to_float32: bool, n: int = 64, repeats: int = 3
) -> float:
    paths = []
    for i in range(n):
        path = folder / f"read_{shape[0]}_{i}.npy"
        np.save(path, np.random.default_rng(i).random(shape, dtype=np.float32).astype(np.float16))
        paths.append(path)
    best = 0.0
    for _ in range(repeats):  # warm page cache after the first pass, as in training epochs
        start = time.perf_counter()
        for path in paths:
            volume = load_cached_volume(path)
            np.asarray(volume, dtype=np.float32) if to_float32 else np.array(volume)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ixi", type=Path, default=REPO.parent / "shared" / "data" / "ixi-hh")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        real = sorted(args.ixi.glob("sub-*/anat/*_T1w.nii.gz"))[: args.scans]
        paths = real or synthetic_scans(tmp_path, args.scans)
        source = f"IXI-HH ({args.ixi})" if real else "synthetic MNI-space heads"
        print(f"preprocessing {len(paths)} scans from {source}, {args.workers} workers, 2 mm grid")
        for registration in (True, False):
            settings = PreprocessSettings(
                spacing=(2.0, 2.0, 2.0),
                shape=(80, 96, 80),
                registration=registration,
                workers=args.workers,
            )
            rate = preprocessing_rate(paths, settings, tmp_path)
            print(f"  registration={registration!s:5}: {rate:.2f} scans/s")
        for shape in (PreprocessSettings().shape, (128, 128, 128)):
            size = "x".join(map(str, shape))
            for to_float32 in (False, True):
                rate = read_rate(tuple(shape), tmp_path, to_float32)
                what = "fp16 -> float32" if to_float32 else "fp16 as stored"
                print(f"cached reads {size} {what}: {rate:.0f} volumes/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
