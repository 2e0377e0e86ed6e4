"""`dvc exp run -S pretrain=imagenet|kinetics` end to end with local weight files.

Offline, external weights come from `pretrain.weights_path`. The test writes torchvision
networks with random weights in the official layouts (a weights-only `.pth` for ImageNet
resnet18, `.safetensors` for Kinetics r3d_18), runs both sources through DVC on a tiny phantom
study with `model=r3d_18`, and checks that `dvc exp show` lists both with their evaluate
metrics and that each run recorded the file it read (path and SHA-256).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from tests.helpers import dvc_experiments, make_project_copy, run
from tests.test_pipeline_dvc import TINY_STUDY
from tests.test_sweeps import _keep_tasks

# Small volumes (r3d_18 downsamples time by 8 and space by 16) so a full-width r3d_18 trains an
# epoch in seconds; one task, one epoch, no scaling curves, a minimal synthesize.
EXTERNAL_STUDY = {
    # Only `ad` is kept: adni at the tiny study's size, the pool and ppmi at a token size (they
    # are still generated and preprocessed, and the pool feeds the backbone's age probe).
    "cohort/phantom.yaml": {
        "datasets": {
            "pool": {"n_subjects": 6},
            "adni": TINY_STUDY["cohort/phantom.yaml"]["datasets"]["adni"],
            "ppmi": {"n_subjects": 6},
        }
    },
    "profile/cpu.yaml": {
        "data": {"preprocess": {"spacing": [6.5, 6.5, 6.5], "shape": [24, 32, 24]}},
        # One seed: the test is about the weights each source reads, not training noise.
        "finetune": {"max_epochs": 1, "early_stopping_patience": 0, "batch_size": 8, "seeds": 1},
        "evaluate": {"bootstrap_samples": 20},
        "synthesize": {
            "autoencoder": {"epochs": 1},
            "diffusion": {"epochs": 1},
            "sampling": {"n_samples": 4, "ddim_steps": 2, "batch_size": 4},
            "quality": {"ms_ssim_pairs": 4},
        },
        "scaling": {"enabled": False, "tasks": []},
    },
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_imagenet_and_kinetics_run_through_dvc_from_local_files(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    torch.manual_seed(0)
    imagenet = tmp_path / "weights" / "resnet18-f37072fd.pth"
    kinetics = tmp_path / "weights" / "r3d_18-b3b3357e.safetensors"
    imagenet.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), imagenet)
    save_file(
        {k: v.contiguous() for k, v in torchvision.models.video.r3d_18().state_dict().items()},
        str(kinetics),
    )

    repo = make_project_copy(tmp_path / "project", git_env, EXTERNAL_STUDY)
    _keep_tasks(repo, git_env, ("ad",))
    runs = {"imagenet": imagenet, "kinetics": kinetics}
    for source, weights in runs.items():
        run(
            [
                "dvc", "exp", "run", "-n", source,
                "-S", "model=r3d_18",
                "-S", f"pretrain={source}",
                "-S", f"pretrain.weights_path={weights}",
            ],
            repo,
            git_env,
            timeout=1800,
        )  # fmt: skip

    experiments = dvc_experiments(repo, git_env)
    assert set(runs) <= set(experiments), sorted(experiments)
    for source in runs:
        data = experiments[source]
        params = data["params"]["params.yaml"]["data"]
        assert params["pretrain"]["source"] == source
        assert params["model"]["name"] == "r3d_18"
        auc = data["metrics"]["metrics/eval/ad.json"]["data"]["model_metrics"]["test"]["metrics"]
        assert auc["auc"]["ci_low"] <= auc["auc"]["value"] <= auc["auc"]["ci_high"]
        pretrain = data["metrics"]["metrics/pretrain.json"]["data"]
        assert pretrain["source"] == source and pretrain["architecture"] == "r3d_18"
        assert pretrain["weights"] in (
            "ResNet18_Weights.IMAGENET1K_V1",
            "R3D_18_Weights.KINETICS400_V1",
        )

    # The workspace holds the last run (kinetics): its backbone records the file it read.
    meta = json.loads((repo / "models/pretrained/meta.json").read_text())
    assert meta["source"] == "kinetics"
    assert meta["external"]["weights_file"] == str(kinetics)
    assert meta["external"]["weights_sha256"] == _sha256(kinetics)
