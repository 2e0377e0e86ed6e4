"""Shared fixtures: the repository root, composed configs, and git-identity for temp repos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The files that run dvc pipelines or train for minutes, longest first (measured in `make test`).
# Collected first, so `make test`'s two workers each start one at once and the short files
# fill in around them, instead of one worker running a long file alone at the end.
LONGEST_FIRST = (
    "tests/test_pipeline_dvc.py",
    "tests/test_sweeps.py",
    "tests/synth/test_training.py",
    "tests/pretrain/test_dvc_external.py",
    "tests/benchmarks/test_benchmarks.py",
)
IXI_HH = (REPO_ROOT.parent / "shared" / "data" / "ixi-hh").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def ixi_hh_dir() -> Path:
    """The real IXI-HH scans beside the checkout; tests needing them skip when absent."""
    if not (IXI_HH / "participants.tsv").is_file():
        pytest.skip(f"real data not available: {IXI_HH} (IXI-HH BIDS folder) is absent")
    return IXI_HH


@pytest.fixture()
def git_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment in which `git commit` works without a global identity (fresh CI machines)."""
    values = {
        "GIT_AUTHOR_NAME": "neurotransfer tests",
        "GIT_AUTHOR_EMAIL": "tests@neurotransfer.invalid",
        "GIT_COMMITTER_NAME": "neurotransfer tests",
        "GIT_COMMITTER_EMAIL": "tests@neurotransfer.invalid",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first (LONGEST_FIRST); every file keeps its own test order."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
