"""Every path the code writes is declared in dvc.yaml, and every declared path is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import settings_from_dict
from neurotransfer.paths import stage_outputs


def _paths(entries: list) -> set[str]:
    """Paths of a dvc.yaml outs/metrics/plots list (plain strings or one-key mappings)."""
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def declared_outputs(dvc_yaml: Path, tasks: list[str]) -> dict[str, set[str]]:
    """dvc.yaml's stages (foreach expanded over `tasks`) -> their outs, metrics and plots."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    declared: dict[str, set[str]] = {}
    for name, stage in stages.items():
        keys = tasks if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for key in keys:
            outputs: set[str] = set()
            for field in ("outs", "metrics", "plots"):
                outputs |= _paths(body.get(field, []))
            label = name if key is None else f"{name}@{key}"
            declared[label] = {p.replace("${key}", key) if key else p for p in outputs}
    return declared


@pytest.mark.parametrize("data_option", ["phantom", "ixi_hh"])
def test_code_and_dvc_yaml_list_the_same_outputs(repo_root: Path, data_option: str) -> None:
    params = yaml.safe_load(compose_params([f"data={data_option}"], repo_root / "conf"))
    settings = settings_from_dict(params)
    written = stage_outputs(settings)
    declared = declared_outputs(repo_root / "dvc.yaml", sorted(settings.tasks))
    if settings.cohort is None:  # the stage still exists in dvc.yaml; it writes a note
        declared.pop("cohort")
    assert sorted(written) == sorted(declared)
    for stage in declared:
        assert written[stage] == declared[stage], (
            f"{stage}: written but undeclared {sorted(written[stage] - declared[stage])}, "
            f"declared but unwritten {sorted(declared[stage] - written[stage])}"
        )
