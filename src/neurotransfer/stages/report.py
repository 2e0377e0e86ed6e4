"""DVC stage `report`: ``reports/summary.md`` (study table, data-scaling curves, QC and synthetic
montages).

With ``--revs`` it is a command instead: the study table across experiments (e.g. every
initialisation of a `dvc exp` grid), printed or written to ``--output``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings
from neurotransfer.paths import SUMMARY, SYNTHETIC_REPORT_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--revs",
        default=None,
        help="comma-separated git revs / experiment names for a cross-experiment study table "
        "(`workspace` for the current files); default: this workspace only, as the DVC stage",
    )
    parser.add_argument(
        "--output", default=str(SUMMARY), help=f"file to write, '-' for stdout (default {SUMMARY})"
    )


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import write_text_atomic
    from neurotransfer.reporting.revisions import (
        RevisionError,
        WorkspaceReader,
        read_results,
        read_revision,
    )
    from neurotransfer.reporting.summary import summary_markdown

    root = Path(".")
    try:
        if args.revs:
            experiments = [
                read_revision(root, r.strip(), with_predictions=False)
                for r in args.revs.split(",")
                if r.strip()
            ]
        else:
            experiments = [read_results(WorkspaceReader(root), "workspace", with_predictions=False)]
    except RevisionError as err:
        raise SystemExit(f"error: {err}") from err
    text = summary_markdown(
        experiments,
        root,
        {"QC montages": settings.data.qc_dir, "Synthetic data": synthetic_report_dir(settings)},
        settings.evaluate.ci_level,
        # The data-scaling curves belong to this workspace's experiment only.
        scaling_dir=None if args.revs else settings.scaling.out_dir,
    )
    if args.output == "-":
        print(text, end="")
    else:
        write_text_atomic(Path(args.output), text)


def synthetic_report_dir(settings: Settings) -> str:
    """Where ``synthesize`` put its pictures (the default when it is not configured)."""
    return settings.synthesize.report_dir if settings.synthesize else SYNTHETIC_REPORT_DIR
