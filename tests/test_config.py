"""The Hydra groups in conf/ compose into valid settings, and bad values fail naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import SettingsError, load_settings, settings_from_dict

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
    raw = composed(f"{group}={option}")
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
