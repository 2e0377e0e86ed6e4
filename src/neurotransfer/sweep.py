"""Study grids (``conf/experiment/<name>.yaml``) turned into queued ``dvc exp run`` calls.

An experiment file is a Hydra option of the ``experiment`` group (``# @package _global_``): it
sets the fixed parts of a study (profile, model, schedules) and, under ``experiment.sweep``, the
grid as ``-S`` overrides in DVC's own syntax (``model=vit3d,r3d_18`` is one axis with two
values). :func:`expand_grid` gives the grid's points (the cartesian product of the axes, minus
``exclude``, plus the ``extra`` overrides of matching points) and :func:`queue_commands` one
``dvc exp run --queue -S experiment=<name> -S ...`` per point, named after its values, so the
queue holds the whole study; ``dvc queue start -j N`` runs it.

Each point is composed and validated here before anything is queued, so a bad grid fails at
once, naming the point, rather than hours later inside a queued run.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import (
    ExperimentSettings,
    SettingsError,
    parse_override,
    settings_from_dict,
)

CONF_DIR = Path("conf")
EXPERIMENT_GROUP = "experiment"


@dataclass(frozen=True)
class GridPoint:
    name: str  # the `dvc exp` name
    overrides: tuple[str, ...]  # -S values after `experiment=<name>`, in order


def _slug(key: str, value: str) -> str:
    # Group choices (model=vit3d) name themselves; dotted keys keep their last part.
    value = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_.-") or "x"
    return value if "." not in key else f"{key.rsplit('.', 1)[-1]}_{value}"


def _matches(assignment: dict[str, str], conditions: Sequence[str]) -> bool:
    for condition in conditions:
        key, values = parse_override(condition)
        if assignment.get(key) not in values:
            return False
    return True


def expand_grid(experiment: ExperimentSettings) -> list[GridPoint]:
    """Every point of the grid, in the order of the axes (the last varies fastest)."""
    axes = [parse_override(entry) for entry in experiment.sweep]
    keys = [key for key, _ in axes]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise SettingsError(f"experiment.sweep sets {duplicated} more than once")
    points: list[GridPoint] = []
    for values in itertools.product(*(vals for _, vals in axes)):
        assignment = dict(zip(keys, values, strict=True))
        if any(_matches(assignment, rule) for rule in experiment.exclude):
            continue
        overrides = [f"{k}={v}" for k, v in assignment.items()]
        for extra in experiment.extra:
            if _matches(assignment, extra.when):
                overrides += extra.add
        name = "-".join([experiment.name, *(_slug(k, v) for k, v in assignment.items())])
        points.append(GridPoint(name=name, overrides=tuple(overrides)))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SettingsError(f"experiment {experiment.name!r}: grid points share names {names}")
    return points


def experiment_names(conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / EXPERIMENT_GROUP).glob("*.yaml"))


def load_experiment(
    name: str, conf_dir: Path = CONF_DIR, extra_overrides: Sequence[str] = ()
) -> ExperimentSettings:
    """The ``experiment`` block of ``conf/experiment/<name>.yaml``, composed and validated."""
    known = experiment_names(conf_dir)
    if name not in known:
        raise SettingsError(
            f"unknown experiment {name!r}; conf/{EXPERIMENT_GROUP}/ has {known or 'nothing'}"
        )
    overrides = [f"{EXPERIMENT_GROUP}={name}", *extra_overrides]
    settings = settings_from_dict(
        yaml.safe_load(compose_params(overrides, conf_dir)), source=" ".join(overrides)
    )
    if settings.experiment is None:
        raise SettingsError(f"conf/{EXPERIMENT_GROUP}/{name}.yaml has no 'experiment' block")
    if settings.experiment.name != name:
        raise SettingsError(
            f"conf/{EXPERIMENT_GROUP}/{name}.yaml: experiment.name is "
            f"{settings.experiment.name!r}; it must be the file's name, {name!r}"
        )
    return settings.experiment


def validate_point(
    experiment: str, point: GridPoint, conf_dir: Path = CONF_DIR, extra: Sequence[str] = ()
) -> None:
    """Compose the point's params.yaml as `dvc exp run` will, and validate it."""
    overrides = [f"{EXPERIMENT_GROUP}={experiment}", *point.overrides, *extra]
    try:
        raw = yaml.safe_load(compose_params(overrides, conf_dir))
    except Exception as err:  # Hydra raises its own types for a bad override
        raise SettingsError(f"grid point {point.name}: cannot compose {overrides}: {err}") from err
    settings_from_dict(raw, source=f"grid point {point.name}")


def queue_commands(
    experiment: str, points: Sequence[GridPoint], extra: Sequence[str] = (), dvc: str = "dvc"
) -> list[list[str]]:
    """One ``dvc exp run --queue`` per point: the experiment, the point's values, then `extra`."""
    commands = []
    for point in points:
        command = [dvc, "exp", "run", "--queue", "-n", point.name]
        for override in (f"{EXPERIMENT_GROUP}={experiment}", *point.overrides, *extra):
            command += ["-S", override]
        commands.append(command)
    return commands


def dvc_executable() -> str:
    """`dvc` on PATH, else the one installed beside this Python (a venv not activated)."""
    found = shutil.which("dvc")
    if found:
        return found
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def format_command(command: Sequence[str]) -> str:
    return shlex.join(["dvc", *command[1:]])


def run_commands(commands: Sequence[Sequence[str]], cwd: Path = Path(".")) -> None:
    """Run each command in turn, echoing it; stop at the first that fails."""
    for i, command in enumerate(commands, 1):
        print(f"[{i}/{len(commands)}] {format_command(command)}", flush=True)
        proc = subprocess.run(list(command), cwd=cwd, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"`{format_command(command)}` failed with exit status {proc.returncode}; "
                f"{i - 1} of {len(commands)} experiment(s) were queued before it"
            )
