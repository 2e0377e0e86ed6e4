"""DVC stage `preprocess`: real or phantom BIDS/CSV datasets -> cached, split, QC'd cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings
from neurotransfer.paths import PREPROCESS_METRICS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import write_json_atomic
    from neurotransfer.config import SettingsError
    from neurotransfer.data.ingest import DatasetError
    from neurotransfer.data.pipeline import run_preprocess
    from neurotransfer.data.splits import SplitError

    # Unwritable outputs (read-only, disk full, busy, another run's lock) raise
    # atomic.OutputError, an OSError whose message names the path and the cause: the CLI
    # prints it as one line (exit 1). Bad datasets or splits are settings problems (exit 2).
    try:
        metrics = run_preprocess(settings.data, Path("."), progress=not args.no_progress)
    except (DatasetError, SplitError) as err:
        raise SettingsError(str(err)) from err
    write_json_atomic(PREPROCESS_METRICS, metrics)
