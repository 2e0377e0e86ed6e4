"""The ``preprocess`` stage's work: ingest -> preprocess every scan in parallel -> splits ->
cache + manifest + QC, written atomically.

A failing scan never stops the run: its error becomes the ``exclusion_reason`` of its row.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotransfer.atomic import atomic_directory
from neurotransfer.config import DataSettings, PreprocessSettings
from neurotransfer.data.cache import MANIFEST_COLUMNS
from neurotransfer.data.ingest import ingest
from neurotransfer.data.splits import assign_splits

log = logging.getLogger(__name__)

_WORKER_SPACE: Any = None  # the TemplateSpace of a worker process, built once


def _init_worker(settings: PreprocessSettings) -> None:
    import SimpleITK as sitk

    from neurotransfer.data.preprocessing import TemplateSpace

    global _WORKER_SPACE
    # One ITK thread per process: parallelism comes from processes, one scan each.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _WORKER_SPACE = TemplateSpace(settings)


def _process_one(source_path: str, out_path: str, seed: int) -> dict[str, Any]:
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
        "seconds": result.seconds,
    }


def process_scans(
    jobs: list[tuple[str, str]], settings: PreprocessSettings, seed: int = 0, progress: bool = True
) -> list[dict[str, Any]]:
    """Run `_process_one` over (source, output) pairs; results in job order."""
    from tqdm.auto import tqdm

    results: list[dict[str, Any]] = [{}] * len(jobs)
    bar = tqdm(total=len(jobs), desc="preprocess", unit="scan", disable=not progress)
    if settings.workers == 1 or len(jobs) <= 1:
        _init_worker(settings)
        for i, (source, out) in enumerate(jobs):
            results[i] = _process_one(source, out, seed)
            bar.update()
    else:
        with ProcessPoolExecutor(
            settings.workers, initializer=_init_worker, initargs=(settings,)
        ) as pool:
            futures = {pool.submit(_process_one, s, o, seed): i for i, (s, o) in enumerate(jobs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    return results


def _robust_outliers(values: pd.Series, threshold: float = 3.5) -> pd.Series:
    """Low outliers by the median/MAD modified z-score (Iglewicz and Hoaglin's 3.5)."""
    median = values.median()
    mad = (values - median).abs().median()
    if not mad > 0:
        return pd.Series(False, index=values.index)
    return 0.6745 * (values - median) / mad < -threshold


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
    log.info(
        "preprocessing %d scan(s) from %d dataset(s) with %d worker(s)",
        len(todo),
        len(settings.datasets),
        settings.preprocess.workers,
    )
    process_start = time.perf_counter()
    with atomic_directory(processed) as tmp:
        jobs = [
            (
                str(scans.at[i, "source_path"]),
                str(tmp / Path(scans.at[i, "path"]).relative_to(settings.processed_dir)),
            )
            for i in todo
        ]
        results = process_scans(jobs, settings.preprocess, settings.splits.seed, progress)
        process_seconds = time.perf_counter() - process_start
        for column in ("qc_template_corr", "qc_brain_coverage", "seconds"):
            scans[column] = np.nan
        for i, result in zip(todo, results, strict=True):
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

        extra = ["scan_id", "source_path", "qc_template_corr", "qc_brain_coverage", "qc_outlier"]
        manifest = scans[MANIFEST_COLUMNS + extra]
        manifest.to_csv(tmp / "manifest.csv", index=False, float_format="%.6g")
        qc_seconds = write_qc(manifest, tmp, root / settings.qc_dir, settings)

    n_ok = int(len(todo) - sum(bool(r["exclusion_reason"]) for r in results))
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
            "scans_per_s": round(n_ok / process_seconds, 3) if process_seconds > 0 else None,
            "mean_scan_s": _finite(scans["seconds"].mean()),
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
