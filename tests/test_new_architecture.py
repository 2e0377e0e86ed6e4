"""Adding an architecture takes one model module and one conf/model entry, nothing else.

tests/models/example_architecture.py is such a module (a tiny 3D stem that declares torchvision
ResNet18's ImageNet weights as its counterpart); it is executed into a scratch copy of the
backbone registry, and a copy of conf/ gets its ``model/tiny_stem.yaml``. From there the real
paths must take it: Hydra composition, the settings' load-time checks (names, options, the
pretrain source), the builder, and the pretrain stage starting it from a local weights file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import Settings, SettingsError, settings_from_dict
from neurotransfer.models import (
    backbone_counterparts,
    backbones_with_counterpart,
    build_backbone,
    load_backbone,
    registry,
)
from neurotransfer.models.external_weights import inflate_conv, sum_rgb
from neurotransfer.stages.pretrain import run_pretrain
from tests.pretrain.helpers import SHAPE, make_project, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = REPO_ROOT / "tests" / "models" / "example_architecture.py"
CONF_ENTRY = """\
# A 3D stem from torchvision ResNet18's first convolution (tests/models/example_architecture.py).
name: tiny_stem
options:
  width: 64
  depth: 3
"""


@pytest.fixture()
def tiny_stem(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The new model module, registered into a copy of the registry dropped after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = importlib.util.spec_from_file_location("tiny_stem_model", MODEL_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    """conf/ with the new architecture's entry in the model group."""
    conf_dir = tmp_path / "conf"
    shutil.copytree(REPO_ROOT / "conf", conf_dir)
    (conf_dir / "model" / "tiny_stem.yaml").write_text(CONF_ENTRY, encoding="utf-8")
    return conf_dir


def composed(conf: Path, *overrides: str) -> dict:
    return yaml.safe_load(compose_params(list(overrides), conf))


def test_it_composes_validates_and_builds(tiny_stem: ModuleType, conf: Path) -> None:
    loaded: Settings = settings_from_dict(
        composed(conf, "model=tiny_stem"), source="model=tiny_stem"
    )
    assert loaded.model.name == "tiny_stem"
    assert loaded.model.options == {"width": 64, "depth": 3}
    backbone = build_backbone(
        loaded.model.name, loaded.data.preprocess.shape, **loaded.model.options
    )
    assert isinstance(backbone, tiny_stem.TinyStem)
    with torch.no_grad():
        features = backbone(torch.rand(2, 1, *loaded.data.preprocess.shape))
    assert features.shape == (2, 64)
    # Its external weights are known wherever the registry is read.
    assert "tiny_stem" in backbones_with_counterpart("imagenet")
    assert backbone_counterparts("tiny_stem")["imagenet"] is tiny_stem.IMAGENET_RESNET18_STEM
    settings_from_dict(composed(conf, "model=tiny_stem", "pretrain=imagenet"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model=tiny_stem", "+model.options.widht=64"],
            r"model\.options: backbone 'tiny_stem' has no option\(s\) \['widht'\]; its options "
            r"\(with defaults\): width=64, depth=3",
        ),
        (
            ["model=tiny_stem", "pretrain=imagenet", "model.options.width=16"],
            r"pretrain\.source / model\.name: pretrain=imagenet initialises tiny_stem from "
            r"resnet18's first convolution, which is 64 wide; model\.options\.width is 16",
        ),
        (
            ["model=tiny_stem", "pretrain=kinetics"],
            r"pretrain=kinetics has no weights for model 'tiny_stem': it supports \['mvit_v2_s'",
        ),
    ],
)
def test_its_rules_are_checked_when_the_settings_load(
    tiny_stem: ModuleType, conf: Path, overrides: list[str], expected: str
) -> None:
    with pytest.raises(SettingsError, match=expected):
        settings_from_dict(composed(conf, *overrides))


def test_the_conf_entry_without_the_model_file_is_an_unknown_backbone(conf: Path) -> None:
    with pytest.raises(SettingsError, match=r"model\.name: unknown backbone 'tiny_stem'"):
        settings_from_dict(composed(conf, "model=tiny_stem"))


def test_it_starts_from_its_counterparts_local_weights(
    tiny_stem: ModuleType, tmp_path: Path
) -> None:
    root = make_project(tmp_path)
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    model = {"name": "tiny_stem", "options": {"depth": 5}}
    metrics = run_pretrain(settings({"source": "imagenet", "weights_path": str(path)}, model), root)
    assert metrics["architecture"] == "tiny_stem" and metrics["source"] == "imagenet"
    meta = json.loads((root / "models" / "pretrained" / "meta.json").read_text())
    assert meta["external"]["torchvision_model"] == "resnet18"
    assert meta["external"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert meta["external"]["weights_file"] == str(path)
    assert meta["external"]["keys_own_init"] == 0
    assert meta["external"]["n_unused_source_keys"] > 0  # the residual layers
    backbone, _ = load_backbone(root / "models" / "pretrained")
    assert tuple(backbone.spec.input_shape) == SHAPE
    expected = inflate_conv(sum_rgb(state["conv1.weight"]), 5)
    assert torch.equal(backbone.conv.weight, expected)
    assert torch.equal(backbone.norm.running_var, state["bn1.running_var"])
