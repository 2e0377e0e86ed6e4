"""Test helpers: make a throw-away git+DVC copy of the project to run real `dvc` commands in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from neurotransfer.compose import compose_params

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_files(root: Path = REPO_ROOT) -> list[str]:
    """Files a clone would have: tracked plus untracked-but-not-ignored (the working tree)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def run(cmd: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """Run a command, returning stdout+stderr; fail the test with the output on error."""
    env = {**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{output}")
    return output


def make_project_copy(dest: Path, env: dict[str, str], conf_edits: dict | None = None) -> Path:
    """Copy the working tree into `dest`, apply `conf_edits`, recompose params, git-commit it.

    `conf_edits` maps a conf file (relative to conf/) to a nested dict merged into it, which is
    how tests shrink the real configs instead of writing their own.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    for rel, edits in (conf_edits or {}).items():
        path = dest / "conf" / rel
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        _deep_merge(data, edits)
        header = "".join(
            line
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.startswith("# @package")
        )
        path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    (dest / "params.yaml").write_text(compose_params([], dest / "conf"), encoding="utf-8")
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "test copy"], dest, env)
    return dest


def _deep_merge(base: dict, edits: dict) -> None:
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def dvc_experiments(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its params and metrics data}."""
    import json

    env = {**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}
    shown = json.loads(
        subprocess.run(
            ["dvc", "exp", "show", "--json"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
    )
    return {
        exp["name"]: exp["data"]
        for rev in shown
        for exp_range in rev.get("experiments") or []
        for exp in exp_range.get("revs", [])
    }
