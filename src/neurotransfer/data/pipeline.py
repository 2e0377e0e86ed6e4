"""The ``preprocess`` stage's work: ingest -> preprocess every scan in parallel -> splits ->
cache + manifest + QC, written atomically.

A failing scan never stops the run: its error becomes the ``exclusion_reason`` of its row, and
a scan that kills its worker process (a crash inside a C library) is found and excluded while
the others carry on. Scans whose input file, settings and preprocessing code are unchanged since
the previous run are reused from the previous cache (see ``cache.scan_cache_key``) once the
array passes verification (``cache.cached_array_problem``: header, size, recorded sha256); a
damaged one is recomputed and reported. A run holds the processed folder's lock, replaces the
cache and QC folders together by renames (``atomic.atomic_directories``), and its worker
processes die with it.
"""

from __future__ import annotations

import functools
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

from neurotransfer.atomic import atomic_directories, output_lock
from neurotransfer.config import DataSettings, PreprocessSettings
from neurotransfer.data.cache import (
    cached_array_problem,
    file_sha256,
    scan_cache_key,
    settings_fingerprint,
)
from neurotransfer.data.ingest import ingest
from neurotransfer.data.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, read_manifest
from neurotransfer.data.splits import assign_folds, assign_splits
from neurotransfer.process_guard import die_with_parent

log = logging.getLogger(__name__)

# What one scan's processing leaves in its manifest row (besides the array and its sha256).
# Its duration goes to the metrics' timing, not the manifest: a re-run's manifest is then
# byte-identical to the previous one when nothing changed.
RESULT_COLUMNS = ("qc_template_corr", "qc_brain_coverage", "registration_scale")
EXTRA_COLUMNS = [
    "fold",  # cross-validation fold of a `cv` scan (data.splits.mode kfold), empty otherwise
    "scan_id",
    "source_path",
    "cache_key",
    "array_sha256",
    "qc_template_corr",
    "qc_brain_coverage",
    "registration_scale",
    "qc_outlier",
]

_WORKER_SPACE: Any = None  # the TemplateSpace of a worker process, built once


def init_worker(settings: PreprocessSettings, parent_pid: int | None = None) -> None:
    """Set up a process for `process_one_scan`.

    In a pool worker (`parent_pid`: the pid of the process that made the pool) the worker is
    also tied to its parent, so a kill -9 of the stage never leaves workers behind.
    """
    import SimpleITK as sitk

    from neurotransfer.data.preprocessing import TemplateSpace

    if parent_pid is not None:
        die_with_parent(parent_pid)
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
        "array_sha256": file_sha256(out_path),
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
                workers, initializer=init_worker, initargs=(settings, os.getpid())
            ) as pool:
                futures = {pool.submit(worker, *jobs[i], seed): i for i in pending}
                try:
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update()
                except BrokenProcessPool:
                    raise
                except BaseException:
                    # Not one scan's failure (disk full, Ctrl-C): stop now, not after the queue.
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
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
    manifest_path = processed / MANIFEST_NAME
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


def _drop_damaged_arrays(
    scans: pd.DataFrame,
    todo: Any,
    previous: dict[str, dict[str, Any]],
    root: Path,
    shape: tuple[int, ...],
) -> list[dict[str, str]]:
    """Verify every previous array about to be reused; drop damaged ones from `previous`.

    A dropped entry is recomputed. Returns what was found, for the metrics. Sound entries from a
    manifest without ``array_sha256`` gain the digest they hash to.
    """
    damaged: list[dict[str, str]] = []
    for i in todo:
        key = scans.at[i, "cache_key"]
        before = previous.get(key)
        if before is None or not before["path"]:
            continue  # not reused, or a recorded failure (no array)
        problem, digest = cached_array_problem(
            root / before["path"], shape, str(before.get("array_sha256", ""))
        )
        if problem:
            log.warning("%s: damaged cached array (%s); recomputing it", before["path"], problem)
            damaged.append(
                {
                    "dataset": str(scans.at[i, "dataset"]),
                    "scan_id": str(scans.at[i, "scan_id"]),
                    "path": str(before["path"]),
                    "problem": problem,
                }
            )
            del previous[key]
        else:
            before["array_sha256"] = digest
    return damaged


def _holding_output_lock(
    run: Callable[[DataSettings, Path, bool], dict[str, Any]],
) -> Callable[..., dict[str, Any]]:
    """Run with the processed folder's lock held: a second run on it stops at once, naming it."""

    @functools.wraps(run)
    def locked(
        settings: DataSettings, root: Path = Path("."), progress: bool = True
    ) -> dict[str, Any]:
        with output_lock(root / settings.processed_dir):
            return run(settings, root, progress)

    return locked


@_holding_output_lock
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
    processed_real = processed.resolve()
    settings_hash = settings_fingerprint(settings.preprocess, settings.splits.seed)
    scans["path"] = ""
    scans["cache_key"] = ""
    for i in scans.index[scans["exclusion_reason"] == ""]:
        source = scans.at[i, "source_path"]
        path = f"{settings.processed_dir}/{scans.at[i, 'dataset']}/{scans.at[i, 'scan_id']}.npy"
        # Ingest refuses unsafe ids; this guards the write itself: never outside processed_dir.
        if not (root / path).resolve().is_relative_to(processed_real):
            scans.at[i, "exclusion_reason"] = (
                f"{source}: output path outside the processed folder ({path}; unsafe scan id)"
            )
            continue
        try:
            scans.at[i, "cache_key"] = scan_cache_key(source, settings_hash)
        except OSError as exc:  # vanished or changed since ingest checked it: exclude, go on
            scans.at[i, "exclusion_reason"] = f"{source}: cannot be read ({exc.strerror or exc})"
            continue
        scans.at[i, "path"] = path
    todo = scans.index[scans["exclusion_reason"] == ""]
    previous = _previous_results(processed, root)
    damaged = _drop_damaged_arrays(scans, todo, previous, root, settings.preprocess.shape)
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
    scans["array_sha256"] = ""

    process_start = time.perf_counter()
    # The cache and its QC figures are replaced together, or (on any failure) neither is.
    with atomic_directories([processed, root / settings.qc_dir]) as (tmp, qc_tmp):

        def in_tmp(index: Any) -> Path:
            return tmp / Path(scans.at[index, "path"]).relative_to(settings.processed_dir)

        for i in reused:
            before = previous[scans.at[i, "cache_key"]]
            if before["path"]:
                _link_or_copy(root / before["path"], in_tmp(i))
            scans.at[i, "exclusion_reason"] = before["exclusion_reason"]
            scans.at[i, "array_sha256"] = before.get("array_sha256", "")
            for column in RESULT_COLUMNS:
                scans.at[i, column] = before.get(column, np.nan)
        jobs = [(str(scans.at[i, "source_path"]), str(in_tmp(i))) for i in compute]
        results = process_scans(jobs, settings.preprocess, settings.splits.seed, progress)
        process_seconds = time.perf_counter() - process_start
        scan_seconds = pd.Series(np.nan, index=scans.index)
        for i, result in zip(compute, results, strict=True):
            for key, value in result.items():
                if key == "seconds":
                    scan_seconds[i] = value
                else:
                    scans.at[i, key] = value
        failed = scans["exclusion_reason"] != ""
        scans.loc[failed, "path"] = ""

        scans["split"] = assign_splits(scans, settings.splits)
        scans["fold"] = assign_folds(scans, settings.splits)
        ok = scans["split"] != "excluded"
        scans["qc_outlier"] = False
        scans.loc[ok, "qc_outlier"] = (
            scans.loc[ok, "qc_template_corr"] < settings.preprocess.min_template_correlation
        ) | scans[ok].groupby("dataset")["qc_template_corr"].transform(_robust_outliers)

        # Relative to the repository root like `path`, so a moved clone's manifest still holds.
        scans["source_path"] = [os.path.relpath(p, root) if p else "" for p in scans["source_path"]]
        manifest = scans[MANIFEST_COLUMNS + EXTRA_COLUMNS]
        manifest.to_csv(tmp / MANIFEST_NAME, index=False, float_format="%.6g")
        qc_seconds = write_qc(manifest, tmp, qc_tmp, settings)

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
        # Previous arrays that failed verification (header, size, sha256): recomputed.
        "damaged_cache": {"n": len(damaged), "scans": damaged},
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
            "mean_scan_s": _finite(scan_seconds.mean()) if compute else None,
            "max_scan_s": _finite(scan_seconds.max()) if compute else None,
            "slowest_scan": _slowest(scans, scan_seconds),
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


def _slowest(scans: pd.DataFrame, scan_seconds: pd.Series) -> str | None:
    """``dataset/scan_id`` of the scan that took longest to compute, if any was computed."""
    timed = scan_seconds.dropna()
    if timed.empty:
        return None
    slowest = timed.idxmax()
    return f"{scans.at[slowest, 'dataset']}/{scans.at[slowest, 'scan_id']}"


def _finite(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None
