"""The ``preprocess`` stage's work: ingest -> preprocess every scan in parallel -> splits ->
cache + manifest + QC, written atomically.

A failing scan never stops the run: its error becomes the ``exclusion_reason`` of its row, and
a scan that kills its worker process (a crash inside a C library) is found and excluded while
the others carry on. Scans whose input file, settings and preprocessing code are unchanged since
the previous run are reused from the previous cache (see ``cache.scan_cache_key``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotransfer.atomic import atomic_directory
from neurotransfer.config import DataSettings, PreprocessSettings
from neurotransfer.data.cache import (
    MANIFEST_COLUMNS,
    read_manifest,
    scan_cache_key,
    settings_fingerprint,
)
from neurotransfer.data.ingest import ingest
from neurotransfer.data.splits import assign_splits

log = logging.getLogger(__name__)

# What one scan's processing leaves in its manifest row (besides the array).
RESULT_COLUMNS = ("qc_template_corr", "qc_brain_coverage", "registration_scale", "seconds")
EXTRA_COLUMNS = [
    "scan_id",
    "source_path",
    "cache_key",
    "qc_template_corr",
    "qc_brain_coverage",
    "registration_scale",
    "qc_outlier",
    "seconds",
]

_WORKER_SPACE: Any = None  # the TemplateSpace of a worker process, built once


def init_worker(settings: PreprocessSettings) -> None:
    import SimpleITK as sitk

    from neurotransfer.data.preprocessing import TemplateSpace

    global _WORKER_SPACE
    # One ITK thread per process: parallelism comes from processes, one scan each.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _WORKER_SPACE = TemplateSpace(settings)


def process_one_scan(source_path: str, out_path: str, seed: int) -> dict[str, Any]:
    """Preprocess one scan and write its fp16 array; errors become an exclusion reason."""
    from neurotransfer.data.preprocessing import preprocess_scan

    start = time.perf_counter()
    try:
        result = preprocess_scan(source_path, _WORKER_SPACE, seed)
    except Exception as exc:  # any failure of one scan is recorded, never fatal to the run
        problem = str(exc) if str(exc).startswith(source_path) else f"{source_path}: {exc}"
        return {"exclusion_reason": problem, "seconds": time.perf_counter() - start}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, result.volume.astype(np.float16))
    return {
        "exclusion_reason": "",
        "qc_template_corr": result.template_correlation,
        "qc_brain_coverage": result.brain_coverage,
        "registration_scale": result.registration_scale,
        "seconds": result.seconds,
    }


WORKER_DIED = "the worker process died while preprocessing this scan"


def _crashed(source_path: str, error: BaseException) -> dict[str, Any]:
    return {
        "exclusion_reason": f"{source_path}: {WORKER_DIED} ({type(error).__name__}; a crash in "
        "a C library, or the process was killed, e.g. for memory)",
        "seconds": float("nan"),
    }


ScanWorker = Callable[[str, str, int], dict[str, Any]]


def process_scans(
    jobs: list[tuple[str, str]],
    settings: PreprocessSettings,
    seed: int = 0,
    progress: bool = True,
    worker: ScanWorker = process_one_scan,
) -> list[dict[str, Any]]:
    """Run `worker` over (source, output) pairs with `settings.workers` processes.

    Results come back in job order. If a worker process dies, the jobs it left unfinished are
    retried one at a time in a fresh process, so the scan that kills a process is identified,
    excluded, and the rest continue in parallel again.
    """
    from tqdm.auto import tqdm

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    # In a log file (DVC, CI) a redraw is a new line: redraw every 10 s there.
    bar = tqdm(
        total=len(jobs),
        desc="preprocess",
        unit="scan",
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    if settings.workers == 1 or len(jobs) <= 1:
        init_worker(settings)
        for i, (source, out) in enumerate(jobs):
            results[i] = worker(source, out, seed)
            bar.update()
        bar.close()
        return [r for r in results if r is not None]

    pending = list(range(len(jobs)))
    workers = settings.workers
    while pending:
        try:
            with ProcessPoolExecutor(
                workers, initializer=init_worker, initargs=(settings,)
            ) as pool:
                futures = {pool.submit(worker, *jobs[i], seed): i for i in pending}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            pending = []
        except BrokenProcessPool as error:
            pending = [i for i in pending if results[i] is None]
            if workers == 1:
                # One worker takes jobs in order: the first unfinished one killed it.
                culprit = pending.pop(0)
                log.error("%s crashed its worker process; excluded", jobs[culprit][0])
                results[culprit] = _crashed(jobs[culprit][0], error)
                bar.update()
                workers = settings.workers
            else:
                log.warning(
                    "a worker process died; retrying %d unfinished scan(s) one at a time "
                    "to find the one that crashes",
                    len(pending),
                )
                workers = 1
    bar.close()
    return [r for r in results if r is not None]


def _robust_outliers(values: pd.Series, threshold: float = 3.5) -> pd.Series:
    """Low outliers by the median/MAD modified z-score (Iglewicz and Hoaglin's 3.5)."""
    median = values.median()
    mad = (values - median).abs().median()
    if not mad > 0:
        return pd.Series(False, index=values.index)
    return 0.6745 * (values - median) / mad < -threshold


def _previous_results(processed: Path, root: Path) -> dict[str, dict[str, Any]]:
    """cache key -> what the previous run recorded for it (only entries still usable)."""
    manifest_path = processed / "manifest.csv"
    if not manifest_path.is_file():
        return {}
    try:
        previous = read_manifest(manifest_path)
    except (ValueError, OSError) as exc:
        log.warning(
            "%s: previous manifest unreadable, recomputing everything (%s)", manifest_path, exc
        )
        return {}
    if "cache_key" not in previous.columns:
        return {}
    reusable: dict[str, dict[str, Any]] = {}
    for row in previous[previous["cache_key"] != ""].to_dict("records"):
        if WORKER_DIED in row["exclusion_reason"]:
            continue  # maybe killed from outside (memory): worth another try
        failed_in_processing = row["path"] == ""
        if not failed_in_processing and not (root / row["path"]).is_file():
            continue
        reusable[row["cache_key"]] = row
    return reusable


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # instant, and the old folder's removal leaves it intact
    except OSError:
        shutil.copy2(source, target)


def run_preprocess(
    settings: DataSettings, root: Path = Path("."), progress: bool = True
) -> dict[str, Any]:
    """Build ``processed_dir`` and ``qc_dir`` under `root`; return the metrics to record."""
    from neurotransfer.data.qc import write_qc

    start = time.perf_counter()
    scans, issues = ingest(settings, root)
    for issue in issues:
        log.warning(
            "%s: %s %s", issue.dataset, issue.message, issue.subjects[:10] if issue.subjects else ""
        )
    processed = root / settings.processed_dir
    todo = scans.index[scans["exclusion_reason"] == ""]
    scans["path"] = ""
    scans.loc[todo, "path"] = [
        f"{settings.processed_dir}/{d}/{s}.npy"
        for d, s in zip(scans.loc[todo, "dataset"], scans.loc[todo, "scan_id"], strict=True)
    ]
    settings_hash = settings_fingerprint(settings.preprocess, settings.splits.seed)
    scans["cache_key"] = ""
    scans.loc[todo, "cache_key"] = [
        scan_cache_key(p, settings_hash) for p in scans.loc[todo, "source_path"]
    ]
    previous = _previous_results(processed, root)
    reused = [i for i in todo if scans.at[i, "cache_key"] in previous]
    compute = [i for i in todo if scans.at[i, "cache_key"] not in previous]
    log.info(
        "preprocessing %d scan(s) from %d dataset(s) with %d worker(s); %d reused unchanged",
        len(compute),
        len(settings.datasets),
        settings.preprocess.workers,
        len(reused),
    )
    for column in RESULT_COLUMNS:
        scans[column] = np.nan

    process_start = time.perf_counter()
    with atomic_directory(processed) as tmp:

        def in_tmp(index: Any) -> Path:
            return tmp / Path(scans.at[index, "path"]).relative_to(settings.processed_dir)

        for i in reused:
            before = previous[scans.at[i, "cache_key"]]
            if before["path"]:
                _link_or_copy(root / before["path"], in_tmp(i))
            scans.at[i, "exclusion_reason"] = before["exclusion_reason"]
            for column in RESULT_COLUMNS:
                scans.at[i, column] = before.get(column, np.nan)
        jobs = [(str(scans.at[i, "source_path"]), str(in_tmp(i))) for i in compute]
        results = process_scans(jobs, settings.preprocess, settings.splits.seed, progress)
        process_seconds = time.perf_counter() - process_start
        for i, result in zip(compute, results, strict=True):
            for key, value in result.items():
                scans.at[i, key] = value
        failed = scans["exclusion_reason"] != ""
        scans.loc[failed, "path"] = ""

        scans["split"] = assign_splits(scans, settings.splits)
        ok = scans["split"] != "excluded"
        scans["qc_outlier"] = False
        scans.loc[ok, "qc_outlier"] = (
            scans.loc[ok, "qc_template_corr"] < settings.preprocess.min_template_correlation
        ) | scans[ok].groupby("dataset")["qc_template_corr"].transform(_robust_outliers)

        # Relative to the repository root like `path`, so a moved clone's manifest still holds.
        scans["source_path"] = [os.path.relpath(p, root) if p else "" for p in scans["source_path"]]
        manifest = scans[MANIFEST_COLUMNS + EXTRA_COLUMNS]
        manifest.to_csv(tmp / "manifest.csv", index=False, float_format="%.6g")
        qc_seconds = write_qc(manifest, tmp, root / settings.qc_dir, settings)

    n_computed_ok = sum(not r["exclusion_reason"] for r in results)
    reasons = scans.loc[scans["split"] == "excluded", "exclusion_reason"]
    return {
        "n_scans": len(scans),
        "n_subjects": int(scans["subject_id"].nunique()),
        "counts": {
            "dataset": _counts(scans, "dataset"),
            "site": _counts(scans, "site"),
            "split": {str(k): int(v) for k, v in Counter(scans["split"]).items()},
        },
        "exclusions": {
            "n": len(reasons),
            "by_reason": _reason_kinds(reasons),
            "scans": [
                {"dataset": d, "scan_id": s, "reason": r}
                for d, s, r in zip(
                    scans.loc[reasons.index, "dataset"],
                    scans.loc[reasons.index, "scan_id"],
                    reasons,
                    strict=True,
                )
            ],
        },
        "issues": [issue.as_dict() for issue in issues],
        "qc": {
            "template_corr_median": _finite(scans.loc[ok, "qc_template_corr"].median()),
            "template_corr_min": _finite(scans.loc[ok, "qc_template_corr"].min()),
            "min_template_correlation": settings.preprocess.min_template_correlation,
            "n_outliers": int(scans["qc_outlier"].sum()),
            "outliers": scans.loc[scans["qc_outlier"], "scan_id"].tolist(),
        },
        "timing": {
            "total_s": round(time.perf_counter() - start, 2),
            "preprocess_s": round(process_seconds, 2),
            "qc_s": round(qc_seconds, 2),
            "n_computed": len(compute),
            "n_reused": len(reused),
            "scans_per_s": round(n_computed_ok / process_seconds, 3)
            if compute and process_seconds > 0
            else None,
            "mean_scan_s": _finite(scans.loc[compute, "seconds"].mean()) if compute else None,
            "workers": settings.preprocess.workers,
            "cpu_count": os.cpu_count(),
        },
        "settings": {
            "registration": settings.preprocess.registration,
            "bias_correction": settings.preprocess.bias_correction,
            "spacing_mm": list(settings.preprocess.spacing),
            "shape": list(settings.preprocess.shape),
        },
    }


def _counts(scans: pd.DataFrame, column: str) -> dict[str, dict[str, int]]:
    table = scans.groupby([column, "split"]).size()
    out: dict[str, dict[str, int]] = {}
    for (key, split), n in table.items():
        out.setdefault(str(key), {})[str(split)] = int(n)
    return out


def _reason_kinds(reasons: pd.Series) -> dict[str, int]:
    """Exclusion reasons without their file names, counted (e.g. 'NaN/Inf voxels': 2)."""
    kinds = reasons.map(lambda r: r.split(": ", 1)[-1].split(" (")[0])
    return {str(k): int(v) for k, v in Counter(kinds).items()}


def _finite(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None
