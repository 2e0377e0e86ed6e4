"""DVC stage `preprocess`: real or phantom BIDS/CSV datasets -> cached, split, QC'd cohort.

ingest -> preprocess every scan in parallel -> splits -> cache + manifest + QC, written
atomically. A failing scan never stops the run: its error becomes the ``exclusion_reason`` of its
row, and a scan that kills its worker process (a crash inside a C library) is found and excluded
while the others carry on. Scans whose input file, settings and preprocessing code are unchanged
since the previous run are reused from the previous cache (``data.reuse``, keyed by
``data.cache.scan_cache_key``) once the array passes verification; a damaged one is recomputed
and reported. A run holds the processed folder's lock, replaces the cache and QC folders
together by renames (``atomic.atomic_directories``), and its worker processes die with it.

Outputs: ``<processed_dir>/`` (one fp16 array per scan and ``manifest.csv``), ``<qc_dir>/``
(``qc_table.csv``, site montages) and ``metrics/preprocess.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotransfer.atomic import atomic_directories, output_lock, write_json_atomic
from neurotransfer.config import DataSettings, PreprocessSettings, Settings, SettingsError
from neurotransfer.paths import PREPROCESS_METRICS

# The science (numpy, pandas, tqdm and the data package: seconds to import) is imported inside
# the functions that use it: the CLI imports every stage module to build its parser, and
# `neurotransfer --help` must stay fast.
if TYPE_CHECKING:
    import pandas as pd
    from tqdm.auto import tqdm

    from neurotransfer.data.ingest import DatasetIssue

log = logging.getLogger(__name__)

ScanWorker = Callable[[str, str, int], dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.data.ingest import DatasetError
    from neurotransfer.data.splits import SplitError

    # Unwritable outputs (read-only, disk full, busy, another run's lock) raise
    # atomic.OutputError, an OSError whose message names the path and the cause: the CLI
    # prints it as one line (exit 1). Bad datasets or splits are settings problems (exit 2).
    try:
        metrics = run_preprocess(settings.data, Path("."), progress=not args.no_progress)
    except (DatasetError, SplitError) as err:
        raise SettingsError(str(err)) from err
    write_json_atomic(PREPROCESS_METRICS, metrics)


@dataclass
class _Plan:
    """What a run takes from the previous cache and what it computes (row labels of the scans)."""

    previous: dict[str, dict[str, Any]]  # cache key -> the previous run's manifest row
    damaged: list[dict[str, str]]  # previous arrays that failed verification, recomputed
    reused: list[Any]
    compute: list[Any]


@dataclass
class _Outcome:
    """What computing the scans and writing the outputs took, for the metrics."""

    results: list[dict[str, Any]]  # one per computed scan, in `_Plan.compute` order
    scan_seconds: pd.Series  # per scan; NaN where not computed
    process_seconds: float
    qc_seconds: float


def run_preprocess(
    settings: DataSettings, root: Path = Path("."), progress: bool = True
) -> dict[str, Any]:
    """Build ``processed_dir`` and ``qc_dir`` under `root`; return the metrics to record.

    The processed folder's lock is held throughout: a second run on it stops at once, naming it.
    """
    with output_lock(root / settings.processed_dir):
        start = time.perf_counter()
        scans, issues = _ingest(settings, root)
        plan = _plan(scans, settings, root)
        outcome = _write_outputs(scans, plan, settings, root, progress)
        return _metrics(scans, issues, plan, outcome, settings, start)


def _ingest(settings: DataSettings, root: Path) -> tuple[pd.DataFrame, list[DatasetIssue]]:
    """Every scan of every dataset, one row each, and the problems found (logged)."""
    from neurotransfer.data.ingest import ingest

    scans, issues = ingest(settings, root)
    for issue in issues:
        log.warning(
            "%s: %s %s", issue.dataset, issue.message, issue.subjects[:10] if issue.subjects else ""
        )
    return scans, issues


def _plan(scans: pd.DataFrame, settings: DataSettings, root: Path) -> _Plan:
    """Give each scan its cache entry; split them into reused (verified) and to be computed."""
    from neurotransfer.data.reuse import drop_damaged_arrays, previous_results

    _assign_cache_entries(scans, settings, root)
    todo = scans.index[scans["exclusion_reason"] == ""]
    previous = previous_results(root / settings.processed_dir, root)
    damaged = drop_damaged_arrays(scans, todo, previous, root, settings.preprocess.shape)
    reused = [i for i in todo if scans.at[i, "cache_key"] in previous]
    compute = [i for i in todo if scans.at[i, "cache_key"] not in previous]
    log.info(
        "preprocessing %d scan(s) from %d dataset(s) with %d worker(s); %d reused unchanged",
        len(compute),
        len(settings.datasets),
        settings.preprocess.workers,
        len(reused),
    )
    return _Plan(previous, damaged, reused, compute)


def _assign_cache_entries(scans: pd.DataFrame, settings: DataSettings, root: Path) -> None:
    """Fill ``path`` and ``cache_key`` of each usable scan; exclude those that cannot have one."""
    from neurotransfer.data.cache import scan_cache_key, settings_fingerprint

    processed_real = (root / settings.processed_dir).resolve()
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


def _write_outputs(
    scans: pd.DataFrame, plan: _Plan, settings: DataSettings, root: Path, progress: bool
) -> _Outcome:
    """Build the cache, manifest and QC in temporary folders and publish them together."""
    from neurotransfer.data.manifest import write_manifest
    from neurotransfer.data.qc import write_qc

    outputs = [root / settings.processed_dir, root / settings.qc_dir]
    process_start = time.perf_counter()
    # The cache and its QC figures are replaced together, or (on any failure) neither is.
    with atomic_directories(outputs) as (tmp, qc_tmp):

        def in_tmp(index: Any) -> Path:
            return tmp / Path(scans.at[index, "path"]).relative_to(settings.processed_dir)

        _take_reused(scans, plan, root, in_tmp)
        jobs = [(str(scans.at[i, "source_path"]), str(in_tmp(i))) for i in plan.compute]
        results = process_scans(jobs, settings.preprocess, settings.splits.seed, progress)
        process_seconds = time.perf_counter() - process_start
        scan_seconds = _take_computed(scans, plan.compute, results)
        _assign_splits_and_outliers(scans, settings)
        # Relative to the repository root like `path`, so a moved clone's manifest still holds.
        scans["source_path"] = [os.path.relpath(p, root) if p else "" for p in scans["source_path"]]
        manifest = write_manifest(scans, tmp)
        qc_seconds = write_qc(manifest, tmp, qc_tmp, settings)
    return _Outcome(results, scan_seconds, process_seconds, qc_seconds)


def _take_reused(
    scans: pd.DataFrame, plan: _Plan, root: Path, in_tmp: Callable[[Any], Path]
) -> None:
    """Empty the result columns, then fill the reused scans' from the previous run.

    Their arrays are linked (or copied) into the new cache at `in_tmp(row label)`.
    """
    import numpy as np

    from neurotransfer.data.worker import RESULT_COLUMNS

    for column in RESULT_COLUMNS:
        scans[column] = np.nan
    scans["array_sha256"] = ""
    for i in plan.reused:
        before = plan.previous[scans.at[i, "cache_key"]]
        if before["path"]:
            _link_or_copy(root / before["path"], in_tmp(i))
        scans.at[i, "exclusion_reason"] = before["exclusion_reason"]
        scans.at[i, "array_sha256"] = before.get("array_sha256", "")
        for column in RESULT_COLUMNS:
            scans.at[i, column] = before.get(column, np.nan)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # instant, and the old folder's removal leaves it intact
    except OSError:
        shutil.copy2(source, target)


def _take_computed(
    scans: pd.DataFrame, compute: list[Any], results: list[dict[str, Any]]
) -> pd.Series:
    """Record the computed scans' results in their rows; return each scan's seconds (or NaN).

    A failed scan (reused or computed) keeps no ``path``.
    """
    import numpy as np
    import pandas as pd

    scan_seconds = pd.Series(np.nan, index=scans.index)
    for i, result in zip(compute, results, strict=True):
        for key, value in result.items():
            if key == "seconds":
                scan_seconds[i] = value
            else:
                scans.at[i, key] = value
    failed = scans["exclusion_reason"] != ""
    scans.loc[failed, "path"] = ""
    return scan_seconds


def _assign_splits_and_outliers(scans: pd.DataFrame, settings: DataSettings) -> None:
    """Fill ``split``, ``fold`` and ``qc_outlier`` (failed scans are ``excluded``)."""
    from neurotransfer.data.qc import qc_outliers
    from neurotransfer.data.splits import assign_folds, assign_splits

    scans["split"] = assign_splits(scans, settings.splits)
    scans["fold"] = assign_folds(scans, settings.splits)
    scans["qc_outlier"] = qc_outliers(scans, settings.preprocess.min_template_correlation)


def process_scans(
    jobs: list[tuple[str, str]],
    settings: PreprocessSettings,
    seed: int = 0,
    progress: bool = True,
    worker: ScanWorker | None = None,
) -> list[dict[str, Any]]:
    """Run `worker` (default ``data.worker.process_one_scan``) over (source, output) pairs with
    `settings.workers` processes.

    Results come back in job order. If a worker process dies, the jobs it left unfinished are
    retried one at a time in a fresh process, so the scan that kills a process is identified,
    excluded, and the rest continue in parallel again.
    """
    from tqdm.auto import tqdm

    from neurotransfer.data.worker import init_worker, process_one_scan

    worker = worker or process_one_scan
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
    else:
        _process_in_pools(jobs, results, settings, seed, worker, bar)
    bar.close()
    return [r for r in results if r is not None]


def _process_in_pools(
    jobs: list[tuple[str, str]],
    results: list[dict[str, Any] | None],
    settings: PreprocessSettings,
    seed: int,
    worker: ScanWorker,
    bar: tqdm,
) -> None:
    """Fill `results` from process pools, a fresh one after each worker process dies."""
    from neurotransfer.data.worker import crashed_result

    pending = list(range(len(jobs)))
    workers = settings.workers
    while pending:
        try:
            _process_in_pool(jobs, pending, results, workers, settings, seed, worker, bar)
            pending = []
        except BrokenProcessPool as error:
            pending = [i for i in pending if results[i] is None]
            if workers == 1:
                # One worker takes jobs in order: the first unfinished one killed it.
                culprit = pending.pop(0)
                log.error("%s crashed its worker process; excluded", jobs[culprit][0])
                results[culprit] = crashed_result(jobs[culprit][0], error)
                bar.update()
                workers = settings.workers
            else:
                log.warning(
                    "a worker process died; retrying %d unfinished scan(s) one at a time "
                    "to find the one that crashes",
                    len(pending),
                )
                workers = 1


def _process_in_pool(
    jobs: list[tuple[str, str]],
    pending: list[int],
    results: list[dict[str, Any] | None],
    workers: int,
    settings: PreprocessSettings,
    seed: int,
    worker: ScanWorker,
    bar: tqdm,
) -> None:
    """Run the `pending` jobs in one pool of `workers` processes (BrokenProcessPool if one dies)."""
    from neurotransfer.data.worker import init_worker

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


def _metrics(
    scans: pd.DataFrame,
    issues: list[DatasetIssue],
    plan: _Plan,
    outcome: _Outcome,
    settings: DataSettings,
    start: float,
) -> dict[str, Any]:
    """The stage's metrics: counts, exclusions, issues, damaged cache entries, QC and timing."""
    return {
        "n_scans": len(scans),
        "n_subjects": int(scans["subject_id"].nunique()),
        "counts": {
            "dataset": _counts(scans, "dataset"),
            "site": _counts(scans, "site"),
            "split": {str(k): int(v) for k, v in Counter(scans["split"]).items()},
        },
        "exclusions": _exclusions(scans),
        "issues": [issue.as_dict() for issue in issues],
        # Previous arrays that failed verification (header, size, sha256): recomputed.
        "damaged_cache": {"n": len(plan.damaged), "scans": plan.damaged},
        "qc": _qc_summary(scans, settings.preprocess),
        "timing": _timing(scans, plan, outcome, settings.preprocess, start),
        "settings": {
            "registration": settings.preprocess.registration,
            "bias_correction": settings.preprocess.bias_correction,
            "spacing_mm": list(settings.preprocess.spacing),
            "shape": list(settings.preprocess.shape),
        },
    }


def _exclusions(scans: pd.DataFrame) -> dict[str, Any]:
    reasons = scans.loc[scans["split"] == "excluded", "exclusion_reason"]
    return {
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
    }


def _qc_summary(scans: pd.DataFrame, settings: PreprocessSettings) -> dict[str, Any]:
    ok = scans["split"] != "excluded"
    return {
        "template_corr_median": _finite(scans.loc[ok, "qc_template_corr"].median()),
        "template_corr_min": _finite(scans.loc[ok, "qc_template_corr"].min()),
        "min_template_correlation": settings.min_template_correlation,
        "n_outliers": int(scans["qc_outlier"].sum()),
        "outliers": scans.loc[scans["qc_outlier"], "scan_id"].tolist(),
    }


def _timing(
    scans: pd.DataFrame,
    plan: _Plan,
    outcome: _Outcome,
    settings: PreprocessSettings,
    start: float,
) -> dict[str, Any]:
    compute, process_seconds = plan.compute, outcome.process_seconds
    n_computed_ok = sum(not r["exclusion_reason"] for r in outcome.results)
    return {
        "total_s": round(time.perf_counter() - start, 2),
        "preprocess_s": round(process_seconds, 2),
        "qc_s": round(outcome.qc_seconds, 2),
        "n_computed": len(compute),
        "n_reused": len(plan.reused),
        "scans_per_s": round(n_computed_ok / process_seconds, 3)
        if compute and process_seconds > 0
        else None,
        "mean_scan_s": _finite(outcome.scan_seconds.mean()) if compute else None,
        "max_scan_s": _finite(outcome.scan_seconds.max()) if compute else None,
        "slowest_scan": _slowest(scans, outcome.scan_seconds),
        "workers": settings.workers,
        "cpu_count": os.cpu_count(),
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
    import numpy as np

    return round(float(value), 4) if np.isfinite(value) else None
