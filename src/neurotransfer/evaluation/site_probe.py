"""How much acquisition-site information a backbone's features carry, and the OpenBHB score.

The probe follows the OpenBHB challenge (Dufumier et al. 2022, NeuroImage 263:119637; scoring
code in github.com/ramp-kits/brain_age_with_site_removal, ``problem.py``, ``SiteEstimator``): an
L2 logistic regression predicts the site from the features, its inverse penalty C is searched
over 10^-2 ... 10^2 and it is scored by balanced accuracy, whose chance level is 1 / n_sites
whatever the site sizes. OpenBHB fits the probe on its training set and scores it on an internal
test set; here the features of all scored subjects are cross-validated with stratified folds,
and the best C's mean fold balanced accuracy is reported (as ``GridSearchCV.best_score_``). The
maximum over five values of C is slightly optimistic, which errs on the side of reporting more
site information, not less. Features are standardised inside each fold.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

PROBE_C_GRID = 10.0 ** np.arange(-2, 3)
PROBE_MAX_ITER = 1000
# A site needs a sample on each side of a train/test split to be probed at all.
MIN_SAMPLES_PER_SITE = 2


def _checked_inputs(
    features: npt.ArrayLike, sites: npt.ArrayLike, folds: int
) -> tuple[np.ndarray, pd.Series]:
    """Features as a float matrix and sites as text, or ValueError naming what is wrong."""
    matrix = np.asarray(features, dtype=np.float64)
    labels = pd.Series(np.asarray(sites))
    if labels.isna().any():
        raise ValueError(f"sites has {int(labels.isna().sum())} missing label(s)")
    labels = labels.astype(str)
    if matrix.ndim != 2:
        raise ValueError(f"features must be a [subjects, features] matrix, got {matrix.shape}")
    if len(labels) != len(matrix):
        raise ValueError(f"{len(labels)} site labels for {len(matrix)} feature rows")
    if not np.isfinite(matrix).all():
        raise ValueError("features have non-finite values (NaN or inf)")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    return matrix, labels


def _without_small_sites(
    matrix: np.ndarray, labels: pd.Series
) -> tuple[np.ndarray, np.ndarray, pd.Series, dict[str, int]]:
    """The samples of sites with at least `MIN_SAMPLES_PER_SITE`, those sites' sizes, and the
    sizes of the sites dropped (logged)."""
    site_sizes = labels.value_counts()
    too_small = site_sizes[site_sizes < MIN_SAMPLES_PER_SITE]
    dropped = {str(site): int(size) for site, size in too_small.items()}
    if dropped:
        log.warning(
            "site probe: dropping site(s) with < %d samples: %s", MIN_SAMPLES_PER_SITE, dropped
        )
    keep = ~labels.isin(too_small.index).to_numpy()
    kept_sizes = site_sizes[site_sizes >= MIN_SAMPLES_PER_SITE]
    return matrix[keep], labels[keep].to_numpy(), kept_sizes, dropped


def _best_probe(
    matrix: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> tuple[float, float]:
    """The best C's mean fold balanced accuracy, and that C (standardised inside each fold)."""
    probe = Pipeline(
        [
            ("standardise", StandardScaler()),
            ("model", LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)),
        ]
    )
    search = GridSearchCV(
        probe,
        {"model__C": PROBE_C_GRID},
        scoring="balanced_accuracy",
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        refit=False,
    )
    search.fit(matrix, labels)
    return float(search.best_score_), float(search.best_params_["model__C"])


def site_probe(
    features: npt.ArrayLike, sites: npt.ArrayLike, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Cross-validated balanced accuracy of a logistic-regression probe predicting site.

    Sites with fewer than `MIN_SAMPLES_PER_SITE` samples are dropped and listed under
    ``dropped_sites``; if the smallest remaining site has fewer samples than `folds`, the fold
    count is reduced to it so every site appears in every test fold (``folds`` reports the count
    used). With fewer than two sites there is nothing to tell apart: balanced_accuracy is NaN.

    Returns balanced_accuracy, chance_level (1 / n_sites), n_sites, n, folds, C, dropped_sites
    and note.
    """
    matrix, all_labels = _checked_inputs(features, sites, folds)
    matrix, labels, kept_sizes, dropped = _without_small_sites(matrix, all_labels)
    n_sites = int(kept_sizes.size)
    result: dict[str, Any] = {
        "balanced_accuracy": float("nan"),
        "chance_level": 1.0 / n_sites if n_sites else float("nan"),
        "n_sites": n_sites,
        "n": len(labels),
        "folds": None,
        "C": None,
        "dropped_sites": dropped,
        "note": None,
    }
    if n_sites < 2:
        result["note"] = (
            f"{n_sites} site(s) with >= {MIN_SAMPLES_PER_SITE} samples: nothing to probe"
        )
        log.warning("site probe: %s", result["note"])
        return result

    used_folds = min(folds, int(kept_sizes.min()))
    if used_folds < folds:
        result["note"] = (
            f"folds reduced from {folds} to {used_folds}: "
            f"the smallest site has {used_folds} samples"
        )
        log.info("site probe: %s", result["note"])
    balanced_accuracy, best_c = _best_probe(matrix, labels, used_folds, seed)
    result.update(balanced_accuracy=balanced_accuracy, folds=used_folds, C=best_c)
    return result


def openbhb_score(mae: float, site_balanced_accuracy: float, n_sites: int) -> float:
    """The OpenBHB challenge's combined score, ``BAcc_site ** 0.3 * MAE``; lower is better.

    Dufumier et al. (2022, NeuroImage 263:119637) rank representations by
    ``L_c = BAcc^0.3 * MAE_ext``: the brain-age MAE on external (unseen-site) subjects, weighted
    by how well a linear probe recovers the site from the same representation. The same
    formula is what Barbano, Dufumier et al. (ISBI 2023) compute as the "challenge score"
    (github.com/EIDOSLAB/contrastive-brain-age-prediction, ``src/main_mse.py``:
    ``ba_int**0.3 * mae_ext``). The RAMP kit's ``problem.py`` (``DeepDebiasingMetric``) combines
    them differently, as ``MAE_ext * BAcc + MAE_int / n_sites``; we follow the paper.

    Pass the bias-corrected MAE on ``ood_test`` where there is one. `n_sites` is the number of
    sites the probe told apart: with fewer than two, balanced accuracy means nothing and the
    score is NaN, as it is when either input is NaN.
    """
    if n_sites < 2 or math.isnan(mae) or math.isnan(site_balanced_accuracy):
        return float("nan")
    if mae < 0:
        raise ValueError(f"MAE must be non-negative, got {mae}")
    if not 0.0 <= site_balanced_accuracy <= 1.0:
        raise ValueError(f"site balanced accuracy must lie in [0, 1], got {site_balanced_accuracy}")
    return float(site_balanced_accuracy**0.3 * mae)
