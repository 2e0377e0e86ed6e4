"""`neurotransfer compare`: reading revisions, the paired table, one pair and several seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from neurotransfer.cli import main
from neurotransfer.reporting.compare import compare_experiments, comparison_markdown
from neurotransfer.reporting.pr_comment import dvc_executable
from neurotransfer.reporting.revisions import (
    ExperimentResults,
    RevisionError,
    WorkspaceReader,
    read_results,
    seed_columns,
)
from tests.reporting.helpers import write_eval_outputs

DVC = dvc_executable()  # the venv's dvc, even when the venv is not on PATH


def experiment(
    root: Path,
    quality: float,
    seeds: tuple[int, ...] = (0, 1, 2),
    tasks: tuple[str, ...] = ("ad", "brain_age"),
) -> ExperimentResults:
    """Evaluation outputs with one `prediction_seed<k>` column per seed (one seed: none)."""
    for task in tasks:
        kind = "binary" if task == "ad" else "regression"
        columns = {}
        for seed in seeds:
            write_eval_outputs(root, task, kind, quality, seed)
            frame = pd.read_csv(root / f"reports/eval/{task}/predictions.csv")
            columns[f"prediction_seed{seed}"] = frame["prediction"]
        if len(seeds) > 1:
            frame = frame.assign(**columns)
            frame["prediction"] = frame[list(columns)].mean(axis=1)
            frame.to_csv(root / f"reports/eval/{task}/predictions.csv", index=False)
    return read_results(WorkspaceReader(root), root.name)


def rows_of(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_primary_decision_with_seeds_and_adjusted_p(tmp_path: Path) -> None:
    a = experiment(tmp_path / "weak", quality=0.3)
    b = experiment(tmp_path / "strong", quality=3.0, seeds=(5, 6, 7))
    comparison = compare_experiments([a], [b])
    assert set(comparison.results) == {
        ("ad", "test"),
        ("ad", "ood_test"),
        ("brain_age", "test"),
        ("brain_age", "ood_test"),
    }
    result = comparison.results[("ad", "test")]
    assert result["n_subjects"] == 30  # train rows left out
    assert result["seeds_b"] == ["strong:seed5", "strong:seed6", "strong:seed7"]
    auc = result["metrics"]["auc"]
    assert auc["primary"] and auc["difference"] > 0 and auc["ci_low"] > 0
    # Holm over the 4 primary tests: never below the raw p, at most 4 times it.
    assert auc["p_value"] <= auc["p_adjusted"] <= min(1.0, 4 * auc["p_value"])
    assert "mae" in comparison.results[("brain_age", "test")]["metrics"]

    text = comparison_markdown(comparison)
    assert "### Primary (decides)" in text and "adjusted together (Holm)" in text
    assert "### Exploratory (unadjusted p-values; not a decision)" in text
    primary, exploratory = text.split("### Exploratory")
    (ad_row,) = rows_of(primary, "| ad | ID (test) | auc")
    assert ad_row.rstrip().endswith("| B | 3 / 3 | 30 |")
    (mae_row,) = rows_of(primary, "| brain_age | ID (test) | mae |")
    assert "| B |" in mae_row  # lower MAE for B: B is favoured though the difference is < 0
    assert not rows_of(primary, "| ad | ID (test) | brier")  # exploratory metrics apart
    assert rows_of(exploratory, "| ad | ID (test) | brier")
    assert "Seeds: A 3 (weak:seed0, weak:seed1, weak:seed2)" in text

    bh = compare_experiments([a], [b], adjust="bh")
    assert "Benjamini-Hochberg" in comparison_markdown(bh)
    with pytest.raises(ValueError, match="unknown --adjust"):
        compare_experiments([a], [b], adjust="bonferroni")


def test_same_configuration_other_seeds_is_not_a_difference(tmp_path: Path) -> None:
    """The A/A comparison that the subject-only bootstrap called 'highly significant'."""
    a = experiment(tmp_path / "a", quality=1.0, seeds=(0, 1, 2))
    b = experiment(tmp_path / "b", quality=1.0, seeds=(3, 4, 5))
    comparison = compare_experiments([a], [b])
    for result in comparison.results.values():
        for entry in result["metrics"].values():
            if entry["primary"]:
                assert entry["p_adjusted"] >= 0.05


def test_revisions_of_a_side_pool_as_its_seeds(tmp_path: Path) -> None:
    side_a = [experiment(tmp_path / f"a{s}", 0.5, seeds=(s,)) for s in range(3)]
    side_b = [experiment(tmp_path / f"b{s}", 2.0, seeds=(10 + s,)) for s in range(2)]
    comparison = compare_experiments(side_a, side_b)
    result = comparison.results[("ad", "test")]
    assert result["seeds_a"] == ["a0", "a1", "a2"] and result["seeds_b"] == ["b0", "b1"]
    (row,) = rows_of(comparison_markdown(comparison), "| ad | ID (test) | auc")
    assert "| 3 / 2 | 30 |" in row


def test_a_single_seed_arm_is_refused(tmp_path: Path) -> None:
    a = experiment(tmp_path / "a", 1.0, seeds=(0,))
    b = experiment(tmp_path / "b", 1.0)
    with pytest.raises(ValueError, match=r"arm A \(a\) has a single fine-tuning seed.*finetune"):
        compare_experiments([a], [b])


def test_targets_must_agree_across_sides(tmp_path: Path) -> None:
    a = experiment(tmp_path / "a", 1.0, tasks=("brain_age",))
    b = experiment(tmp_path / "b", 1.0, tasks=("brain_age",))
    frame = b.tasks["brain_age"].predictions
    assert frame is not None
    frame.loc[frame["split"] == "test", "target"] += 1.0
    with pytest.raises(ValueError, match="different targets"):
        compare_experiments([a], [b])


def test_tasks_on_one_side_only_are_listed_not_compared(tmp_path: Path) -> None:
    a = experiment(tmp_path / "a", 1.0, tasks=("ad",))
    b = experiment(tmp_path / "b", 1.0, tasks=("ad", "brain_age"))
    text = comparison_markdown(compare_experiments([a], [b]))
    assert "- `brain_age`: not evaluated at a" in text


def test_seed_columns_are_read_in_seed_order_and_checked(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"prediction": [0.5], "prediction_seed10": [0.4], "prediction_seed2": [0.6]}
    )
    assert seed_columns(frame, "t") == {2: "prediction_seed2", 10: "prediction_seed10"}
    assert seed_columns(frame[["prediction"]], "t") == {None: "prediction"}
    with pytest.raises(RevisionError, match=r"prediction_seed2.*missing or non-numeric"):
        seed_columns(frame.assign(prediction_seed2=["x"]), "t")


def test_help_explains_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "Satterthwaite" in out and "--adjust {holm,bh}" in out and "finetune.seeds" in out


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
import pandas as pd
from tests.reporting.helpers import write_eval_outputs
p = yaml.safe_load(open("params.yaml"))
columns = {{}}
for k in range(3):  # three fine-tuning seeds, one prediction column each
    write_eval_outputs(Path("."), "ad", "binary", p["quality"], p["seed"] + k)
    frame = pd.read_csv("reports/eval/ad/predictions.csv")
    columns[f"prediction_seed{{k}}"] = frame["prediction"]
frame.assign(**columns).to_csv("reports/eval/ad/predictions.csv", index=False)
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

    args = ["compare", "HEAD", "strong", "--repo", str(repo)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "A = `HEAD`" in out and "B = `strong`" in out
    row = next(line for line in out.splitlines() if line.startswith("| ad | ID (test) | auc"))
    assert row.rstrip().endswith("| B | 3 / 3 | 30 |")
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
