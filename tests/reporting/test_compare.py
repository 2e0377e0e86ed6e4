"""`neurotransfer compare`: reading revisions, the paired table, one pair and several seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neurotransfer.cli import main
from neurotransfer.reporting.compare import compare_experiments, comparison_markdown
from neurotransfer.reporting.pr_comment import dvc_executable
from neurotransfer.reporting.revisions import (
    ExperimentResults,
    RevisionError,
    WorkspaceReader,
    read_results,
)
from tests.reporting.helpers import write_eval_outputs

DVC = dvc_executable()  # the venv's dvc, even when the venv is not on PATH


def experiment(
    root: Path, quality: float, seed: int = 0, tasks: tuple[str, ...] = ("ad", "brain_age")
) -> ExperimentResults:
    for task in tasks:
        write_eval_outputs(root, task, "binary" if task == "ad" else "regression", quality, seed)
    return read_results(WorkspaceReader(root), root.name)


def test_one_pair_gives_ci_p_values_and_delong(tmp_path: Path) -> None:
    a = experiment(tmp_path / "weak", quality=0.3)
    b = experiment(tmp_path / "strong", quality=3.0)
    comparison = compare_experiments([a], [b], n_resamples=300)
    assert set(comparison.results) == {
        ("ad", "test"),
        ("ad", "ood_test"),
        ("brain_age", "test"),
        ("brain_age", "ood_test"),
    }
    auc = comparison.results[("ad", "test")][0]["metrics"]["auc"]
    assert auc["difference"] > 0 and auc["ci_low"] > 0 and auc["delong_p_value"] < 0.05
    assert comparison.results[("ad", "test")][0]["n_subjects"] == 30  # train rows left out
    text = comparison_markdown(comparison)
    assert "| task | split | metric | A | B | Δ (B − A) | 95% CI | p (bootstrap) |" in text
    ad_row = next(line for line in text.splitlines() if line.startswith("| ad | ID (test) | auc"))
    assert ad_row.rstrip().endswith("| B | 30 |")
    mae_row = next(line for line in text.splitlines() if "| brain_age | ID (test) | mae |" in line)
    assert "| B |" in mae_row  # lower MAE for B: B is favoured though the difference is < 0


def test_several_seeds_report_mean_and_sd(tmp_path: Path) -> None:
    side_a = [experiment(tmp_path / f"a{s}", 0.5, seed=s) for s in range(3)]
    side_b = [experiment(tmp_path / f"b{s}", 2.0, seed=10 + s) for s in range(3)]
    text = comparison_markdown(compare_experiments(side_a, side_b, n_resamples=100))
    assert "3 seed pairs" in text
    row = next(line for line in text.splitlines() if line.startswith("| ad | ID (test) | auc"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all("±" in c for c in cells[3:6])
    assert cells[6].endswith("/3")
    with pytest.raises(ValueError, match="same number"):
        compare_experiments(side_a, side_b[:2])


def test_tasks_on_one_side_only_are_listed_not_compared(tmp_path: Path) -> None:
    a = experiment(tmp_path / "a", 1.0, tasks=("ad",))
    b = experiment(tmp_path / "b", 1.0, tasks=("ad", "brain_age"))
    text = comparison_markdown(compare_experiments([a], [b], n_resamples=50))
    assert "- `brain_age`: not evaluated at a" in text


def test_missing_outputs_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RevisionError, match="no evaluated task"):
        read_results(WorkspaceReader(tmp_path), "empty")


def git(repo: Path, *args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        args, cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout


GEN = """
import sys, yaml
sys.path.insert(0, {tests!r})
from pathlib import Path
from tests.reporting.helpers import write_eval_outputs
p = yaml.safe_load(open("params.yaml"))
write_eval_outputs(Path("."), "ad", "binary", p["quality"], p["seed"])
"""

DVC_YAML = """
metrics:
  - metrics
stages:
  evaluate:
    cmd: {python} gen.py
    deps: [gen.py]
    params: [quality, seed]
    outs: [reports/eval]
    metrics:
      - metrics/eval/ad.json:
          cache: false
"""


@pytest.mark.slow
def test_compare_commit_with_experiment_through_dvc(
    tmp_path: Path, git_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A commit and a `dvc exp run` experiment: predictions come from the DVC cache at each rev,
    and the workspace is left as it was."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "git", "init", "-q", env=git_env)
    git(repo, DVC, "init", "-q", env=git_env)
    (repo / "gen.py").write_text(GEN.format(tests=str(Path(__file__).parents[2])))
    (repo / "params.yaml").write_text("quality: 0.3\nseed: 0\n")
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    git(repo, DVC, "repro", "-q", env=git_env)
    git(repo, "git", "add", "-A", env=git_env)
    git(repo, "git", "commit", "-qm", "weak model", env=git_env)
    git(repo, DVC, "exp", "run", "-q", "-S", "quality=3.0", "-n", "strong", env=git_env)
    status_before = git(repo, "git", "status", "--porcelain", env=git_env)

    args = ["compare", "HEAD", "strong", "--repo", str(repo), "--n-resamples", "200"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "A = `HEAD`" in out and "B = `strong`" in out
    row = next(line for line in out.splitlines() if line.startswith("| ad | ID (test) | auc"))
    assert row.rstrip().endswith("| B | 30 |")
    assert git(repo, "git", "status", "--porcelain", env=git_env) == status_before

    with pytest.raises(SystemExit, match="unknown Git revision"):
        main(["compare", "HEAD", "no-such-exp", "--repo", str(repo)])


def test_metrics_of_tasks_no_longer_in_params_are_skipped(tmp_path: Path) -> None:
    write_eval_outputs(tmp_path, "ad", "binary", quality=2.0)
    write_eval_outputs(tmp_path, "pd", "binary", quality=2.0)
    # pd was dropped from the tasks: its metrics file stays in git, its predictions are gone.
    (tmp_path / "reports/eval/pd/predictions.csv").unlink()
    (tmp_path / "params.yaml").write_text("tasks:\n  ad: {kind: binary}\n", encoding="utf-8")
    results = read_results(WorkspaceReader(tmp_path), "workspace")
    assert list(results.tasks) == ["ad"]
    # Without params.yaml every metrics file counts (and the missing predictions are an error).
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(RevisionError, match=r"predictions\.csv"):
        read_results(WorkspaceReader(tmp_path), "workspace")
