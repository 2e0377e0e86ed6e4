"""Each simulated effect is present and in the right direction: ageing, AD, PD, sex.

Twins (the same subject index with another age or diagnosis: the same person) isolate one
effect; small cohorts check it holds across people, against their natural variation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from neurotransfer.cohort.anatomy import Anatomy
from neurotransfer.cohort.effects import draw_latents
from neurotransfer.cohort.generate import SubjectPlan, plan_cohort, subject_anatomy, subject_rng
from neurotransfer.config import CohortSettings, settings_from_dict


@pytest.fixture(scope="module")
def cohort(make_params: Callable[..., dict[str, Any]]) -> CohortSettings:
    return settings_from_dict(make_params({"pool": 60, "adni": 60, "ppmi": 60})).cohort


def _volumes(plan: SubjectPlan, cohort: CohortSettings, anatomy: Anatomy) -> dict[str, float]:
    return subject_anatomy(plan, cohort, anatomy, subject_rng(plan, cohort)).volumes


def _table(cohort: CohortSettings, anatomy: Anatomy, dataset: str) -> pd.DataFrame:
    rows = []
    for plan in plan_cohort(cohort):
        if plan.dataset == dataset:
            rows.append(
                {"age": plan.age, "diagnosis": plan.diagnosis, **_volumes(plan, cohort, anatomy)}
            )
    return pd.DataFrame(rows)


def _first(cohort: CohortSettings, dataset: str) -> SubjectPlan:
    return next(p for p in plan_cohort(cohort) if p.dataset == dataset)


def test_ageing_twin_has_bigger_ventricles_and_less_grey_matter(
    cohort: CohortSettings, anatomy: Anatomy
) -> None:
    plan = _first(cohort, "pool")
    young = _volumes(dataclasses.replace(plan, age=25.0), cohort, anatomy)
    old = _volumes(dataclasses.replace(plan, age=85.0), cohort, anatomy)
    assert old["ventricle_csf_ml"] > 1.4 * young["ventricle_csf_ml"]
    assert old["cortical_gm_ml"] < 0.88 * young["cortical_gm_ml"]
    assert old["medial_temporal_gm_ml"] < 0.95 * young["medial_temporal_gm_ml"]
    assert old["csf_ml"] > young["csf_ml"]
    # atrophy turns tissue into CSF inside the same skull
    assert old["icv_ml"] == pytest.approx(young["icv_ml"], rel=1e-6)


def test_ventricles_grow_and_grey_matter_shrinks_with_age_across_people(
    cohort: CohortSettings, anatomy: Anatomy
) -> None:
    pool = _table(cohort, anatomy, "pool")
    assert pool["age"].max() - pool["age"].min() > 40
    assert np.corrcoef(pool["age"], pool["ventricle_csf_ml"] / pool["icv_ml"])[0, 1] > 0.6
    assert np.corrcoef(pool["age"], pool["gm_ml"] / pool["icv_ml"])[0, 1] < -0.6


def test_ad_twin_loses_medial_temporal_grey_matter(
    cohort: CohortSettings, anatomy: Anatomy
) -> None:
    plan = dataclasses.replace(_first(cohort, "adni"), age=72.0)
    cn = _volumes(dataclasses.replace(plan, diagnosis="CN"), cohort, anatomy)
    ad = _volumes(dataclasses.replace(plan, diagnosis="AD"), cohort, anatomy)
    assert ad["medial_temporal_gm_ml"] < 0.88 * cn["medial_temporal_gm_ml"]
    assert ad["ventricle_csf_ml"] > 1.1 * cn["ventricle_csf_ml"]
    # the putamen is not an AD region (the growing ventricles only graze its edge)
    assert ad["putamen_gm_ml"] == pytest.approx(cn["putamen_gm_ml"], rel=0.02)


def test_ad_patients_have_less_medial_temporal_grey_matter_than_age_matched_controls(
    cohort: CohortSettings, anatomy: Anatomy
) -> None:
    adni = _table(cohort, anatomy, "adni")
    adni["mtl"] = adni["medial_temporal_gm_ml"] / adni["icv_ml"]
    cn, ad = adni[adni["diagnosis"] == "CN"], adni[adni["diagnosis"] == "AD"]
    assert len(cn) > 15 and len(ad) > 15
    # remove the age trend fitted on controls, then compare patients with controls
    slope, intercept = np.polyfit(cn["age"], cn["mtl"], 1)
    residual = adni["mtl"] - (slope * adni["age"] + intercept)
    is_ad = (adni["diagnosis"] == "AD").to_numpy()
    assert residual[is_ad].mean() < residual[~is_ad].mean()
    assert roc_auc_score(is_ad, -residual) > 0.85  # clearly visible, as in ADNI


def test_pd_is_a_subtle_subcortical_change(cohort: CohortSettings, anatomy: Anatomy) -> None:
    plan = dataclasses.replace(_first(cohort, "ppmi"), age=65.0)
    cn = _volumes(dataclasses.replace(plan, diagnosis="CN"), cohort, anatomy)
    pd_ = _volumes(dataclasses.replace(plan, diagnosis="PD"), cohort, anatomy)
    assert 0.85 < pd_["putamen_gm_ml"] / cn["putamen_gm_ml"] < 0.97
    assert 0.85 < pd_["midbrain_tissue_ml"] / cn["midbrain_tissue_ml"] < 0.97
    for untouched in ("medial_temporal_gm_ml", "cortical_gm_ml"):
        assert pd_[untouched] == pytest.approx(cn[untouched], rel=2e-3), untouched
    # the shrinking midbrain widens the CSF around it, the third ventricle included, slightly
    assert pd_["ventricle_csf_ml"] == pytest.approx(cn["ventricle_csf_ml"], rel=0.02)
    # a few per cent of the whole brain's grey matter at most: hard to see on T1
    assert pd_["gm_ml"] > 0.995 * cn["gm_ml"]

    ppmi = _table(cohort, anatomy, "ppmi")
    is_pd = (ppmi["diagnosis"] == "PD").to_numpy()
    putamen = ppmi["putamen_gm_ml"] / ppmi["icv_ml"]
    assert putamen[is_pd].mean() < putamen[~is_pd].mean()


def test_men_have_larger_heads_on_average(cohort: CohortSettings) -> None:
    scales: dict[str, list[float]] = {"M": [], "F": []}
    rng = np.random.default_rng(0)
    for sex in ("M", "F"):
        for _ in range(200):
            scales[sex].append(draw_latents(60.0, sex, "CN", 1.0, rng).head_scale)
    assert np.mean(scales["M"]) > np.mean(scales["F"]) + 0.025


def test_atrophy_scale_scales_disease_and_ageing(cohort: CohortSettings) -> None:
    plain = draw_latents(80.0, "F", "AD", 1.0, np.random.default_rng(5))
    doubled = draw_latents(80.0, "F", "AD", 2.0, np.random.default_rng(5))
    assert doubled.cortical_gm_loss == pytest.approx(2 * plain.cortical_gm_loss)
    assert doubled.medial_temporal_gm_loss > plain.medial_temporal_gm_loss
    assert doubled.ventricle_expansion_mm > plain.ventricle_expansion_mm
    assert doubled.head_scale == plain.head_scale
