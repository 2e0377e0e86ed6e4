"""The ``neurotransfer`` command: one subcommand per DVC stage.

Each stage lives in ``neurotransfer.stages.<name>`` and exposes ``add_arguments(parser)`` and
``run(settings, args)``. Stage modules are imported to build the parser, so they keep their
heavy imports (torch, the science packages) inside ``run``: ``neurotransfer --help`` stays fast.

Errors are one line on stderr: ``error: <params file>: invalid settings: <key>: <problem>``
(exit 2) when the parameters are wrong, ``error: <stage>: <input>: <cause>`` (exit 1) for
anything that fails while the stage runs, e.g. an input an earlier stage has not written yet.
``--debug`` (or ``NEUROTRANSFER_DEBUG=1``) adds the traceback. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings
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

DEBUG_ENV = "NEUROTRANSFER_DEBUG"
# Longer messages (a tensor dump, a subprocess's output) are cut: the traceback has them all.
MAX_MESSAGE_CHARS = 1000
# Exit statuses: 1 a stage failed, 2 bad parameters, 130 interrupted (128 + SIGINT).
EXIT_FAILED, EXIT_SETTINGS, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurotransfer",
        description="Benchmark pre-training strategies for 3D brain-MRI models (DVC stages).",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file to read (default: params.yaml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the full traceback of an error (also {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(stage_parser)
    return parser


def debug_requested(args: argparse.Namespace) -> bool:
    """``--debug``, or ``NEUROTRANSFER_DEBUG`` set to anything but empty, 0, false or no."""
    value = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(args.debug) or value not in ("", "0", "false", "no")


def stage_label(args: argparse.Namespace) -> str:
    """The command as a user would retype it: ``finetune --task ad``."""
    tasks = getattr(args, "task", None)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    return " ".join([args.stage, *(f"--task {task}" for task in tasks)])


def describe_error(err: BaseException) -> str:
    """One line for a failure: our messages name the input and the cause already; an OS error
    gets its file name, anything else (a bug, a library's error) its type."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror.lower()}"
    elif isinstance(err, OSError | ValueError):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    text = " ".join(text.split()) or type(err).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


#: Library output that says nothing about the run: Lightning's advert for its cloud logger and
#: torch's deprecation of a class Lightning itself uses (printed once per Trainer).
LIGHTNING_ADVERT = "💡 Tip:"
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(LIGHTNING_ADVERT)


def quiet_library_logs() -> None:
    """One line per message, without adverts or a deprecation we cannot act on.

    ``import lightning`` gives the ``lightning`` logger its own console handler *and* lets its
    records reach the root handler that :func:`main` configures, so every Lightning line was
    printed twice ("INFO: ..." and the timestamped copy). Not propagating keeps Lightning's own
    handler, and runs before the stages import Lightning.
    """
    logging.getLogger("lightning").propagate = False
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_an_advert)
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_library_logs()
    debug = debug_requested(args)
    label = stage_label(args)
    module = importlib.import_module(STAGES[args.stage][0])
    # Commands that read only other revisions' outputs (`compare`) set NEEDS_SETTINGS = False:
    # they must work from any checkout, whatever its params.yaml.
    settings = None
    try:
        if getattr(module, "NEEDS_SETTINGS", True):
            settings = load_settings(args.params)
    except SettingsError as err:
        return _fail(f"error: {err}", EXIT_SETTINGS, debug)
    if settings is not None and (unused := settings.unused_datasets()):
        logging.getLogger("neurotransfer").warning(
            "dataset(s) %s are in data.datasets but in no task's datasets (tasks.<task>."
            "datasets): preprocessed, never trained or evaluated on",
            ", ".join(unused),
        )
    try:
        module.run(settings, args)
    except SettingsError as err:
        return _fail(f"error: {label}: {err}", EXIT_SETTINGS, debug)
    except KeyboardInterrupt:
        return _fail(f"error: {label}: interrupted", EXIT_INTERRUPTED, debug)
    except Exception as err:
        # Our own errors (OSError, ValueError) say what to do; anything else may be a bug.
        unexpected = not isinstance(err, OSError | ValueError) and not debug
        hint = f" (--debug or {DEBUG_ENV}=1 for the traceback)" if unexpected else ""
        return _fail(f"error: {label}: {describe_error(err)}{hint}", EXIT_FAILED, debug)
    return 0


def _fail(line: str, status: int, debug: bool) -> int:
    """Print the error line (after the traceback with `debug`) and return the exit status."""
    if debug:
        traceback.print_exc()
    print(line, file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
