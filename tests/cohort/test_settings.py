"""Bad cohort settings fail at load time with a message naming the key and the problem."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest

from neurotransfer.config import SettingsError, settings_from_dict
from neurotransfer.stages import cohort as cohort_stage


def _with(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("datasets", "adni", "n_subjects"), -5, r"cohort\.datasets\.adni\.n_subjects"),
        (("datasets", "adni", "n_subjects"), 0, r"cohort\.datasets\.adni\.n_subjects"),
        (
            ("datasets", "pool", "n_subjects"),
            2,
            r"pool\.n_subjects \(2\) is fewer than its 3 sites",
        ),
        (("datasets", "ppmi", "sites"), ["siteB", "siteZ"], r"unknown site\(s\) \['siteZ'\]"),
        (("datasets", "ppmi", "sites"), [], r"cohort\.datasets\.ppmi\.sites"),
        (("datasets", "pool", "disease"), "AD", "healthy subjects only"),
        (("datasets", "adni", "age_range"), [80.0, 60.0], r"age_range .* low < high"),
        (("sites", "siteA", "voxel_size"), [2.0, 2.0], r"cohort\.sites\.siteA\.voxel_size"),
        (
            ("sites", "siteA", "voxel_size"),
            [2.0, 2.0, 20.0],
            r"cohort\.sites\.siteA\.voxel_size\.2",
        ),
        (("sites", "siteA", "voxel_size"), [0.0, 2.0, 2.0], r"cohort\.sites\.siteA\.voxel_size\.0"),
        (("sites", "siteA", "voxel_size"), [0.1, 2.0, 2.0], r"cohort\.sites\.siteA\.voxel_size\.0"),
        (("sites", "siteC", "orientation"), "RAX", r"cohort\.sites\.siteC\.orientation.*RAX"),
        (("sites", "siteC", "orientation"), "RRS", r"cohort\.sites\.siteC\.orientation"),
        (("sites", "siteC", "dtype"), "int64", r"cohort\.sites\.siteC\.dtype"),
        (("sites", "siteA", "intensity_scale"), 1.0e6, r"siteA.*overflow int16"),
        (("sites", "siteB", "gm_wm_contrast"), 3.0, r"cohort\.sites\.siteB\.gm_wm_contrast"),
        (("sites", "siteB", "patient_fraction"), 1.5, r"cohort\.sites\.siteB\.patient_fraction"),
        (("sites", "siteB", "noise_std"), -0.1, r"cohort\.sites\.siteB\.noise_std"),
        (("sites", "siteB", "colour"), "red", r"cohort\.sites\.siteB\.colour: unknown key"),
        (("workers",), 0, r"cohort\.workers"),
        (("seed",), -1, r"cohort\.seed"),
    ],
)
def test_bad_setting_fails_naming_the_key(
    make_params: Callable[..., dict[str, Any]], path: tuple[str, ...], value: Any, message: str
) -> None:
    raw = _with(make_params(), ("cohort", *path), value)
    with pytest.raises(SettingsError, match=message) as excinfo:
        settings_from_dict(raw, source="params.yaml")
    assert "params.yaml" in str(excinfo.value)


@pytest.mark.parametrize("bad_name", ["ad-ni", "adni_2", "ädni"])
def test_dataset_names_must_be_bids_labels(
    make_params: Callable[..., dict[str, Any]], bad_name: str
) -> None:
    raw = make_params()
    raw["cohort"]["datasets"][bad_name] = raw["cohort"]["datasets"].pop("adni")
    with pytest.raises(SettingsError, match="letters and digits"):
        settings_from_dict(raw)


def test_stage_without_a_cohort_block_explains(make_params: Callable[..., dict]) -> None:
    raw = make_params()
    raw.pop("cohort")
    with pytest.raises(SettingsError, match="no 'cohort' block"):
        cohort_stage.run(settings_from_dict(raw), argparse.Namespace())
