"""Data-scaling curves: nested stratified subsets, settings checks, the stage's curve files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import Settings, SettingsError, settings_from_dict
from neurotransfer.stages.scaling import CURVE_COLUMNS
from neurotransfer.train.scaling import nested_subsets, subject_order
from tests.train.cached_cohort import SHAPE, cohort_settings, write_cohort

CONF = Path(__file__).resolve().parents[2] / "conf"


def train_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(n)],
            "site": rng.choice(["siteA", "siteB", "siteC"], n, p=[0.5, 0.3, 0.2]),
            "target": (rng.random(n) < 0.3).astype(float),
        }
    )


@pytest.mark.parametrize("kind", ["binary", "regression"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsets_are_nested_stratified_and_deterministic(kind: str, seed: int) -> None:
    frame = train_frame(60, seed)
    fractions = [0.1, 0.25, 0.5, 1.0]
    subsets = nested_subsets(frame, kind, fractions, seed)
    assert subsets == nested_subsets(frame, kind, fractions, seed)
    sizes = [len(subsets[f]) for f in fractions]
    assert sizes == [6, 15, 30, 60]
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small]) <= set(subsets[large])
    assert sorted(subsets[1.0]) == sorted(frame["subject_id"])
    # Every prefix keeps the site mix (and for binary tasks the class mix) within one subject
    # per stratum of the proportional share.
    half = frame.set_index("subject_id").loc[subsets[0.5]]
    for site, share in frame["site"].value_counts(normalize=True).items():
        assert abs((half["site"] == site).sum() - share * 30) <= 2
    if kind == "binary":
        assert abs(half["target"].sum() - frame["target"].mean() * 30) <= 2
        assert frame.set_index("subject_id").loc[subsets[0.1], "target"].nunique() == 2
    other_seed = subject_order(frame, kind, seed + 100)
    assert other_seed != subject_order(frame, kind, seed)


def test_small_binary_subset_grows_until_it_has_both_classes() -> None:
    frame = pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(20)],
            "site": "siteA",
            "target": [1.0] + [0.0] * 19,
        }
    )
    subsets = nested_subsets(frame, "binary", [0.05, 1.0], seed=0)
    labels = frame.set_index("subject_id").loc[subsets[0.05], "target"]
    assert labels.nunique() == 2 and len(labels) >= 2


def composed(**scaling: object) -> dict:
    raw = yaml.safe_load(compose_params([], CONF))
    raw["scaling"].update(scaling)
    return raw


@pytest.mark.parametrize(
    ("fractions", "needle"),
    [
        ([0.5, 0.2], "strictly increasing"),
        ([0.0, 1.0], "scaling.fractions.0"),
        ([0.5, 1.5], "scaling.fractions.1"),
        ([], "scaling.fractions"),
    ],
)
def test_bad_fractions_are_rejected_naming_the_key(fractions: list[float], needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from_dict(composed(fractions=fractions), source="params.yaml")
    assert "scaling.fractions" in str(err.value)
    assert needle in str(err.value)


def test_unknown_scaling_task_and_duplicate_seeds_are_rejected() -> None:
    with pytest.raises(SettingsError, match=r"scaling\.tasks names task"):
        settings_from_dict(composed(tasks=["nope"]))
    with pytest.raises(SettingsError, match=r"scaling\.seeds"):
        settings_from_dict(composed(seeds=[0, 0]))


def test_profiles_size_scaling() -> None:
    cpu = settings_from_dict(yaml.safe_load(compose_params(["profile=cpu"], CONF)))
    gpu = settings_from_dict(yaml.safe_load(compose_params(["profile=gpu"], CONF)))
    assert cpu.scaling.tasks == ["brain_age"] and len(cpu.scaling.seeds) == 1
    assert gpu.scaling.tasks == [] and len(gpu.scaling.seeds) == 3
    assert len(gpu.scaling.fractions) > len(cpu.scaling.fractions)


# ---------------------------------------------------------------------------------------------
# the stage on a small cached cohort whose volumes carry the label
# ---------------------------------------------------------------------------------------------
def tiny_settings(fractions: list[float], seeds: list[int], max_epochs: int = 6) -> Settings:
    return cohort_settings(
        finetune={"max_epochs": max_epochs},
        evaluate={"bootstrap_samples": 200},
        scaling={"tasks": ["ad"], "fractions": fractions, "seeds": seeds, "max_epochs": max_epochs},
    )


@pytest.mark.slow
def test_stage_writes_curves_and_more_data_does_not_hurt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurotransfer.models import build_backbone, save_backbone
    from neurotransfer.stages import scaling

    write_cohort(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = tiny_settings([0.0625, 1.0], [0, 1])
    # Fine-tuning always starts from the pretrain stage's output (scratch here).
    backbone = build_backbone(settings.model.name, SHAPE, **settings.model.options)
    save_backbone(backbone, tmp_path / settings.pretrain.out_dir, {"source": "scratch"})
    scaling.run(settings, SimpleNamespace(task=None))

    curve = pd.read_csv(tmp_path / "reports/scaling/ad.csv")
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert len(curve) == 2 * 2 * 2  # fractions x seeds x splits
    assert set(curve["split"]) == {"test", "ood_test"}
    assert set(curve["metric"]) == {"auc"}
    assert sorted(set(curve["n_train"])) == [4, 64]
    assert (curve["ci_low"] <= curve["value"]).all() and (curve["value"] <= curve["ci_high"]).all()
    assert (tmp_path / "reports/scaling/ad.png").stat().st_size > 1000

    mean = curve.groupby(["split", "fraction"])["value"].mean()
    for split in ("test", "ood_test"):
        assert mean[(split, 1.0)] >= mean[(split, 0.0625)] - 0.02, mean
        assert mean[(split, 1.0)] > 0.75, mean

    summary = json.loads((tmp_path / "metrics/scaling.json").read_text())
    assert summary["enabled"] is True
    assert summary["ad"]["frac100"]["n_train"] == 64
    assert summary["ad"]["frac006"]["test"]["n_seeds"] == 2


def test_disabled_stage_writes_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neurotransfer.stages import scaling

    monkeypatch.chdir(tmp_path)
    raw = composed(enabled=False)
    scaling.run(settings_from_dict(raw), SimpleNamespace(task=None))
    assert json.loads((tmp_path / "metrics/scaling.json").read_text()) == {"enabled": False}
    assert (tmp_path / "reports/scaling/README.md").is_file()
