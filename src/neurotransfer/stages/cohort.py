"""`neurotransfer cohort`: write the embedded multi-site phantom cohort.

Outputs (paths from the ``cohort`` params): BIDS folders ``<out_dir>/<dataset>/``, the ground
truth in ``<truth_dir>/`` (subjects.csv, sites.json, regions.json, regions_mni.nii.gz), montages
``<report_dir>/site-<name>.png`` and ``metrics/cohort.json``. Each output folder is built in a
hidden temporary folder beside it and renamed into place only when everything succeeded, so an
interrupted run never leaves a half-written cohort.

Only data that reads the phantom needs it: when no dataset of ``data.datasets`` lies under
``cohort.out_dir`` (real data such as ``data=ixi_hh``), the stage writes a ``SKIPPED.md`` note
into each output folder and records why in the metrics, in seconds instead of a minute.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path

from neurotransfer.config import Settings, SettingsError
from neurotransfer.paths import COHORT_METRICS

log = logging.getLogger(__name__)


def phantom_readers(settings: Settings) -> list[str]:
    """The datasets of ``data.datasets`` whose folder lies under ``cohort.out_dir``."""
    assert settings.cohort is not None
    out_dir = Path(settings.cohort.out_dir).resolve()
    return sorted(
        name
        for name, source in settings.data.datasets.items()
        if Path(source.path).resolve().is_relative_to(out_dir)
    )


def _skip(settings: Settings, reason: str) -> None:
    from neurotransfer.atomic import write_json_atomic, write_skipped_notes

    cohort = settings.cohort
    assert cohort is not None
    write_skipped_notes((cohort.out_dir, cohort.truth_dir, cohort.report_dir), "cohort", reason)
    write_json_atomic(COHORT_METRICS, {"skipped": reason})
    log.warning("cohort skipped: %s", reason)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage takes everything from params.yaml."""


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import atomic_directory, write_json_atomic
    from neurotransfer.cohort.generate import write_cohort, write_ground_truth
    from neurotransfer.cohort.montage import write_site_montage

    cohort = settings.cohort
    if cohort is None:
        raise SettingsError(
            "cohort: no 'cohort' block in the parameters; the cohort stage generates the "
            "phantom cohort and needs one (compose with cohort=phantom)"
        )
    if not phantom_readers(settings):
        _skip(
            settings,
            f"no dataset of data {settings.data.name!r} lies under cohort.out_dir "
            f"({cohort.out_dir}), so nothing reads the phantom cohort",
        )
        return
    start = time.perf_counter()
    with (
        atomic_directory(cohort.out_dir) as staged_out,
        atomic_directory(cohort.truth_dir) as staged_truth,
        atomic_directory(cohort.report_dir) as staged_report,
    ):
        result = write_cohort(cohort, staged_out)
        generation_seconds = time.perf_counter() - start
        write_ground_truth(staged_truth, cohort, result.truth_rows)
        for site, subjects in result.montage_slices.items():
            if subjects:
                write_site_montage(
                    staged_report / f"site-{site}.png",
                    site,
                    subjects,
                    tuple(cohort.sites[site].voxel_size),
                )

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (dataset, site, diagnosis), n in sorted(
        Counter((p.dataset, p.site, p.diagnosis) for p in result.plans).items()
    ):
        counts.setdefault(dataset, {}).setdefault(site, {})[diagnosis] = n
    metrics = {
        "n_subjects": len(result.plans),
        "n_sites": len({p.site for p in result.plans}),
        "counts": counts,
        "generation_seconds": round(generation_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        "workers": cohort.workers,
    }
    write_json_atomic(COHORT_METRICS, metrics)
    log.info(
        "cohort: %d subjects over %d sites in %.1f s (written to %s)",
        metrics["n_subjects"],
        metrics["n_sites"],
        generation_seconds,
        cohort.out_dir,
    )
