"""Study grids: conf/experiment/ files compose, `neurotransfer sweep` expands them into queued
`dvc exp run`s, and (slow) two queued experiments run and compare through real DVC."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from neurotransfer.cli import main
from neurotransfer.compose import compose_params
from neurotransfer.config import (
    ExperimentSettings,
    SettingsError,
    settings_from_dict,
    split_values,
)
from neurotransfer.sweep import (
    expand_grid,
    experiment_names,
    load_experiment,
    validate_point,
)
from tests.helpers import BIN, dvc_experiments, make_project_copy, run
from tests.test_pipeline_dvc import TINY_STUDY

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = experiment_names(CONF)


def test_seed_studies_have_grid_files() -> None:
    assert {
        "dhinagar2023_video_synthetic",
        "gupta2023_slice2d",
        "dhinagar2023_efficient_vit",
    } <= set(EXPERIMENTS)


def test_default_composition_selects_no_experiment() -> None:
    raw = yaml.safe_load(compose_params([], CONF))
    assert "experiment" not in raw
    assert settings_from_dict(raw).experiment is None


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_grid_point_composes_and_validates(name: str) -> None:
    experiment = load_experiment(name, CONF)
    points = expand_grid(experiment)
    assert points, f"{name}: empty grid"
    for point in points:
        validate_point(name, point, CONF)
    # The papers' fixed parts are paper scale; the IXI-HH check is sized for this CPU machine.
    raw = yaml.safe_load(compose_params([f"experiment={name}"], CONF))
    assert raw["profile"] == ("cpu" if name.startswith("ixi_hh") else "gpu")


def test_ixi_study_is_one_run_of_five_seeds_of_one_real_data_recipe() -> None:
    points = expand_grid(load_experiment("ixi_hh_cpu", CONF))
    assert [p.overrides for p in points] == [()]  # the seeds are trained inside the run
    settings = settings_from_dict(yaml.safe_load(compose_params(["experiment=ixi_hh_cpu"], CONF)))
    assert settings.data.name == "ixi_hh"
    assert sorted(settings.tasks) == ["brain_age", "sex"]
    assert settings.finetune.select_epoch == "last"
    assert settings.evaluate.flip_tta
    assert settings.finetune.seed_values() == [0, 1, 2, 3, 4]
    assert settings.finetune.ensemble_size == 1


def test_ixi_cross_validation_is_the_ixi_recipe_with_five_folds() -> None:
    def composed(name: str) -> dict:
        return yaml.safe_load(compose_params([f"experiment={name}"], CONF))

    recipe, cv = composed("ixi_hh_cpu"), composed("ixi_hh_cv")
    assert cv["data"]["splits"]["mode"] == "kfold" and cv["data"]["splits"]["k"] == 5
    # Only the splits and the experiment's description differ: the recipe is the frozen one.
    for key in ("model", "finetune", "evaluate", "pretrain", "tasks"):
        assert cv[key] == recipe[key], key
    assert settings_from_dict(cv).data.splits.folds() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_study_trains_at_least_five_fine_tuning_seeds(name: str) -> None:
    raw = yaml.safe_load(compose_params([f"experiment={name}"], CONF))
    assert settings_from_dict(raw).finetune.seeds >= 5


def test_video_synthetic_grid_is_architectures_by_initialisations() -> None:
    points = expand_grid(load_experiment("dhinagar2023_video_synthetic", CONF))
    pairs = {(p.overrides[0], p.overrides[1]) for p in points}
    models = {"vit3d", "r3d_18", "densenet121"}
    inits = {"scratch", "imagenet", "kinetics", "synthetic", "ssl"}
    expected = {(f"model={m}", f"pretrain={i}") for m in models for i in inits}
    expected -= {("model=vit3d", "pretrain=kinetics"), ("model=densenet121", "pretrain=kinetics")}
    assert pairs == expected
    vit = [p for p in points if p.overrides[0] == "model=vit3d"]
    assert all("model.options.hidden_size=768" in p.overrides for p in vit)
    assert not any("model.options.hidden_size=768" in p.overrides for p in points if p not in vit)


def test_expansion_order_exclusion_extras_and_names() -> None:
    experiment = ExperimentSettings(
        name="study",
        sweep=["model=a,b", "finetune.lr=1e-3,1e-4", "scaling.fractions=[0.5,1.0],[1.0]"],
        exclude=[["model=b", "finetune.lr=1e-4"]],
        extra=[{"when": ["model=a"], "add": ["model.options.x=1"]}],
    )
    points = expand_grid(experiment)
    assert [p.name for p in points] == [
        "study-a-lr_1e-3-fractions_0.5_1.0",
        "study-a-lr_1e-3-fractions_1.0",
        "study-a-lr_1e-4-fractions_0.5_1.0",
        "study-a-lr_1e-4-fractions_1.0",
        "study-b-lr_1e-3-fractions_0.5_1.0",
        "study-b-lr_1e-3-fractions_1.0",
    ]
    assert points[0].overrides == (
        "model=a",
        "finetune.lr=1e-3",
        "scaling.fractions=[0.5,1.0]",
        "model.options.x=1",
    )
    assert points[-1].overrides == ("model=b", "finetune.lr=1e-3", "scaling.fractions=[1.0]")


def test_split_values_respects_brackets_and_quotes() -> None:
    assert split_values("a, b") == ["a", "b"]
    assert split_values("[1,2],{x: 1, y: 2},'c,d'") == ["[1,2]", "{x: 1, y: 2}", "'c,d'"]
    with pytest.raises(SettingsError, match="empty value"):
        split_values("a,,b")


def test_bad_grids_fail_with_clear_errors() -> None:
    with pytest.raises(SettingsError, match="more than once"):
        expand_grid(ExperimentSettings(name="x", sweep=["model=a", "model=b"]))
    with pytest.raises(SettingsError, match="unknown experiment 'nope'"):
        load_experiment("nope", CONF)
    with pytest.raises(SettingsError, match="grid point"):
        validate_point(
            "gupta2023_slice2d",
            expand_grid(ExperimentSettings(name="x", sweep=["finetune.max_epochs=-1"]))[0],
            CONF,
        )


def dry_run_commands(capsys: pytest.CaptureFixture[str], *args: str) -> list[list[str]]:
    assert main(["sweep", "--conf", str(CONF), *args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [shlex.split(line) for line in lines if line.startswith("dvc exp run")]


def test_sweep_dry_run_prints_one_queued_run_per_point(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = dry_run_commands(capsys, "--experiment", "gupta2023_slice2d", "--set", "seed=3")
    assert commands[0] == [
        "dvc", "exp", "run", "--queue", "-n", "gupta2023_slice2d-pooling_mean-imagenet",
        "-S", "experiment=gupta2023_slice2d",
        "-S", "model.options.pooling=mean",
        "-S", "pretrain=imagenet",
        "-S", "seed=3",
    ]  # fmt: skip
    assert len(commands) == 4
    attention = [c for c in commands if "model.options.pooling=attention" in c]
    assert len(attention) == 2
    assert all("++model.options.attention_heads=4" in c for c in attention)


def test_sweep_runs_dvc_once_per_point(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = dry_run_commands(capsys, "--experiment", "gupta2023_slice2d")
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr("neurotransfer.sweep.subprocess.run", fake_run)
    assert main(["sweep", "--conf", str(CONF), "--experiment", "gupta2023_slice2d"]) == 0
    assert [Path(c[0]).name for c in calls] == ["dvc"] * 4
    assert [c[1:] for c in calls] == [c[1:] for c in expected]
    assert "queued 4 experiment(s)" in capsys.readouterr().out

    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr("neurotransfer.sweep.subprocess.run", failing_run)
    with pytest.raises(SystemExit, match="0 of 4 experiment"):
        main(["sweep", "--conf", str(CONF), "--experiment", "gupta2023_slice2d"])


# ---------------------------------------------------------------------------------------------
# done-when: two queued experiments run through `dvc queue` and compare with CIs
# ---------------------------------------------------------------------------------------------
# TINY_STUDY (tests/test_pipeline_dvc.py) shrunk further: one task, one epoch, no scaling curves,
# minimal synthesize and pretrain, two seeds. It used to run a baseline `dvc repro` before
# queueing (3.1 min near idle, 1.5 of them the baseline; 11 min in a suite under heavy load);
# the first queued run now computes every stage instead.
SWEEP_STUDY = {
    "cohort/phantom.yaml": TINY_STUDY["cohort/phantom.yaml"],
    "profile/cpu.yaml": {
        # Two seeds: the least `compare` accepts per arm.
        "finetune": {"max_epochs": 1, "early_stopping_patience": 0, "batch_size": 8, "seeds": 2},
        "evaluate": {"bootstrap_samples": 50},
        # synthesize is upstream of pretrain and report but not compared here: keep it minimal.
        "synthesize": {
            "autoencoder": {"epochs": 1},
            "diffusion": {"epochs": 1},
            "sampling": {"n_samples": 4, "ddim_steps": 2, "batch_size": 4},
            "quality": {"ms_ssim_pairs": 4},
        },
        # The curves are not compared here (tests/train/test_scaling.py covers them): the stage
        # writes its note only.
        "scaling": {"enabled": False, "tasks": []},
        "pretrain": {"epochs": 1, "max_volumes": 8},
    },
}
# One task: the queue, the run cache and `compare` are what is tested, and every stage of a
# queued run costs seconds of start-up (tests/reporting covers compare's regression rows).
KEEP_TASKS = ("ad",)
QUEUE_TIMEOUT_S = 1200
HEADLINE_COLUMNS = (
    r"Experiment|State|pretrain\.source|"
    r"model_metrics\.(test|ood_test)\.metrics\.(auc|mae_corrected)\.value"
)


def _keep_tasks(repo: Path, env: dict[str, str], tasks: tuple[str, ...]) -> None:
    """Drop the other tasks from the copy's data config (a merge cannot delete keys)."""
    path = repo / "conf/data/phantom.yaml"
    text = path.read_text(encoding="utf-8")
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("# @"))
    data = yaml.safe_load(text)
    data["tasks"] = {k: v for k, v in data["tasks"].items() if k in tasks}
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    (repo / "params.yaml").write_text(compose_params([], repo / "conf"), encoding="utf-8")
    run(["git", "commit", "-qam", "two tasks"], repo, env)


def _queue_done(repo: Path, env: dict[str, str]) -> bool:
    status = run(["dvc", "queue", "status"], repo, env)
    return not any(state in status for state in ("Queued", "Running"))


@pytest.mark.slow
def test_two_queued_experiments_run_and_compare(tmp_path: Path, git_env: dict[str, str]) -> None:
    import os

    started = time.monotonic()
    env = {**git_env, "PATH": f"{BIN}:{git_env.get('PATH', '')}"}
    repo = make_project_copy(tmp_path / "project", git_env, SWEEP_STUDY)
    _keep_tasks(repo, git_env, KEEP_TASKS)
    # No baseline `dvc repro` first: the first queued run computes every stage, and the second
    # (run one at a time) restores cohort, preprocess and synthesize from DVC's run cache and
    # re-runs only what its parameters change.

    # The study's question in miniature: the same recipe from two initialisations.
    names = {"scratch": "pretrain=scratch", "ssl": "pretrain=ssl"}
    for name, override in names.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", override], repo, git_env)
    # The queue worker is a detached process that inherits this one's stdout: captured output
    # would keep `dvc queue start` waiting until the whole queue has run. Discard it, and wait
    # on `dvc queue status` below with the deadline.
    subprocess.run(
        ["dvc", "queue", "start", "-j", "1"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=300,
    )
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    try:
        while not _queue_done(repo, git_env):
            assert time.monotonic() < deadline, run(["dvc", "queue", "status"], repo, git_env)
            time.sleep(5)
    finally:
        subprocess.run(
            ["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True, timeout=300
        )
    status = run(["dvc", "queue", "status"], repo, git_env)
    assert "Failed" not in status, status + run(["dvc", "queue", "logs", "ssl"], repo, git_env)

    experiments = dvc_experiments(repo, git_env)
    assert set(names) <= set(experiments), sorted(experiments)
    for name in names:
        data = experiments[name]
        metrics = data["metrics"]
        assert "metrics/eval/ad.json" in metrics, metrics
        ad = metrics["metrics/eval/ad.json"]["data"]["model_metrics"]["test"]["metrics"]["auc"]
        assert ad["ci_low"] <= ad["value"] <= ad["ci_high"]
        assert "metrics/scaling.json" in metrics
        source = data["params"]["params.yaml"]["data"]["pretrain"]["source"]
        assert source == names[name].split("=")[1]
        assert "metrics/pretrain.json" in metrics

    only_changed = run(["dvc", "exp", "show", "--only-changed"], repo, {**env, "COLUMNS": "400"})
    headline = ["--drop", ".*", "--keep", HEADLINE_COLUMNS]
    narrow = run(
        ["dvc", "exp", "show", "--only-changed", *headline], repo, {**env, "COLUMNS": "200"}
    )
    assert "scratch" in narrow and "ssl" in narrow
    compared = run(["neurotransfer", "compare", "scratch", "ssl"], repo, git_env)
    assert "|" in compared and "ad" in compared
    assert "[" in compared and "]" in compared  # intervals
    total_s = time.monotonic() - started
    out = os.environ.get("NEUROTRANSFER_SWEEP_OUTPUT")
    if out:
        Path(out).write_text(
            f"# two queued runs from a fresh copy; whole test {total_s:.0f} s\n"
            f"$ dvc exp show --only-changed {shlex.join(headline)}\n{narrow}\n"
            f"$ neurotransfer compare scratch ssl\n{compared}\n"
            f"$ dvc exp show --only-changed   # all columns\n{only_changed}\n",
            encoding="utf-8",
        )
