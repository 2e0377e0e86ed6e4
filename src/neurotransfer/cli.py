"""The ``neurotransfer`` command: one subcommand per DVC stage.

Each stage lives in ``neurotransfer.stages.<name>`` and exposes ``add_arguments(parser)`` and
``run(settings, args)``. Stage modules are imported to build the parser, so they keep their
heavy imports (torch, the science packages) inside ``run``: ``neurotransfer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from neurotransfer.config import SettingsError, load_settings

# subcommand -> (stage module, one-line help). Stages appear here when their issue lands.
STAGES: dict[str, tuple[str, str]] = {
    "cohort": ("neurotransfer.stages.cohort", "generate the embedded phantom cohort (BIDS)"),
    "preprocess": (
        "neurotransfer.stages.preprocess",
        "ingest, register, normalise, cache and split the datasets (+ QC)",
    ),
    "synthesize": ("neurotransfer.stages.synthesize", "train the brain LDM and sample volumes"),
    "pretrain": (
        "neurotransfer.stages.pretrain",
        "initialise the backbone (scratch, ImageNet, Kinetics, synthetic, SSL) + age probe",
    ),
    "finetune": ("neurotransfer.stages.finetune", "fine-tune the backbone on one task"),
    "evaluate": ("neurotransfer.stages.evaluate", "score a fine-tuned task model, ID and OOD"),
    "report": ("neurotransfer.stages.report", "write reports/summary.md (study table, montages)"),
    "compare": ("neurotransfer.stages.compare", "paired comparison of two experiments (Markdown)"),
    "scaling": (
        "neurotransfer.stages.scaling",
        "data-scaling curves: fine-tune on nested training fractions x seeds",
    ),
    "sweep": ("neurotransfer.stages.sweep", "queue a conf/experiment/ grid as `dvc exp run`s"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurotransfer",
        description="Benchmark pre-training strategies for 3D brain-MRI models (DVC stages).",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file to read (default: params.yaml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(stage_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(STAGES[args.stage][0])
    # Commands that read only other revisions' outputs (`compare`) set NEEDS_SETTINGS = False:
    # they must work from any checkout, whatever its params.yaml.
    settings = None
    try:
        if getattr(module, "NEEDS_SETTINGS", True):
            settings = load_settings(args.params)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        module.run(settings, args)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
