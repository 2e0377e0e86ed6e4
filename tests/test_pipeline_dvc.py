"""Real `dvc` runs in a temporary git copy of the project, with the configs shrunk."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import make_project_copy, run

TINY_COHORT = {
    "cohort/phantom.yaml": {
        "datasets": {
            "pool": {"n_subjects": 6},
            "adni": {"n_subjects": 6},
            "ppmi": {"n_subjects": 6},
        }
    }
}


@pytest.mark.slow
def test_dvc_repro_cohort_then_noop_then_exp_run_composes_params(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    repo = make_project_copy(tmp_path / "project", git_env, TINY_COHORT)

    out = run(["dvc", "repro", "cohort"], repo, git_env)
    assert "Running stage 'cohort'" in out
    participants = (repo / "data/raw/adni/participants.tsv").read_text().splitlines()
    assert participants[0].split("\t")[:5] == ["participant_id", "age", "sex", "diagnosis", "site"]
    assert len(participants) == 1 + 6
    assert (repo / "metrics/cohort.json").is_file()
    assert list((repo / "reports/cohort").glob("site-*.png"))

    again = run(["dvc", "repro", "cohort"], repo, git_env)
    assert "Running stage" not in again
    assert "didn't change" in again or "up to date" in again

    # `dvc exp run -S group=option` composes a new params.yaml from conf/ (hydra.enabled).
    run(["git", "add", "-A"], repo, git_env)
    run(["git", "commit", "-q", "-m", "cohort outputs"], repo, git_env)
    run(
        [
            "dvc",
            "exp",
            "run",
            "cohort",
            "-S",
            "data=ixi_hh",
            "-S",
            "model=vit3d",
            "-S",
            "profile=gpu",
        ],
        repo,
        git_env,
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["name"] == "ixi_hh"
    assert params["profile"] == "gpu"
    assert params["model"]["name"] == "vit3d"
    assert set(params["tasks"]) == {"brain_age", "sex"}
    assert params["cohort"]["datasets"]["adni"]["n_subjects"] == 6


# A small but complete study: every stage, every task, on a tiny phantom cohort.
TINY_STUDY = {
    "cohort/phantom.yaml": {
        "datasets": {
            "pool": {"n_subjects": 12},
            "adni": {"n_subjects": 40},
            "ppmi": {"n_subjects": 40},
        }
    },
    "profile/cpu.yaml": {
        # Two fine-tuning seeds: the seed axis end to end, at two thirds of the default's cost.
        "finetune": {
            "max_epochs": 3,
            "early_stopping_patience": 0,
            "batch_size": 8,
            "seeds": 2,
        },
        "evaluate": {"bootstrap_samples": 50},
        "synthesize": {
            "autoencoder": {"epochs": 2},
            "diffusion": {"epochs": 3},
            "sampling": {"n_samples": 12, "ddim_steps": 4, "batch_size": 12},
        },
        "scaling": {"max_epochs": 2},
    },
}


def _newest_mtime(folder: Path) -> int:
    """Newest modification time (ns) of the dvclive curve files, 0 when there are none."""
    newest = 0
    for path in folder.glob("*.tsv"):
        try:
            newest = max(newest, path.stat().st_mtime_ns)
        except FileNotFoundError:  # removed by DVC between listing and stat
            continue
    return newest


STABLE_FINETUNE_KEYS = ("best_epoch", "epochs_run", "n_train", "n_val")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    import os

    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t.invalid",
    }
    repo = make_project_copy(tmp_path_factory.mktemp("study") / "project", env, TINY_STUDY)
    run(["dvc", "repro"], repo, env, timeout=1800)
    return repo, env


@pytest.mark.slow
def test_full_pipeline_writes_metrics_for_every_task(
    tiny_study: tuple[Path, dict[str, str]],
) -> None:
    import json

    repo, env = tiny_study
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for task, spec in params["tasks"].items():
        result = json.loads((repo / f"metrics/eval/{task}.json").read_text())
        assert result["task"] == task
        assert {"test", "ood_test"} <= set(result["model_metrics"])
        main = "auc" if spec["kind"] == "binary" else "mae"
        value = result["model_metrics"]["test"]["metrics"][main]
        assert value["ci_low"] <= value["value"] <= value["ci_high"]
        assert "mean_predictor" in result["baselines"]
        assert "ridge_voxels" in result["baselines"]
        assert 0.0 <= result["site_probe"]["balanced_accuracy"] <= 1.0
        assert result["n_seeds"] == 2
        assert result["model_metrics"]["test"]["n_seeds"] == 2
        header = (repo / f"reports/eval/{task}/predictions.csv").read_text().splitlines()[0]
        assert {"prediction", "prediction_seed0", "prediction_seed1"} <= set(header.split(","))
        model_dir = repo / f"models/finetuned/{task}"
        assert json.loads((model_dir / "meta.json").read_text())["seeds"] == [0, 1]
        for seed in (0, 1):
            assert (model_dir / f"seed{seed}/model.safetensors").is_file()
            assert (model_dir / f"seed{seed}/meta.json").is_file()

    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status
    shown = run(["dvc", "metrics", "show", "--json"], repo, env)
    assert "metrics/eval/brain_age.json" in shown


@pytest.mark.slow
def test_kill_during_finetune_leaves_no_partial_outputs_and_repro_recovers(
    tiny_study: tuple[Path, dict[str, str]],
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    repo, env = tiny_study
    before = json.loads((repo / "metrics/finetune/ad.json").read_text())
    bin_dir = str(Path(sys.executable).parent)
    curves = repo / "dvclive/finetune/ad/plots/metrics"
    previous = _newest_mtime(curves)
    proc = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "finetune@ad"],
        cwd=repo,
        env={**env, "PATH": f"{bin_dir}:{env['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Wait until the first epoch has been logged (DVC deleted the old curves before the run),
    # so training is under way, then kill -9 the whole process group mid-run.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if _newest_mtime(curves) > previous:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "finetune@ad finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    model_dir = repo / "models/finetuned/ad"
    # Either the previous models, whole, or nothing: never a model without its metadata, nor
    # some seeds of the new run.
    if model_dir.exists():
        seeds = json.loads((model_dir / "meta.json").read_text())["seeds"]
        assert sorted(p.name for p in model_dir.iterdir()) == sorted(
            ["meta.json", *(f"seed{s}" for s in seeds)]
        )
        for seed in seeds:
            assert (model_dir / f"seed{seed}/model.safetensors").is_file()
            assert (model_dir / f"seed{seed}/meta.json").is_file()
    assert "finetune@ad" in run(["dvc", "status"], repo, env)

    run(["dvc", "repro"], repo, env, timeout=1800)
    assert "up to date" in run(["dvc", "status"], repo, env)
    assert not list(model_dir.parent.glob(".ad.*")), "a killed run's temporary model remains"
    after = json.loads((repo / "metrics/finetune/ad.json").read_text())
    # Same seed on CPU: the re-run reproduces the interrupted stage's results exactly.
    for key in (*STABLE_FINETUNE_KEYS, f"best_{before['monitor']}"):
        assert after[key] == before[key], key
    for seed, entry in before["seeds"].items():
        assert (
            after["seeds"][seed][f"best_{before['monitor']}"] == entry[f"best_{before['monitor']}"]
        )


@pytest.mark.slow
def test_cross_validation_runs_end_to_end_through_dvc(
    tiny_study: tuple[Path, dict[str, str]],
) -> None:
    """`dvc exp run -S data.splits.mode=kfold`: preprocess deals folds, finetune trains every
    fold, evaluate scores every cross-validated subject once. Runs last: it leaves the
    workspace on the experiment's params. synthesize and pretrain are not re-run
    (``--single-item``): the scratch backbone does not depend on the folds, and re-training the
    diffusion model would only add minutes to CI."""
    import json

    import pandas as pd

    repo, env = tiny_study
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "tiny study outputs"], repo, env)
    overrides = ["-S", "data.splits.mode=kfold", "-S", "data.splits.k=3"]
    run(["dvc", "exp", "run", "preprocess", *overrides], repo, env, timeout=1800)
    stages = ["finetune@brain_age", "evaluate@brain_age"]
    run(["dvc", "repro", "--single-item", *stages], repo, env, timeout=1800)
    assert not any(stage in run(["dvc", "status", *stages], repo, env) for stage in stages)

    manifest = pd.read_csv(repo / "data/processed/manifest.csv", keep_default_na=False)
    cv = manifest[manifest["split"] == "cv"]
    assert not cv.empty and set(cv["fold"].astype(float)) == {0.0, 1.0, 2.0}
    assert not set(manifest["split"]) & {"val", "test"}
    model_dir = repo / "models/finetuned/brain_age"
    assert json.loads((model_dir / "meta.json").read_text())["folds"] == 3
    scores = json.loads((repo / "metrics/eval/brain_age.json").read_text())
    assert scores["n_folds"] == 3
    predictions = pd.read_csv(repo / "reports/eval/brain_age/predictions.csv")
    tested = predictions.loc[predictions["split"] == "test", "subject_id"]
    eligible = set(cv["subject_id"]) & set(predictions["subject_id"])
    assert tested.is_unique and set(tested) == eligible
    mae = scores["model_metrics"]["test"]["metrics"]["mae"]
    assert mae["ci_low"] <= mae["value"] <= mae["ci_high"]
