"""The Hydra groups in conf/ compose into valid settings, and bad values fail naming the key."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import (
    BACKBONE_DEFAULTS,
    EXTERNAL_SOURCES,
    SHIPPED_EXTERNAL,
    SettingsError,
    backbone_fit_problem,
    load_settings,
    settings_from_dict,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "experiment")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str) -> dict:
    return yaml.safe_load(compose_params(list(overrides), CONF))


@pytest.fixture(scope="module")
def default_params() -> dict:
    return composed()


def test_every_group_has_options() -> None:
    assert {"data", "model", "pretrain", "profile", "cohort"} <= set(GROUPS)
    for group in GROUPS:
        assert group_options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    # The external weights exist for some backbones only (the default sfcn has none).
    paired = ["model=r3d_18"] if group == "pretrain" and option in EXTERNAL_SOURCES else []
    raw = composed(f"{group}={option}", *paired)
    settings = settings_from_dict(raw, source=f"{group}={option}")
    if group == "model":
        assert settings.model.name == option
    if group == "pretrain":
        assert settings.pretrain.source == option
    if group == "profile":
        assert settings.profile == option
    if group == "data":
        assert settings.data.name == option


def test_committed_params_match_conf_defaults(repo_root: Path) -> None:
    committed = (repo_root / "params.yaml").read_text(encoding="utf-8")
    assert committed == compose_params([], CONF), (
        "params.yaml is out of sync with conf/: run `make params` and commit the result"
    )
    load_settings(repo_root / "params.yaml")


def test_profile_changes_sizes() -> None:
    cpu = settings_from_dict(composed("profile=cpu"))
    gpu = settings_from_dict(composed("profile=gpu"))
    assert cpu.data.preprocess.shape != gpu.data.preprocess.shape
    assert max(gpu.data.preprocess.spacing) < min(cpu.data.preprocess.spacing)
    assert gpu.finetune.precision == "bf16-mixed"


@pytest.mark.parametrize(
    ("path", "value", "expected_key"),
    [
        (("finetune", "max_epochs"), -3, "finetune.max_epochs"),
        (("finetune", "lr"), "fast", "finetune.lr"),
        (("finetune", "precision"), "fp8", "finetune.precision"),
        (("data", "preprocess", "shape"), [40, 0, 40], "data.preprocess.shape"),
        (("data", "splits", "train"), 0.9, "data.splits"),
        (("cohort", "datasets", "pool", "n_subjects"), -5, "cohort.datasets.pool.n_subjects"),
        (("cohort", "datasets", "adni", "sites"), ["siteA", "siteZ"], "siteZ"),
        (("cohort", "sites", "siteA", "orientation"), "RAX", "cohort.sites.siteA.orientation"),
        (("model", "nmae"), "sfcn", "model.nmae"),
    ],
)
def test_bad_value_fails_naming_the_key(
    default_params: dict, path: tuple[str, ...], value: object, expected_key: str
) -> None:
    raw = copy.deepcopy(default_params)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SettingsError) as excinfo:
        settings_from_dict(raw, source="params.yaml")
    assert expected_key in str(excinfo.value)
    assert "params.yaml" in str(excinfo.value)


def test_task_on_unknown_dataset_fails(default_params: dict) -> None:
    raw = copy.deepcopy(default_params)
    raw["tasks"]["ad"]["datasets"] = ["adni", "oasis"]
    with pytest.raises(SettingsError, match=r"tasks\.ad.*oasis"):
        settings_from_dict(raw)


def test_load_settings_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "params.yaml")


def test_load_settings_reports_unknown_key(tmp_path: Path, default_params: dict) -> None:
    raw = copy.deepcopy(default_params)
    raw["finetune"]["epochz"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(SettingsError, match=r"finetune\.epochz: unknown key"):
        load_settings(path)


def _declared_params(repo_root: Path, tasks: list[str]) -> list[str]:
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    names: list[str] = []
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            keys = [entry] if isinstance(entry, str) else list(entry)
            for key in keys:
                if "${key}" in key:
                    names += [key.replace("${key}", task) for task in tasks]
                else:
                    names.append(key)
    return names


@pytest.mark.parametrize("data_option", group_options("data"))
def test_every_param_dvc_yaml_declares_is_in_params(repo_root: Path, data_option: str) -> None:
    raw = composed(f"data={data_option}")
    for name in _declared_params(repo_root, list(raw["tasks"])):
        node = raw
        for part in name.split("."):
            assert isinstance(node, dict) and part in node, (
                f"dvc.yaml declares param {name!r}, missing from params composed with "
                f"data={data_option}: write it out in conf/"
            )
            node = node[part]


# --------------------------------------------------------------------------------------------
# Compatibility rules checked when the settings load: each names the key to change.
# --------------------------------------------------------------------------------------------
def _edited(params: dict, edits: dict[tuple[str, ...], object]) -> dict:
    raw = copy.deepcopy(params)
    for path, value in edits.items():
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ({("model", "name"): "resnet50"}, [r"model\.name: unknown backbone 'resnet50'"]),
        (
            {("model", "options", "chanels"): [8, 16]},
            [r"model\.options: backbone 'sfcn' has no option\(s\) \['chanels'\]"],
        ),
        (
            {("model", "options", "channels"): [8, 16, 32, 64, 64, 64, 32]},
            [r"data\.preprocess\.shape \(40, 48, 40\)", r"model\.options\.channels", "64 voxels"],
        ),
        (
            {("model",): {"name": "vit3d", "options": {"patch_size": 16}}},
            [r"model\.options\.patch_size \(16, 16, 16\) does not divide", r"\[0, 2\]"],
        ),
        (
            {("model",): {"name": "densenet121"}, ("data", "preprocess", "shape"): [16, 48, 40]},
            [r"data\.preprocess\.shape \(16, 48, 40\)", "at least 29 voxels", "block_config"],
        ),
        (
            {("model",): {"name": "mvit_v2_s"}, ("data", "preprocess", "shape"): [40, 24, 40]},
            [r"H and W must be at least 32 voxels \(got \[24\]\)", r"model\.options\.depths"],
        ),
        (
            {("model",): {"name": "vit3d", "options": {"patch_size": 8, "num_heads": 10}}},
            [r"model\.options\.hidden_size 768 is not divisible by model\.options\.num_heads 10"],
        ),
        (
            {
                ("model",): {
                    "name": "slice2d",
                    "options": {"encoder": "cnn", "axis": 0, "cnn_channels": [8] * 6},
                }
            },
            [r"model\.options\.axis 0 are \(48, 40\)", "both slice sides must be at least 64"],
        ),
        (
            {("model",): {"name": "swin3d_t", "options": {"num_heads": [3, 5, 12, 24]}}},
            [r"model\.options\.num_heads\[1\] = 5"],
        ),
    ],
)
def test_model_that_cannot_take_the_volumes_fails_at_load(
    default_params: dict, edits: dict, expected: list[str]
) -> None:
    with pytest.raises(SettingsError) as excinfo:
        settings_from_dict(_edited(default_params, edits), source="params.yaml")
    message = str(excinfo.value)
    assert message.startswith("params.yaml: invalid settings: ") and "\n" not in message
    for pattern in expected:
        assert re.search(pattern, message), (pattern, message)


def test_backbone_table_matches_the_registry() -> None:
    # The table is the settings' torch-free copy of the shipped backbones' defaults: a backbone
    # added to the registry since may be missing from it (the settings then ask the registry,
    # tests/test_new_architecture.py), but an entry never differs from its builder.
    from neurotransfer.models import available_backbones, backbone_options

    assert set(BACKBONE_DEFAULTS) <= set(available_backbones())
    for name, defaults in BACKBONE_DEFAULTS.items():
        assert defaults == backbone_options(name), name


def test_external_weights_table_matches_the_registry() -> None:
    # SHIPPED_EXTERNAL is the settings' torch-free copy of the counterparts each shipped model
    # module registers: the same sources, and the very same options checks.
    from neurotransfer.models import backbone_counterparts

    assert set(SHIPPED_EXTERNAL) == set(BACKBONE_DEFAULTS)
    for name, sources in SHIPPED_EXTERNAL.items():
        registered = backbone_counterparts(name)
        assert set(sources) == set(registered), name
        for source, check in sources.items():
            assert check is registered[source].options_problem, (name, source)


LOADS_WITHOUT_TORCH = """
import sys, yaml
from pathlib import Path
from neurotransfer.config import (
    BACKBONE_DEFAULTS, SHIPPED_EXTERNAL, SettingsError, load_settings, settings_from_dict
)

raw = yaml.safe_load(Path("params.yaml").read_text())
load_settings("params.yaml")
for name in BACKBONE_DEFAULTS:
    raw["model"] = yaml.safe_load(Path(f"conf/model/{name}.yaml").read_text())
    for source in ("scratch", "synthetic", "ssl"):
        raw["pretrain"].update(source=source, objectives=[] if source == "scratch" else ["simclr"])
        raw["pretrain"]["epochs"] = 0 if source == "scratch" else 1
        settings_from_dict(raw, source=f"model={name} pretrain={source}")
    for source in SHIPPED_EXTERNAL[name]:  # external weights: checked from the torch-free copy
        raw["pretrain"].update(source=source, objectives=[], epochs=0, weights_path="w.pth")
        try:
            settings_from_dict(raw, source=f"model={name} pretrain={source}")
        except SettingsError as err:  # a CPU conf's sizes may not take them: said, not imported
            assert "pretrain" in str(err), err
print("torch" in sys.modules)
"""


def test_settings_of_the_shipped_backbones_load_without_torch(repo_root: Path) -> None:
    # Every stage loads the settings first, and the ones that use no network (cohort,
    # preprocess, report, sweep) should not wait ~10 s for torch to import: the load-time rules
    # of the shipped backbones and the pretrain sources that need no external weights read
    # config.py alone.
    result = subprocess.run(
        [sys.executable, "-c", LOADS_WITHOUT_TORCH],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False", result.stderr


# Small networks on both sides of each rule: the load-time check and the builder must agree.
TINY_DENSENET = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1}
TINY_VIT = {"patch_size": 4, "hidden_size": 8, "mlp_dim": 8, "num_layers": 1, "num_heads": 2}
TINY_SWIN = {"embed_dim": 8, "depths": [1, 1], "num_heads": [2, 4], "window_size": [2, 2, 2]}
TINY_MVIT = {"embed_dim": 8, "depths": [1, 1], "num_heads": 2, "kv_stride": 2}
TINY_SLICE = {"encoder": "cnn", "cnn_channels": [2, 2], "axis": 2, "embed_dim": 4}


@pytest.mark.parametrize(
    ("name", "options", "shape", "fits"),
    [
        ("sfcn", {"channels": [4, 8, 8]}, (4, 4, 4), True),
        ("sfcn", {"channels": [4, 8, 8]}, (4, 3, 4), False),
        ("densenet121", TINY_DENSENET, (5, 5, 5), True),
        ("densenet121", TINY_DENSENET, (5, 5, 4), False),
        ("vit3d", TINY_VIT, (8, 8, 12), True),
        ("vit3d", TINY_VIT, (8, 8, 10), False),
        ("vit3d", {**TINY_VIT, "patch_size": [2, 4, 5]}, (8, 8, 10), True),
        ("vit3d", {**TINY_VIT, "num_heads": 3}, (8, 8, 8), False),
        ("slice2d", TINY_SLICE, (4, 4, 1), True),
        ("slice2d", TINY_SLICE, (4, 3, 9), False),
        ("slice2d", {**TINY_SLICE, "pooling": "attention", "attention_heads": 3}, (4, 4, 2), False),
        ("swin3d_t", TINY_SWIN, (2, 2, 2), True),
        ("swin3d_t", {**TINY_SWIN, "num_heads": [3, 4]}, (2, 2, 2), False),
        ("swin3d_t", {**TINY_SWIN, "depths": [1], "num_heads": [2]}, (2, 2, 2), False),
        ("mvit_v2_s", TINY_MVIT, (1, 8, 8), True),
        ("mvit_v2_s", TINY_MVIT, (1, 8, 7), False),
        ("mvit_v2_s", {**TINY_MVIT, "num_heads": 3}, (1, 8, 8), False),
        ("r3d_18", {"layers": [1, 1, 1, 1]}, (1, 1, 1), True),
        ("r2plus1d_18", {"layers": [1, 1, 1, 1]}, (1, 1, 1), True),
        ("sfcn", {"width": 3}, (32, 32, 32), False),
    ],
)
def test_load_time_rule_agrees_with_the_builder(
    name: str, options: dict, shape: tuple[int, int, int], fits: bool
) -> None:
    from neurotransfer.models import build_backbone

    problem = backbone_fit_problem(name, options, shape)
    assert (problem == "") is fits, problem
    if fits:
        build_backbone(name, shape, **options)
    else:
        with pytest.raises(ValueError):
            build_backbone(name, shape, **options)


def test_task_on_a_dataset_without_its_label_column_fails() -> None:
    raw = composed("data=ixi_hh")
    raw["tasks"]["ad"] = {
        "kind": "binary",
        "target": "diagnosis",
        "positive": "AD",
        "negative": "CN",
        "datasets": ["ixi_hh"],
    }
    with pytest.raises(SettingsError, match=r"tasks\.ad\.target .*data\.datasets\.ixi_hh\.columns"):
        settings_from_dict(raw)
    del raw["tasks"]["ad"]
    raw["tasks"]["brain_age"]["subset"] = {"diagnosis": ["CN"]}
    with pytest.raises(SettingsError, match=r"tasks\.brain_age\.subset\.diagnosis needs"):
        settings_from_dict(raw)


@pytest.mark.parametrize(
    ("task", "edits", "expected"),
    [
        ("sex", {"positive": "male"}, r"tasks\.sex: positive 'male': sex labels are 'M' and 'F'"),
        ("ad", {"negative": "AD"}, r"tasks\.ad: positive and negative are both 'AD'"),
        (
            "ad",
            {"datasets": ["ppmi"]},
            r"tasks\.ad\.positive 'AD': no subject of tasks\.ad\.datasets has that diagnosis "
            r"\(the phantom cohort gives ppmi \['CN', 'PD'\]\)",
        ),
        ("brain_age", {"subset": {"diagnosis": ["HC"]}}, r"tasks\.brain_age\.subset\.diagnosis"),
    ],
)
def test_task_labels_its_data_cannot_give_fail(
    default_params: dict, task: str, edits: dict, expected: str
) -> None:
    raw = copy.deepcopy(default_params)
    raw["tasks"][task].update(edits)
    with pytest.raises(SettingsError, match=expected):
        settings_from_dict(raw)


def test_diagnosis_map_renames_the_phantom_labels(default_params: dict) -> None:
    raw = copy.deepcopy(default_params)
    raw["data"]["datasets"]["adni"]["diagnosis_map"] = {"AD": "Dementia"}
    raw["tasks"]["ad"]["positive"] = "Dementia"
    settings_from_dict(raw)  # the mapped label exists
    raw["tasks"]["ad"]["positive"] = "AD"
    with pytest.raises(SettingsError, match=r"tasks\.ad\.positive 'AD'"):
        settings_from_dict(raw)


def test_pretrain_source_without_weights_for_the_model_fails(default_params: dict) -> None:
    kinetics = composed("pretrain=kinetics")  # the default model is sfcn
    with pytest.raises(SettingsError, match=r"pretrain\.source / model\.name: .*'sfcn'"):
        settings_from_dict(kinetics)
    imagenet_vit = composed("pretrain=imagenet", "model=vit3d")
    imagenet_vit["model"]["options"].update({"hidden_size": 384, "num_heads": 6})
    with pytest.raises(SettingsError, match=r"vit_b_16.*hidden_size 384 \(vit_b_16: 768\)"):
        settings_from_dict(imagenet_vit)


def test_shape_the_synthesis_cannot_divide_fails(default_params: dict) -> None:
    raw = _edited(default_params, {("data", "preprocess", "shape"): [40, 48, 36]})
    with pytest.raises(
        SettingsError,
        match=r"data\.preprocess\.shape \(40, 48, 36\) must be divisible by 8 for the synthesize",
    ):
        settings_from_dict(raw)
    # Data without an upstream pool skip the synthesis: the shape is theirs to choose.
    no_pool = composed("data=ixi_hh")
    no_pool["data"]["preprocess"]["shape"] = [40, 48, 36]
    settings_from_dict(no_pool)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("exclude", [["model=vit3d", "pretrain=kinetic"]], r"exclude\[0\]: 'pretrain=kinetic'"),
        ("exclude", [["finetune.lr=1e-4"]], r"exclude\[0\]: .*does not vary 'finetune\.lr'"),
        ("extra", [{"when": ["model=slice2d"], "add": ["x=1"]}], r"extra\[0\]\.when"),
    ],
)
def test_experiment_condition_matching_no_grid_point_fails(
    default_params: dict, field: str, value: list, expected: str
) -> None:
    raw = copy.deepcopy(default_params)
    raw["experiment"] = {
        "name": "grid",
        "sweep": ["model=vit3d,r3d_18", "pretrain=scratch,kinetics"],
        field: value,
    }
    with pytest.raises(SettingsError, match=r"experiment: " + expected):
        settings_from_dict(raw)


def test_several_problems_are_listed_one_per_line(default_params: dict) -> None:
    raw = _edited(default_params, {("finetune", "lr"): "fast", ("seed",): -1})
    with pytest.raises(SettingsError) as excinfo:
        settings_from_dict(raw)
    lines = str(excinfo.value).splitlines()
    assert lines[0] == "<params>: invalid settings"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == ["finetune.lr", "seed"]


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            {("finetune", "cudnn_benchmark"): True, ("finetune", "deterministic"): True},
            r"finetune: cudnn_benchmark and deterministic are both true",
        ),
        (
            {("finetune", "accelerator"): "cpu", ("finetune", "precision"): "16-mixed"},
            r"finetune: precision '16-mixed' \(fp16 autocast\) is not available with accelerator",
        ),
        (
            {("pretrain", "objectives"): ["simclr"], ("pretrain", "batch_size"): 1},
            r"pretrain: batch_size 1: the simclr objective",
        ),
    ],
)
def test_recipe_settings_that_contradict_each_other_fail(edits: dict, expected: str) -> None:
    raw = _edited(composed("pretrain=ssl"), edits)
    with pytest.raises(SettingsError, match=expected):
        settings_from_dict(raw)
