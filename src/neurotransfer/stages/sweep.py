"""`neurotransfer sweep --experiment NAME`: queue a study grid as `dvc exp run`s (not a stage).

Reads ``conf/experiment/<NAME>.yaml``, composes and validates every grid point, then runs one
``dvc exp run --queue -n <point> -S experiment=<NAME> -S ...`` per point (``--dry-run``: prints
them instead). ``dvc queue start -j N`` then runs the queue. params.yaml is not read: the grid
is composed from ``conf/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NEEDS_SETTINGS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="a file name in conf/experiment/")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the dvc commands instead of running them"
    )
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra -S override for every point, e.g. data=ixi_hh (repeatable)",
    )
    parser.add_argument("--conf", default="conf", help="Hydra config directory (default: conf)")


def run(settings: Any, args: argparse.Namespace) -> None:
    from neurotransfer.sweep import (
        dvc_executable,
        expand_grid,
        format_command,
        load_experiment,
        queue_commands,
        run_commands,
        validate_point,
    )

    conf = Path(args.conf)
    experiment = load_experiment(args.experiment, conf, args.extra)
    points = expand_grid(experiment)
    for point in points:
        validate_point(args.experiment, point, conf, args.extra)
    commands = queue_commands(args.experiment, points, args.extra, dvc=dvc_executable())
    if args.dry_run:
        print(f"# {len(commands)} grid point(s) of {args.experiment}; queue them with:")
        for command in commands:
            print(format_command(command))
        print("dvc queue start -j 1   # then: dvc queue status; dvc exp show --only-changed")
        return
    try:
        run_commands(commands)
    except RuntimeError as err:
        raise SystemExit(f"error: {err}") from err
    print(
        f"queued {len(commands)} experiment(s); start them with `dvc queue start -j N`, follow "
        "with `dvc queue status`, compare with `dvc exp show --only-changed`"
    )
