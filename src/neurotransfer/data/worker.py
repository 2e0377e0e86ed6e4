"""One scan's preprocessing in a worker process, and the result it leaves for its manifest row.

A worker is set up once (`init_worker`: the template space, one ITK thread) and then turns
scans into fp16 arrays (`process_one_scan`). A failing scan never raises: its error becomes
the ``exclusion_reason`` of its result. A scan that kills its process gets `crashed_result`
from the pool that ran it (``neurotransfer.stages.preprocess.process_scans``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from neurotransfer.config import PreprocessSettings
from neurotransfer.data import preprocessing
from neurotransfer.data.cache import file_sha256
from neurotransfer.process_guard import die_with_parent

# What one scan's processing leaves in its manifest row (besides the array and its sha256).
# Its duration goes to the metrics' timing, not the manifest: a re-run's manifest is then
# byte-identical to the previous one when nothing changed.
RESULT_COLUMNS = ("qc_template_corr", "qc_brain_coverage", "registration_scale")

WORKER_DIED = "the worker process died while preprocessing this scan"

_WORKER_SPACE: Any = None  # the TemplateSpace of a worker process, built once


def init_worker(settings: PreprocessSettings, parent_pid: int | None = None) -> None:
    """Set up a process for `process_one_scan`.

    In a pool worker (`parent_pid`: the pid of the process that made the pool) the worker is
    also tied to its parent, so a kill -9 of the stage never leaves workers behind.
    """
    if parent_pid is not None:
        die_with_parent(parent_pid)
    global _WORKER_SPACE
    # One ITK thread per process: parallelism comes from processes, one scan each.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _WORKER_SPACE = preprocessing.TemplateSpace(settings)


def process_one_scan(source_path: str, out_path: str, seed: int) -> dict[str, Any]:
    """Preprocess one scan and write its fp16 array; errors become an exclusion reason."""
    start = time.perf_counter()
    try:
        # Looked up on the module at call time, so a test can stand in for it.
        result = preprocessing.preprocess_scan(source_path, _WORKER_SPACE, seed)
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


def crashed_result(source_path: str, error: BaseException) -> dict[str, Any]:
    """The result of a scan whose worker process died while preprocessing it."""
    return {
        "exclusion_reason": f"{source_path}: {WORKER_DIED} ({type(error).__name__}; a crash in "
        "a C library, or the process was killed, e.g. for memory)",
        "seconds": float("nan"),
    }
