"""Preprocessing and cache throughput, printed with the machine it ran on.

    .venv/bin/python benchmarks/preprocess.py [--scans 24] [--workers 2] [--ixi DIR]

1. Preprocessing onto the 2 mm grid (80 x 96 x 80), with and without registration, on real
   IXI-HH scans when the folder exists (else on synthetic MNI-space heads): scans/s with
   `--workers` processes (the stage's code path), and CPU seconds per scan on one process, which
   does not depend on what else the machine is running (workers / CPU s = the rate on idle cores).
2. Cached reads through the DataModule's dataset (fp16 .npy -> float32 tensor, no augmentation)
   on one thread, as in a DataLoader worker: volumes/s at the CPU-profile grid and at 128^3,
   page cache warm (as from the second epoch on).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from machine_info import load, machine

from neurotransfer.config import PreprocessSettings
from neurotransfer.data.worker import init_worker, process_one_scan
from neurotransfer.stages.preprocess import process_scans

REPO = Path(__file__).resolve().parents[1]
GRID_2MM = {"spacing": (2.0, 2.0, 2.0), "shape": (80, 96, 80)}
TARGET_SCANS_PER_S = 1.0  # with registration, 2 mm, on 2 cores
TARGET_READS_PER_S = 500.0  # at 128^3


def synthetic_scans(folder: Path, n: int) -> list[Path]:
    sys.path.insert(0, str(REPO))
    from tests.data.niftis import mni_phantom

    paths = []
    for i in range(n):
        path = folder / f"synthetic_{i}.nii.gz"
        nib.save(mni_phantom(("PSR", "LPS")[i % 2], (2.0, 2.0, 2.0), "uint8", seed=i), path)
        paths.append(path)
    return paths


def parallel_rate(paths: list[Path], settings: PreprocessSettings, out: Path) -> float:
    jobs = [(str(p), str(out / f"{i}.npy")) for i, p in enumerate(paths)]
    start = time.perf_counter()
    results = process_scans(jobs, settings, progress=False)
    seconds = time.perf_counter() - start
    failed = [r["exclusion_reason"] for r in results if r["exclusion_reason"]]
    if failed:
        print(f"    {len(failed)} scan(s) failed: {failed[:3]}")
    return len(paths) / seconds


def cpu_seconds_per_scan(paths: list[Path], settings: PreprocessSettings, out: Path) -> float:
    init_worker(settings)  # template set-up once, as in each worker process
    start = time.process_time()
    for i, path in enumerate(paths):
        process_one_scan(str(path), str(out / f"serial_{i}.npy"), 0)
    return (time.process_time() - start) / len(paths)


def read_rate(shape: tuple[int, int, int], folder: Path, n: int = 64, repeats: int = 3) -> float:
    import torch

    from neurotransfer.data.datamodule import CachedVolumeDataset

    # DataLoader workers run torch on one thread; on a busy machine a multi-threaded fp16 ->
    # float32 copy mostly waits for its other threads to be scheduled.
    torch.set_num_threads(1)
    rows = []
    for i in range(n):
        path = folder / f"read_{shape[0]}_{i}.npy"
        volume = np.random.default_rng(i).random(shape, dtype=np.float32).astype(np.float16)
        np.save(path, volume)
        rows.append({"path": path.name, "target": 0.0, "subject_id": str(i), "site": "s"})
    dataset = CachedVolumeDataset(pd.DataFrame(rows).assign(dataset="d"), folder)
    best = 0.0
    for _ in range(repeats):  # the first pass warms the page cache, as the first epoch does
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=24, help="scans per measurement")
    parser.add_argument("--serial-scans", type=int, default=6, help="scans for CPU s per scan")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ixi", type=Path, default=REPO.parent / "shared" / "data" / "ixi-hh")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"load average at start: {load()} (other processes compete for the cores above 0)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        real = sorted(args.ixi.glob("sub-*/anat/*_T1w.nii.gz"))
        # Spread over the dataset rather than the first N (subject ids follow acquisition).
        paths = real[:: max(1, len(real) // args.scans)][: args.scans] if real else []
        paths = paths or synthetic_scans(tmp_path, args.scans)
        source = f"IXI-HH ({args.ixi})" if real else "synthetic MNI-space heads"
        print(f"preprocessing {len(paths)} scans of {source} onto the 2 mm grid 80x96x80")
        for registration in (True, False):
            settings = PreprocessSettings(
                **GRID_2MM, registration=registration, workers=args.workers
            )
            rate = parallel_rate(paths, settings, tmp_path)
            cpu = cpu_seconds_per_scan(paths[: args.serial_scans], settings, tmp_path)
            target = f" (target >= {TARGET_SCANS_PER_S:g})" if registration else ""
            print(
                f"  registration={registration!s:5}: {rate:.2f} scans/s with {args.workers} "
                f"workers{target}; {cpu:.2f} CPU s/scan -> {args.workers / cpu:.2f} scans/s "
                f"on {args.workers} idle cores"
            )
        for shape in (PreprocessSettings().shape, (128, 128, 128)):
            rate = read_rate(tuple(shape), tmp_path)
            target = f" (target >= {TARGET_READS_PER_S:g})" if shape == (128, 128, 128) else ""
            print(f"cached reads {'x'.join(map(str, shape))}: {rate:.0f} volumes/s{target}")
    print(f"load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
