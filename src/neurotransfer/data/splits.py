"""Subject-level, stratified, deterministic splits and the pool/test disjointness check.

A subject is a ``subject_id``: all its scans (sessions, datasets) get one split. Downstream
subjects at sites or in datasets named in ``ood_sites``/``ood_datasets`` become ``ood_test``.
The rest are ordered by stratum (dataset, site, diagnosis, sex), shuffled within strata by the
seed, and dealt out one by one to the split furthest below its target fraction: every stratum,
however small, is spread over train/val/test in proportion, and the result depends only on the
seed and the subjects.

With ``data.splits.mode: kfold`` the same dealing spreads them over ``k`` equal folds instead:
their ``split`` is ``cv`` and the manifest's ``fold`` column says which fold (:func:`assign_folds`);
:func:`fold_split` turns that into fold f's train/val/test (test fold f, validation fold f + 1
mod k, training the rest). Subjects also in the pool stay ``train`` in every fold.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from neurotransfer.config import SplitSettings

log = logging.getLogger(__name__)
ID_SPLITS = ("train", "val", "test")
TEST_SPLITS = ("test", "ood_test")
# Split of a cross-validated subject in the manifest: tested in one fold, trained on in others.
CV_SPLIT = "cv"


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
    if settings.mode == "kfold":
        assignment.update({sid: CV_SPLIT for sid in subjects.index[~shared]})
    else:
        targets = [settings.train, settings.val, settings.test]
        assignment.update(_stratified(subjects[~shared], targets, ID_SPLITS, settings.seed))
    assignment.update({sid: "ood_test" for sid in ood_subjects})

    rows = downstream.index
    split[rows] = downstream["subject_id"].map(assignment)
    check_pool_disjoint(scans.assign(split=split))
    return split


def assign_folds(scans: pd.DataFrame, settings: SplitSettings) -> pd.Series:
    """The cross-validation fold (0 .. k-1) of every ``cv`` scan, NaN for every other scan.

    `scans` carries :func:`assign_splits`' ``split``. All scans of a subject share its fold.
    """
    fold = pd.Series(np.nan, index=scans.index, dtype=float)
    cv = scans[scans["split"] == CV_SPLIT]
    if cv.empty:
        return fold
    subjects = cv.groupby("subject_id", sort=True).first()
    if len(subjects) < settings.k:
        raise SplitError(
            f"data.splits.k is {settings.k} but only {len(subjects)} subject(s) are outside the "
            "held-out sites and the pool: every fold needs subjects; lower data.splits.k"
        )
    labels = tuple(range(settings.k))
    dealt = _stratified(subjects, [1.0 / settings.k] * settings.k, labels, settings.seed)
    fold[cv.index] = cv["subject_id"].map(dealt).astype(float)
    return fold


def fold_split(split: pd.Series, fold: pd.Series, k: int, test_fold: int) -> pd.Series:
    """Fold `test_fold`'s split of each row: ``cv`` rows become ``test`` (their fold is
    `test_fold`), ``val`` (the next fold, mod `k`) or ``train``; other splits are kept."""
    if not 0 <= test_fold < k:
        raise ValueError(f"fold {test_fold} out of range for k = {k} folds")
    out = split.copy()
    cv = split == CV_SPLIT
    if fold[cv].isna().any():
        raise ValueError("some cross-validated rows have no fold: re-run the preprocess stage")
    val_fold = (test_fold + 1) % k
    out[cv] = "train"
    out[cv & (fold == test_fold)] = "test"
    out[cv & (fold == val_fold)] = "val"
    return out


def _stratified(
    subjects: pd.DataFrame, targets: list[float], labels: tuple, seed: int
) -> dict[str, object]:
    """Deal `subjects` (indexed by id) to `labels` in proportion to `targets`, stratum by stratum
    (dataset, site, diagnosis, sex), shuffled within strata by `seed`."""
    if subjects.empty:
        return {}
    rng = np.random.default_rng(seed)
    keys = subjects[["dataset", "site", "diagnosis", "sex"]]
    strata = keys.apply(lambda column: column.fillna("").astype(str)).agg("|".join, axis=1)
    order = pd.DataFrame({"stratum": strata, "draw": rng.random(len(subjects))})
    order = order.sort_values(["stratum", "draw"], kind="stable")
    target = np.asarray(targets, dtype=float)
    counts = np.zeros(len(target))
    assignment: dict[str, object] = {}
    for subject_id in order.index:
        deficit = target * (counts.sum() + 1) - counts
        chosen = int(np.argmax(deficit))  # ties go to the earlier label (train, then val)
        counts[chosen] += 1
        assignment[str(subject_id)] = labels[chosen]
    return assignment


def check_pool_disjoint(manifest: pd.DataFrame) -> None:
    """Fail, naming them, if any pool subject is in a downstream test or ood_test split."""
    pool = set(manifest.loc[manifest["split"] == "pool", "subject_id"])
    # A cross-validated subject is tested in one fold.
    tested_splits = (*TEST_SPLITS, CV_SPLIT)
    tested = manifest[manifest["split"].isin(tested_splits) & manifest["subject_id"].isin(pool)]
    if not tested.empty:
        names = sorted(set(tested["subject_id"]))
        raise SplitError(
            f"{len(names)} subject(s) of the upstream pool are in a downstream test split "
            f"(pool and test sets must be disjoint): {names[:20]}"
            + (" ..." if len(names) > 20 else "")
            + ". Remove them from the pool dataset, or stop holding out their site/dataset."
        )


def holdout_mask(subject_ids: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out scans: whole subjects, chosen deterministically from ``seed``.

    Splits the upstream pool for the generative model's quality metrics and the pre-training
    age probe. At least two subjects are held out (the quality metrics compare pairs) and at
    least two remain for training.
    """
    subjects = np.array(sorted(subject_ids.unique()))
    n_holdout = max(2, round(fraction * len(subjects)))
    if len(subjects) - n_holdout < 2:
        raise ValueError(
            f"the pool has {len(subjects)} usable subject(s): too few to hold out {n_holdout} "
            "and train on at least 2"
        )
    rng = np.random.default_rng(seed)
    held_out = set(rng.permutation(subjects)[:n_holdout])
    return subject_ids.isin(held_out).to_numpy()
