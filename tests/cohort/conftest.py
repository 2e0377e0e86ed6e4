"""Shared fixtures for the phantom cohort: the real conf with small counts, the template anatomy,
and one small cohort written by the stage exactly as `dvc repro` runs it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from neurotransfer import cli
from neurotransfer.cohort.anatomy import Anatomy, build_anatomy
from neurotransfer.compose import compose_params
from neurotransfer.config import Settings, settings_from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
# Two subjects per site in each dataset: every site appears, and every downstream site with a
# patient fraction of 0.5 or more has a patient.
SMALL_COUNTS = {"pool": 6, "adni": 6, "ppmi": 6}


@pytest.fixture(scope="session")
def default_params() -> dict[str, Any]:
    """params.yaml as composed from the committed conf/ defaults."""
    return yaml.safe_load(compose_params(conf_dir=REPO_ROOT / "conf"))


@pytest.fixture(scope="session")
def make_params(default_params: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The default params with some dataset sizes changed (a fresh copy each call)."""

    def make(counts: dict[str, int] | None = None) -> dict[str, Any]:
        raw = copy.deepcopy(default_params)
        for name, n in (counts or SMALL_COUNTS).items():
            raw["cohort"]["datasets"][name]["n_subjects"] = n
        return raw

    return make


@pytest.fixture(scope="session")
def anatomy() -> Anatomy:
    return build_anatomy(2)


@pytest.fixture(scope="session")
def small_cohort(
    tmp_path_factory: pytest.TempPathFactory,
    make_params: Callable[..., dict[str, Any]],
    anatomy: Anatomy,
) -> tuple[Path, Settings]:
    """An 18-subject cohort over all six sites, written by `neurotransfer cohort` (two workers)
    from a params.yaml in a fresh folder, as `dvc repro` runs it from the repository root."""
    root = tmp_path_factory.mktemp("cohort")
    raw = make_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    settings = settings_from_dict(raw)
    assert settings.cohort is not None and settings.cohort.workers == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli.main(["cohort"]) == 0
    return root, settings
