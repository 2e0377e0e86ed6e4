"""The PR comment body: `dvc metrics diff` / `dvc params diff` between two commits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neurotransfer.reporting.pr_comment import MARKER, comment_body, dvc_executable

DVC_YAML = """
metrics:
  - metrics
stages:
  evaluate:
    cmd: echo evaluated
    params: [finetune.lr, model.name]
"""

DVC = dvc_executable()  # the venv's dvc, even when the venv is not on PATH


def run(repo: Path, env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        args, cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout


def commit(repo: Path, env: dict[str, str], auc: float, lr: float, message: str) -> None:
    (repo / "params.yaml").write_text(f"finetune:\n  lr: {lr}\nmodel:\n  name: sfcn\n")
    (repo / "metrics/eval").mkdir(parents=True, exist_ok=True)
    (repo / "metrics/eval/ad.json").write_text(json.dumps({"test": {"auc": auc}}))
    run(repo, env, "git", "add", "-A")
    run(repo, env, "git", "commit", "-qm", message)


@pytest.fixture()
def repo(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """A git + DVC repo whose second commit changes a metric and a param."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(repo, git_env, "git", "init", "-q", "-b", "main")
    run(repo, git_env, DVC, "init", "-q")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    commit(repo, git_env, auc=0.61, lr=0.001, message="base")
    run(repo, git_env, "git", "checkout", "-qb", "feature")
    commit(repo, git_env, auc=0.74, lr=0.0003, message="lower lr")
    return repo


@pytest.mark.slow
def test_comment_body_has_marker_and_both_diffs(repo: Path) -> None:
    body = comment_body("main", repo, head_label="abc123")
    print(body)  # the README shows this output
    assert body.startswith(MARKER + "\n")
    metrics = body.split("### Metrics")[1].split("### Params")[0]
    assert "| Path" in metrics and "metrics/eval/ad.json" in metrics
    assert "test.auc" in metrics and "0.61" in metrics and "0.74" in metrics and "0.13" in metrics
    params = body.split("### Params")[1]
    assert "finetune.lr" in params and "0.001" in params and "0.0003" in params
    assert "model.name" not in params  # unchanged params are left out
    assert "`abc123`" in body


@pytest.mark.slow
def test_no_change_and_bad_base_are_reported_in_the_body(repo: Path) -> None:
    same = comment_body("HEAD", repo)
    assert "No metrics changed." in same and "No params changed." in same
    bad = comment_body("no-such-branch", repo)
    assert bad.startswith(MARKER) and "`dvc metrics diff --md no-such-branch` failed" in bad


@pytest.mark.slow
def test_module_writes_the_body_file(repo: Path, tmp_path: Path, git_env: dict[str, str]) -> None:
    out = tmp_path / "body.md"
    command = [sys.executable, "-m", "neurotransfer.reporting.pr_comment", "--base", "main"]
    subprocess.run([*command, "--output", str(out)], cwd=repo, env=git_env, check=True)
    assert out.read_text().startswith(MARKER)
