"""`neurotransfer cohort`: write the embedded multi-site phantom cohort.

Outputs (paths from ``cohort`` params): BIDS folders ``<out_dir>/<dataset>/``, the ground truth
``<truth_dir>/subjects.csv`` and ``<truth_dir>/sites.json``, montages
``<report_dir>/site-<name>.png`` and ``metrics/cohort.json``. Each output folder is built in a
temporary folder beside it and renamed into place only when everything succeeded, so an
interrupted run never leaves a half-written cohort.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path

from neurotransfer.config import Settings, SettingsError

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/cohort.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage takes everything from params.yaml."""


def run(settings: Settings, args: argparse.Namespace) -> None:
    import pandas as pd

    from neurotransfer.atomic import atomic_directory, write_json_atomic
    from neurotransfer.cohort.generate import site_truth, write_cohort
    from neurotransfer.cohort.montage import write_site_montage

    cohort = settings.cohort
    if cohort is None:
        raise SettingsError(
            "cohort: no 'cohort' block in the parameters; the cohort stage generates the "
            "phantom cohort and needs one (compose with cohort=phantom)"
        )
    out_dir, truth_dir, report_dir = (
        Path(cohort.out_dir),
        Path(cohort.truth_dir),
        Path(cohort.report_dir),
    )
    start = time.perf_counter()
    with (
        atomic_directory(out_dir) as staged_out,
        atomic_directory(truth_dir) as staged_truth,
        atomic_directory(report_dir) as staged_report,
    ):
        result = write_cohort(cohort, staged_out)
        generation_seconds = time.perf_counter() - start
        truth = pd.DataFrame(result.truth_rows)
        truth.to_csv(staged_truth / "subjects.csv", index=False, float_format="%.6g")
        write_json_atomic(staged_truth / "sites.json", site_truth(cohort))
        for site, subjects in result.montage_slices.items():
            if subjects:
                write_site_montage(
                    staged_report / f"site-{site}.png",
                    site,
                    subjects,
                    tuple(cohort.sites[site].voxel_size),
                )

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (dataset, site, diagnosis), n in Counter(
        zip(truth["dataset"], truth["site"], truth["diagnosis"], strict=True)
    ).items():
        counts.setdefault(dataset, {}).setdefault(site, {})[diagnosis] = n
    metrics = {
        "n_subjects": len(truth),
        "n_sites": int(truth["site"].nunique()),
        "counts": counts,
        "generation_seconds": round(generation_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        "workers": cohort.workers,
    }
    write_json_atomic(METRICS_PATH, metrics)
    log.info(
        "cohort: %d subjects over %d sites in %.1f s (%s)",
        len(truth),
        metrics["n_sites"],
        generation_seconds,
        out_dir,
    )
