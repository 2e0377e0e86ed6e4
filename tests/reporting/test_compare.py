"""`neurotransfer compare`: reading revisions, the paired table, one pair and several seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurotransfer.cli import main
from neurotransfer.evaluation.decision import (
    CONSTANT_SHIFT_NOTE,
    NO_VARIATION_NOTE,
    calls_at_thresholds,
    metric_difference,
)
from neurotransfer.evaluation.metrics import binary_metrics
from neurotransfer.reporting.compare import (
    compare_experiments,
    comparison_markdown,
    recorded_threshold,
)
from neurotransfer.reporting.pr_comment import dvc_executable
from neurotransfer.reporting.revisions import (
    ExperimentResults,
    RevisionError,
    TaskResult,
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


def arm_of(
    label: str,
    target: np.ndarray,
    predictions: np.ndarray,
    thresholds: tuple[float, ...] | None = None,
    task: str = "ad",
    kind: str = "binary",
) -> ExperimentResults:
    """One revision scoring the test split: a ``prediction_seed<k>`` column per row of
    `predictions`, and the metrics JSON's ``seeds.seed<k>.threshold`` when `thresholds` is given
    (None: a run that recorded none)."""
    frame = pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(target.size)],
            "split": "test",
            "target": target,
            **{f"prediction_seed{k}": row for k, row in enumerate(predictions)},
        }
    )
    metrics: dict[str, object] = {"task": task, "kind": kind}
    if thresholds is not None:
        metrics["seeds"] = {
            f"seed{k}": {"seed": k, "threshold": cut} for k, cut in enumerate(thresholds)
        }
    return ExperimentResults(label, {task: TaskResult(kind, metrics, frame)})


def scores(rng: np.random.Generator, target: np.ndarray, seeds: int = 3) -> np.ndarray:
    """Overlapping classes: where the cut lies changes the calls of many subjects."""
    return np.clip(0.3 * target + rng.uniform(0.1, 0.7, (seeds, target.size)), 0.0, 1.0)


def balanced_accuracy(target: np.ndarray, predictions: np.ndarray, cuts: list[float]) -> float:
    return float(
        np.mean(
            [
                binary_metrics(target, row, cut)["balanced_accuracy"]
                for row, cut in zip(predictions, cuts, strict=True)
            ]
        )
    )


def test_thresholded_metrics_use_each_seeds_validation_threshold() -> None:
    """`evaluate` calls each seed at its validation-chosen cut; compare must score the same."""
    rng = np.random.default_rng(21)
    target = np.repeat([1.0, 0.0], 20)
    pred_a, pred_b = scores(rng, target), scores(rng, target)
    cuts_a, cuts_b = [0.3, 0.3, 0.3], [0.7, 0.7, 0.7]
    a = arm_of("a", target, pred_a, tuple(cuts_a))
    b = arm_of("b", target, pred_b, tuple(cuts_b))
    comparison = compare_experiments([a], [b], splits=("test",))
    entry = comparison.results[("ad", "test")]["metrics"]["balanced_accuracy"]

    expected_a = balanced_accuracy(target, pred_a, cuts_a)
    expected_b = balanced_accuracy(target, pred_b, cuts_b)
    at_half_a = balanced_accuracy(target, pred_a, [0.5] * 3)
    at_half_b = balanced_accuracy(target, pred_b, [0.5] * 3)
    assert abs(expected_a - at_half_a) > 0.02 and abs(expected_b - at_half_b) > 0.02
    assert entry["a"] == pytest.approx(expected_a) and entry["b"] == pytest.approx(expected_b)
    # The difference and its interval come from the same calls.
    calls_a = calls_at_thresholds("binary", "balanced_accuracy", pred_a, cuts_a)
    calls_b = calls_at_thresholds("binary", "balanced_accuracy", pred_b, cuts_b)
    reference = metric_difference("binary", "balanced_accuracy", target, calls_a, calls_b)
    assert entry["difference"] == pytest.approx(reference.difference)
    assert entry["ci_low"] == pytest.approx(reference.ci_low)
    # Threshold-free metrics are untouched.
    auc = comparison.results[("ad", "test")]["metrics"]["auc"]
    assert auc["a"] == pytest.approx(np.mean([binary_metrics(target, r)["auc"] for r in pred_a]))

    text = comparison_markdown(comparison)
    (row,) = rows_of(text.split("### Exploratory")[1], "| ad | ID (test) | balanced_accuracy |")
    assert row.startswith(
        f"| ad | ID (test) | balanced_accuracy | {expected_a:.3f} | {expected_b:.3f} |"
    )
    assert "no validation-chosen threshold" not in text


def test_seeds_of_one_arm_keep_their_own_thresholds() -> None:
    rng = np.random.default_rng(22)
    target = np.repeat([1.0, 0.0], 20)
    pred_a, pred_b = scores(rng, target), scores(rng, target)
    cuts_a = [0.3, 0.5, 0.7]
    comparison = compare_experiments(
        [arm_of("a", target, pred_a, tuple(cuts_a))],
        [arm_of("b", target, pred_b, (0.5, 0.5, 0.5))],
        splits=("test",),
    )
    entry = comparison.results[("ad", "test")]["metrics"]["sensitivity"]
    expected = np.mean(
        [binary_metrics(target, r, c)["sensitivity"] for r, c in zip(pred_a, cuts_a, strict=True)]
    )
    assert entry["a"] == pytest.approx(expected)


def test_runs_without_recorded_thresholds_fall_back_to_half_and_say_so() -> None:
    rng = np.random.default_rng(23)
    target = np.repeat([1.0, 0.0], 20)
    pred_a, pred_b = scores(rng, target), scores(rng, target)
    a = arm_of("a", target, pred_a, (0.3, 0.3, 0.3))
    b = arm_of("old", target, pred_b, None)  # metrics from before thresholds were chosen
    comparison = compare_experiments([a], [b])  # both splits asked: only test exists
    entry = comparison.results[("ad", "test")]["metrics"]["balanced_accuracy"]
    assert entry["b"] == pytest.approx(balanced_accuracy(target, pred_b, [0.5] * 3))
    assert entry["a"] == pytest.approx(balanced_accuracy(target, pred_a, [0.3] * 3))
    text = comparison_markdown(comparison)
    notes = [line for line in text.splitlines() if "no validation-chosen threshold" in line]
    assert notes == [
        "Arm B: no validation-chosen threshold recorded for `ad` (old:seed0, old:seed1, "
        "old:seed2) (a run from before thresholds were chosen): their thresholded metrics "
        "(balanced_accuracy, f1, sensitivity, specificity, accuracy) cut probabilities at 0.5."
    ]


def test_recorded_threshold_reads_the_metrics_json() -> None:
    metrics = {"seeds": {"seed3": {"threshold": 0.25}, "seed4": {"threshold": None}}}
    assert recorded_threshold(metrics, 3) == 0.25
    assert recorded_threshold(metrics, 4) is None  # NaN written as null: none chosen
    assert recorded_threshold(metrics, 5) is None
    assert recorded_threshold({}, 3) is None
    assert recorded_threshold({"seeds": {"seed0": {"threshold": 0.4}}}, None) == 0.4
    with pytest.raises(ValueError, match="threshold must be a probability"):
        recorded_threshold({"seeds": {"seed0": {"threshold": 1.5}}}, 0)


def perfect_scores(rng: np.random.Generator, target: np.ndarray, seeds: int = 3) -> np.ndarray:
    """Every seed separates the classes (AUC 1, every call right at 0.5)."""
    return np.where(target == 1.0, rng.uniform(0.6, 1.0, (seeds, target.size)), 0.0) + np.where(
        target == 0.0, rng.uniform(0.0, 0.4, (seeds, target.size)), 0.0
    )


def same_ranking_scores(rng: np.random.Generator, order: np.ndarray, seeds: int = 3) -> np.ndarray:
    """Seeds that rank the subjects identically (one AUC below 1 for all), other values: the
    A/A case whose AUC pseudo-values are equal up to rounding (se ~1e-16)."""
    rows = np.empty((seeds, order.size))
    for row in rows:
        row[order] = np.sort(rng.uniform(0.0, 1.0, order.size))
    return rows


@pytest.mark.parametrize("case", ["perfect", "same_ranking"])
def test_no_variation_prints_a_note_not_a_certain_interval(case: str) -> None:
    rng = np.random.default_rng(24)
    target = (rng.random(17) < 0.5).astype(float)
    if case == "perfect":
        pred_a, pred_b = perfect_scores(rng, target), perfect_scores(rng, target)
    else:
        order = np.argsort(target + rng.normal(0, 0.6, target.size))
        pred_a, pred_b = same_ranking_scores(rng, order), same_ranking_scores(rng, order)
    a = arm_of("a", target, pred_a, (0.5,) * 3)
    b = arm_of("b", target, pred_b, (0.5,) * 3)
    comparison = compare_experiments([a], [b], splits=("test",))
    auc = comparison.results[("ad", "test")]["metrics"]["auc"]
    assert auc["difference"] == 0.0 and auc["p_value"] == 1.0 and auc["p_adjusted"] == 1.0
    assert np.isnan(auc["ci_low"]) and np.isnan(auc["ci_high"])
    assert auc["note"] == NO_VARIATION_NOTE

    text = comparison_markdown(comparison)
    (row,) = rows_of(text, "| ad | ID (test) | auc |")
    assert f"| +0.000 | {NO_VARIATION_NOTE} | 1.000 | 1.000 | – |" in row
    assert "[-0.000" not in text and "+0.000]" not in text
    assert "primary tests (tasks × splits) are adjusted together (Holm). " in text


def test_an_untestable_primary_is_left_out_of_the_family() -> None:
    """A noise-free shift (every subject's error 1 year larger in every seed) has no p-value;
    Holm adjusts the other primaries without it, and the text says so."""
    rng = np.random.default_rng(25)
    target = np.repeat([1.0, 0.0], 15)
    ad_a = arm_of("a", target, scores(rng, target), (0.5,) * 3)
    ad_b = arm_of("b", target, scores(rng, target), (0.5,) * 3)
    age = rng.uniform(40, 80, 30)
    error = rng.normal(0, 5, 30)
    same_a = np.tile(age + error, (3, 1))
    same_b = np.tile(age + error + np.sign(error), (3, 1))
    for arm, years in ((ad_a, same_a), (ad_b, same_b)):
        arm.tasks.update(arm_of(arm.label, age, years, task="brain_age", kind="regression").tasks)
    comparison = compare_experiments([ad_a], [ad_b], splits=("test",))
    mae = comparison.results[("brain_age", "test")]["metrics"]["mae"]
    assert mae["difference"] == pytest.approx(1.0)
    assert np.isnan(mae["p_value"]) and np.isnan(mae["p_adjusted"]) and np.isnan(mae["ci_low"])
    assert mae["note"] == CONSTANT_SHIFT_NOTE
    auc = comparison.results[("ad", "test")]["metrics"]["auc"]
    assert auc["p_adjusted"] == pytest.approx(auc["p_value"])  # a family of one
    text = comparison_markdown(comparison)
    assert "the 1 primary tests" in text
    assert "(1 without a p-value, having no variation to test against, is left out" in text
    (row,) = rows_of(text, "| brain_age | ID (test) | mae |")
    assert CONSTANT_SHIFT_NOTE in row and "| – | – | – |" in row
