"""Subject-level, stratified, deterministic splits and the pool/test disjointness check.

A subject is a ``subject_id``: all its scans (sessions, datasets) get one split. Downstream
subjects at sites or in datasets named in ``ood_sites``/``ood_datasets`` become ``ood_test``.
The rest are ordered by stratum (dataset, site, diagnosis, sex), shuffled within strata by the
seed, and dealt out one by one to the split furthest below its target fraction: every stratum,
however small, is spread over train/val/test in proportion, and the result depends only on the
seed and the subjects.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from neurotransfer.config import SplitSettings

log = logging.getLogger(__name__)
ID_SPLITS = ("train", "val", "test")
TEST_SPLITS = ("test", "ood_test")


class SplitError(ValueError):
    """Splits that would leak subjects between the pool and a test set."""


def assign_splits(scans: pd.DataFrame, settings: SplitSettings) -> pd.Series:
    """The split of every scan (same index as `scans`)."""
    split = pd.Series("", index=scans.index, dtype=object)
    excluded = scans["exclusion_reason"].fillna("").astype(str) != ""
    split[excluded] = "excluded"
    split[~excluded & (scans["role"] == "pool")] = "pool"

    downstream = scans[~excluded & (scans["role"] == "downstream")]
    ood = downstream["site"].isin(settings.ood_sites) | downstream["dataset"].isin(
        settings.ood_datasets
    )
    ood_subjects = set(downstream.loc[ood, "subject_id"])
    pool_subjects = set(scans.loc[split == "pool", "subject_id"])

    subjects = (
        downstream[~downstream["subject_id"].isin(ood_subjects)]
        .groupby("subject_id", sort=True)
        .first()
    )
    # Subjects already in the pool may be fine-tuned on but never tested on.
    shared = subjects.index.isin(pool_subjects)
    if shared.any():
        log.info("%d downstream subject(s) are also in the pool: put in train", shared.sum())
    assignment = {sid: "train" for sid in subjects.index[shared]}
    assignment.update(_stratified(subjects[~shared], settings))
    assignment.update({sid: "ood_test" for sid in ood_subjects})

    rows = downstream.index
    split[rows] = downstream["subject_id"].map(assignment)
    check_pool_disjoint(scans.assign(split=split))
    return split


def _stratified(subjects: pd.DataFrame, settings: SplitSettings) -> dict[str, str]:
    if subjects.empty:
        return {}
    rng = np.random.default_rng(settings.seed)
    keys = subjects[["dataset", "site", "diagnosis", "sex"]]
    strata = keys.apply(lambda column: column.fillna("").astype(str)).agg("|".join, axis=1)
    order = pd.DataFrame({"stratum": strata, "draw": rng.random(len(subjects))})
    order = order.sort_values(["stratum", "draw"], kind="stable")
    targets = np.array([settings.train, settings.val, settings.test])
    counts = np.zeros(3)
    assignment: dict[str, str] = {}
    for subject_id in order.index:
        deficit = targets * (counts.sum() + 1) - counts
        chosen = int(np.argmax(deficit))  # ties go to the earlier split (train, then val)
        counts[chosen] += 1
        assignment[str(subject_id)] = ID_SPLITS[chosen]
    return assignment


def check_pool_disjoint(manifest: pd.DataFrame) -> None:
    """Fail, naming them, if any pool subject is in a downstream test or ood_test split."""
    pool = set(manifest.loc[manifest["split"] == "pool", "subject_id"])
    tested = manifest[manifest["split"].isin(TEST_SPLITS) & manifest["subject_id"].isin(pool)]
    if not tested.empty:
        names = sorted(set(tested["subject_id"]))
        raise SplitError(
            f"{len(names)} subject(s) of the upstream pool are in a downstream test split "
            f"(pool and test sets must be disjoint): {names[:20]}"
            + (" ..." if len(names) > 20 else "")
            + ". Remove them from the pool dataset, or stop holding out their site/dataset."
        )
