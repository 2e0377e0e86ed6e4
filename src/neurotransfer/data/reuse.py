"""Which entries of the previous cache a re-run may reuse.

An entry is found by its ``cache_key`` (``cache.scan_cache_key``: input bytes, settings and
preprocessing code). It is reused when the previous manifest records it, its array is still
there and passes verification (``cache.cached_array_problem``: header, size, recorded sha256),
and its failure, if it failed, was not its worker process dying (that is worth another try).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from neurotransfer.data.cache import cached_array_problem
from neurotransfer.data.manifest import MANIFEST_NAME, read_manifest
from neurotransfer.data.worker import WORKER_DIED

log = logging.getLogger(__name__)


def previous_results(processed: Path, root: Path) -> dict[str, dict[str, Any]]:
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


def drop_damaged_arrays(
    scans: pd.DataFrame,
    todo: Iterable[Any],
    previous: dict[str, dict[str, Any]],
    root: Path,
    shape: tuple[int, ...],
) -> list[dict[str, str]]:
    """Verify every previous array about to be reused; drop damaged ones from `previous`.

    `todo`: the row labels of `scans` to be cached. A dropped entry is recomputed. Returns what
    was found, for the metrics. Sound entries from a manifest without ``array_sha256`` gain the
    digest they hash to.
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
