"""One decision rule for "does B beat A?" that accounts for fine-tuning seeds and test subjects.

A comparison of two initialisations has two sources of noise: which test subjects were drawn
(subject sampling) and which fine-tuning seed each model was trained with (training noise). A
subject-level bootstrap of one model per side models the first only, so two runs of the *same*
configuration with different seeds come out "significantly" different (Bouthillier et al. 2021,
"Accounting for variance in machine learning benchmarks", MLSys). The rule here models both:

1. Every metric becomes a per-subject quantity ``P[s, i]`` (seed ``s``, subject ``i``) by
   jackknife pseudo-values (Quenouille 1956; Tukey 1958): ``P_i = N * M - (N - 1) * M_(-i)``.
   For a mean over subjects (MAE, Brier, accuracy) that is the subject's own term; for the AUC
   it has a closed form in DeLong et al.'s (1988) placement values, and the pseudo-values
   average exactly to the AUC. Their sample variance / N is about DeLong's variance, which is
   biased upward at small n (it makes an AUC test at n = 20 conservative, ~1.5% false positives
   at alpha 5%), so for the AUC the subject term is replaced by its unbiased version
   (`auc_subject_variance`: DeLong minus the kernel's interaction mean square / (m n)).
2. Each arm is a two-way (seed x subject) random-effects layout, subjects paired across arms,
   estimated by the method of moments (Searle, Casella & McCulloch 1992, ch. 4):
   ``D_i = mean_s P_B[s, i] - mean_s P_A[s, i]``, ``delta = mean_i D_i`` and
   ``Var(delta) = S_D^2 / n + sigma_seed^2 (1 / s_A + 1 / s_B)``, where ``S_D^2`` (the sample
   variance of ``D_i``) carries the subject and seed-by-subject terms, and the seed-shift
   variance ``sigma_seed^2 = max(0, (MS_seed - MS_residual) / n)`` is pooled over the arms
   (``MS_seed = n * var_s(mean_i P[s, i])``, ``MS_residual`` the seed-by-subject interaction
   mean square). A deterministic arm (a ridge baseline) has no seed term.
3. Satterthwaite's (1946) degrees of freedom for that linear combination of mean squares give a
   t interval and the two-sided t p-value from the same ``(delta, se, df)``: the interval
   excludes 0 exactly when ``p < 1 - level``.

``benchmarks/decision_calibration.py`` (results in ``benchmarks/results/
decision_calibration.json``) simulates A/A comparisons with subject + seed + subject-by-seed
noise, skewed absolute errors and AUC, n = 20 and 100, 3 and 5 seeds per arm: the false-positive
rate at alpha 5% lies between 2.3% and 5.5% in every cell. It is nearest 5% when seed noise
matters and conservative (2.3-3%) when the seeds barely differ, the price of estimating the seed
variance from a handful of seeds (its positive part is kept). The tests assert the band.

When the data carry no variation at all (every seed of both arms perfect, or every seed ranking
the subjects identically), the estimated variance is 0 and the t rule would print a certain,
zero-width interval; `compare_arms` reports such a difference as undetermined instead (see
there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from neurotransfer.evaluation.metrics import (
    THRESHOLDED_METRICS,
    check_binary,
    check_kind,
    check_regression,
)
from neurotransfer.evaluation.paired import HIGHER_IS_BETTER, delong_components

__all__ = [
    "ADJUST_METHODS",
    "CONSTANT_SHIFT_NOTE",
    "HIGHER_IS_BETTER",
    "NO_VARIATION_NOTE",
    "PRIMARY_METRIC",
    "PSEUDO_VALUE_METRICS",
    "SEEDS_KEY",
    "ArmDifference",
    "SeedSubjectEstimate",
    "adjust_pvalues",
    "auc_subject_variance",
    "calls_at_thresholds",
    "compare_arms",
    "difference_moments",
    "metric_difference",
    "pseudo_values",
    "seed_subject_estimate",
]

# The one pre-declared metric per task kind on which `compare` decides. Raw MAE, not the
# bias-corrected one: the correction is fitted per model and would add its own noise.
PRIMARY_METRIC: dict[str, str] = {"binary": "auc", "regression": "mae"}
PSEUDO_VALUE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": (
        "auc",
        "balanced_accuracy",
        "brier",
        "accuracy",
        "sensitivity",
        "specificity",
        "f1",
    ),
    "regression": ("mae", "rmse", "mean_error", "r", "r2"),
}
ADJUST_METHODS: tuple[str, ...] = ("holm", "bh")
SEEDS_KEY = "finetune.seeds"
THRESHOLD = 0.5  # binary_metrics' default: a subject is called positive at score >= 0.5
# An estimated standard error at or below this fraction of the pseudo-values' magnitude is the
# floating-point rounding of identical values (seeds that rank every subject alike give AUC
# pseudo-values equal up to ~1e-16), not noise measured in the data: no interval is given.
ZERO_SE_RTOL = 1e-9
NO_VARIATION_NOTE = (
    "no variation across seeds or subjects (e.g. both arms perfect): interval undefined"
)
CONSTANT_SHIFT_NOTE = (
    "the difference is the same for every subject and no seed variance is estimated (no "
    "variation to measure it against): interval and p-value undefined"
)


def calls_at_thresholds(
    kind: str, metric: str, predictions: npt.ArrayLike, thresholds: Sequence[float]
) -> np.ndarray:
    """``(n_seeds, n)`` inputs whose pseudo-values give `metric` with each seed's own cut.

    For a thresholded binary metric (`metrics.THRESHOLDED_METRICS`) every seed's predictions
    become its calls as 0/1 at its threshold (``thresholds[s]``, e.g. chosen on validation),
    which `pseudo_values` keeps as they are (it calls at 0.5); any other metric gets the
    predictions unchanged. The rule of `seeds._seed_inputs`, for arms held as matrices.
    """
    values = np.atleast_2d(np.asarray(predictions, dtype=np.float64))
    if kind != "binary" or metric not in THRESHOLDED_METRICS:
        return values
    cuts = np.asarray(thresholds, dtype=np.float64)
    if cuts.shape != (values.shape[0],):
        raise ValueError(
            f"one threshold per seed is needed: {values.shape[0]} seed(s), thresholds of shape "
            f"{cuts.shape}"
        )
    return (values >= cuts[:, None]).astype(float)


def _jackknife(full: np.ndarray, left_out: np.ndarray) -> np.ndarray:
    """Pseudo-values ``N * M - (N - 1) * M_(-i)`` from the metric and its leave-one-out values."""
    n = left_out.shape[-1]
    return n * full[..., None] - (n - 1) * left_out


def _need_two_per_class(positive: np.ndarray, metric: str) -> tuple[int, int]:
    m, n_neg = int(positive.sum()), int((~positive).sum())
    if m < 2 or n_neg < 2:
        raise ValueError(
            f"{metric} pseudo-values need at least 2 subjects of each class (leaving one out "
            f"must keep the metric defined); got {m} positive and {n_neg} negative"
        )
    return m, n_neg


def _auc_pseudo(target: np.ndarray, scores: np.ndarray) -> np.ndarray:
    positive = target == 1.0
    m, n_neg = _need_two_per_class(positive, "auc")
    flat = scores.reshape(-1, target.size)
    aucs, v10, v01 = delong_components(target, flat)
    # Leaving out positive i: (m * AUC - V10_i) / (m - 1); negative j: (n * AUC - V01_j) / (n - 1).
    left_out = np.empty_like(flat)
    left_out[:, positive] = (m * aucs[:, None] - v10) / (m - 1)
    left_out[:, ~positive] = (n_neg * aucs[:, None] - v01) / (n_neg - 1)
    return _jackknife(aucs, left_out).reshape(scores.shape)


def _rate_pseudo(
    metric: str, target: np.ndarray, scores: np.ndarray
) -> np.ndarray:  # sensitivity, specificity, balanced accuracy, f1
    positive = target == 1.0
    m, n_neg = _need_two_per_class(positive, metric)
    called = scores >= THRESHOLD
    tp = (called & positive).astype(float)
    fp = (called & ~positive).astype(float)
    fn = (~called & positive).astype(float)
    tn = (~called & ~positive).astype(float)
    totals = {k: v.sum(axis=-1) for k, v in {"tp": tp, "fp": fp, "fn": fn, "tn": tn}.items()}
    # Each count without subject i; the class sizes without i.
    loo = {k: totals[k][..., None] - v for k, v in {"tp": tp, "fp": fp, "fn": fn, "tn": tn}.items()}
    m_loo = np.where(positive, m - 1, m).astype(float)
    n_loo = np.where(positive, n_neg, n_neg - 1).astype(float)
    if metric == "f1":
        with np.errstate(invalid="ignore", divide="ignore"):
            full = 2 * totals["tp"] / (2 * totals["tp"] + totals["fp"] + totals["fn"])
            left_out = 2 * loo["tp"] / (2 * loo["tp"] + loo["fp"] + loo["fn"])
        return _jackknife(full, left_out)
    sensitivity, specificity = totals["tp"] / m, totals["tn"] / n_neg
    sens_loo, spec_loo = loo["tp"] / m_loo, loo["tn"] / n_loo
    if metric == "sensitivity":
        return _jackknife(sensitivity, sens_loo)
    if metric == "specificity":
        return _jackknife(specificity, spec_loo)
    return _jackknife((sensitivity + specificity) / 2, (sens_loo + spec_loo) / 2)


def _correlation_pseudo(metric: str, target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Pearson r or R^2 with every subject left out in turn, from leave-one-out sums."""
    n = target.size
    if n < 4:
        raise ValueError(f"{metric} pseudo-values need at least 4 subjects, got {n}")
    y = np.broadcast_to(target, prediction.shape)

    def moments(total: bool) -> tuple[np.ndarray, ...]:
        sums = [y.sum(-1), prediction.sum(-1), (y * y).sum(-1)]
        sums += [(prediction * prediction).sum(-1), (y * prediction).sum(-1)]
        terms = [y, prediction, y * y, prediction * prediction, y * prediction]
        if total:
            return tuple(sums)
        return tuple(s[..., None] - t for s, t in zip(sums, terms, strict=True))

    def statistic(
        count: float,
        sy: np.ndarray,
        sp: np.ndarray,
        syy: np.ndarray,
        spp: np.ndarray,
        syp: np.ndarray,
    ) -> np.ndarray:
        var_y = syy - sy * sy / count
        with np.errstate(invalid="ignore", divide="ignore"):
            if metric == "r":
                var_p = spp - sp * sp / count
                return (syp - sy * sp / count) / np.sqrt(var_y * var_p)
            sse = spp - 2 * syp + syy  # sum of (prediction - target)^2
            return 1.0 - sse / var_y

    full = statistic(float(n), *moments(True))
    left_out = statistic(float(n - 1), *moments(False))
    return _jackknife(full, left_out)


def pseudo_values(
    kind: str, metric: str, target: npt.ArrayLike, predictions: npt.ArrayLike
) -> np.ndarray:
    """Per-subject jackknife pseudo-values of `metric`, shaped like `predictions`.

    `predictions` is ``(n,)`` or ``(..., n)`` (e.g. one row per seed) on the subjects of
    `target` ``(n,)``. For metrics that are means over subjects (``mae``, ``brier``,
    ``accuracy``, ``mean_error``) the pseudo-value is the subject's own term; for ``auc`` the
    closed form from DeLong's placement values; both average exactly to the metric. For ratios
    (``rmse``, ``r``, ``r2``, ``balanced_accuracy``, ``f1``, ...) they average to the jackknife
    bias-corrected metric. Vectorised over leading axes.
    """
    check_kind(kind)
    if metric not in PSEUDO_VALUE_METRICS[kind]:
        raise ValueError(
            f"no pseudo-values for {kind} metric {metric!r}; expected one of "
            f"{list(PSEUDO_VALUE_METRICS[kind])}"
        )
    values = np.asarray(predictions, dtype=np.float64)
    if values.ndim == 0:
        raise ValueError("predictions must have a subject axis, got a scalar")
    rows = values.reshape(-1, values.shape[-1])
    check = check_binary if kind == "binary" else check_regression
    truth = check(target, rows[0])[0]
    for row in rows[1:]:
        check(truth, row)
    if kind == "binary":
        if metric == "auc":
            return _auc_pseudo(truth, values)
        if metric == "brier":
            return (values - truth) ** 2
        if metric == "accuracy":
            return ((values >= THRESHOLD) == (truth == 1.0)).astype(float)
        return _rate_pseudo(metric, truth, values)
    error = values - truth
    if metric == "mae":
        return np.abs(error)
    if metric == "mean_error":
        return error
    if metric == "rmse":
        n = truth.size
        if n < 2:
            raise ValueError("rmse pseudo-values need at least 2 subjects")
        squared = error * error
        total = squared.sum(axis=-1)
        left_out = np.sqrt(np.maximum(total[..., None] - squared, 0.0) / (n - 1))
        return _jackknife(np.sqrt(total / n), left_out)
    return _correlation_pseudo(metric, truth, values)


@dataclass(frozen=True)
class SeedSubjectEstimate:
    """One arm's metric (mean over seeds) with an interval for both seed and subject noise."""

    value: float
    ci_low: float
    ci_high: float
    se: float
    df: float
    seed_sd: float  # the estimated sd of the seed-to-seed shift of the metric (0 if truncated)
    n_seeds: int
    n_subjects: int
    method: str


@dataclass(frozen=True)
class ArmDifference:
    """``B - A`` of a metric, its interval and p-value from one (delta, se, df) rule."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float
    df: float
    n_seeds_a: int
    n_seeds_b: int
    n_subjects: int
    method: str
    seed_sd: float = 0.0  # pooled sd of the per-seed shift (0: no training noise estimated)
    # Why the interval (and maybe the p-value) is NaN although the difference is defined.
    note: str | None = None


def _as_seed_matrix(values: npt.ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(
            f"{name} must be (n_seeds, n_subjects) pseudo-values with at least 2 subjects, "
            f"got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite pseudo-values (an undefined metric)")
    return array


def seed_components(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Mean squares of one arm ``(..., s, n)``: ``(MS_seed, MS_residual, df_seed, df_residual)``.

    ``MS_seed = n * var_s(mean_i P)`` estimates ``n sigma_seed^2 + sigma_interaction^2``,
    ``MS_residual`` (two-way residuals) ``sigma_interaction^2``. With one seed both are 0, with
    0 degrees of freedom.
    """
    s, n = values.shape[-2], values.shape[-1]
    if s < 2:
        zero = np.zeros(values.shape[:-2])
        return zero, zero, 0, 0
    seed_means = values.mean(axis=-1)
    ms_seed = n * seed_means.var(axis=-1, ddof=1)
    residual = (
        values
        - seed_means[..., None]
        - values.mean(axis=-2, keepdims=True)
        + values.mean(axis=(-2, -1))[..., None, None]
    )
    df_residual = (s - 1) * (n - 1)
    ms_residual = (residual**2).sum(axis=(-2, -1)) / df_residual
    return ms_seed, ms_residual, s - 1, df_residual


def _satterthwaite(
    subject_variance: np.ndarray,
    subject_df: int,
    ms_seed: np.ndarray,
    ms_residual: np.ndarray,
    df_seed: int,
    df_residual: int,
    seed_weight: float,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(variance of the estimate, its df, sigma_seed^2)`` from the mean squares.

    ``Var = S^2 / n + seed_weight * (MS_seed - MS_residual) / n``; the seed term is truncated at
    0 (then the df are the subject term's alone). Satterthwaite (1946): ``df = V^2 /
    sum_k (c_k MS_k)^2 / df_k``.
    """
    sigma_seed2 = np.zeros_like(ms_seed)
    if df_seed > 0:
        sigma_seed2 = np.maximum(0.0, (ms_seed - ms_residual) / n)
    subject_term = subject_variance / n
    variance = subject_term + seed_weight * sigma_seed2
    active = sigma_seed2 > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = subject_term**2 / subject_df
        if df_seed > 0:
            seed_part = (seed_weight * ms_seed / n) ** 2 / df_seed
            residual_part = (seed_weight * ms_residual / n) ** 2 / df_residual
            denominator = denominator + np.where(active, seed_part + residual_part, 0.0)
        df = np.where(denominator > 0, variance**2 / denominator, float(subject_df))
    return variance, df, sigma_seed2


def auc_subject_variance(
    target: npt.ArrayLike, scores_a: npt.ArrayLike, scores_b: npt.ArrayLike
) -> np.ndarray:
    """Unbiased subject-sampling variance of ``mean_s AUC_B - mean_s AUC_A``, times n.

    The difference is a two-sample U-statistic with kernel ``h_ij = mean_s psi_B[s, i, j] -
    mean_s psi_A[s, i, j]`` over (positive i, negative j) pairs. By Hoeffding's (1948)
    decomposition ``h = theta + h1(x_i) + h2(y_j) + h12(x_i, y_j)``, DeLong's variance
    ``S10 / m + S01 / n`` (and the jackknife's, which the pseudo-values give) overestimates it
    by about ``Var(h12) / (m n)``; subtracting the unbiased interaction mean square of the
    ``m x n`` kernel table removes that bias (the unbiased AUC variance of Bamber 1975), which
    matters at n ~ 20 where it makes the AUC test conservative. Returned times the number of
    subjects, so it replaces ``S_D^2`` in ``Var = S_D^2 / n + seed term``. When the correction
    would leave nothing (a kernel that is nearly all interaction), DeLong's own is kept.

    `scores_a` ``(..., s_A, n)`` and `scores_b` ``(..., s_B, n)``; vectorised over leading axes.
    """
    truth = np.asarray(target, dtype=np.float64)
    positive = truth == 1.0
    m, n_neg = _need_two_per_class(positive, "auc")
    kernel = np.zeros(np.broadcast_shapes(np.shape(scores_a)[:-2], np.shape(scores_b)[:-2]))
    kernel = kernel[..., None, None] + np.zeros((m, n_neg))
    for sign, scores in ((-1.0, scores_a), (1.0, scores_b)):
        values = np.asarray(scores, dtype=np.float64)
        for seed in range(values.shape[-2]):  # one (m, n) table at a time: memory stays small
            x = values[..., seed, positive][..., :, None]
            y = values[..., seed, ~positive][..., None, :]
            kernel += sign * ((x > y) + 0.5 * (x == y)) / values.shape[-2]
    theta = kernel.mean(axis=(-2, -1))
    v10, v01 = kernel.mean(axis=-1), kernel.mean(axis=-2)
    delong = v10.var(axis=-1, ddof=1) / m + v01.var(axis=-1, ddof=1) / n_neg
    interaction = kernel - v10[..., :, None] - v01[..., None, :] + theta[..., None, None]
    ms_interaction = (interaction**2).sum(axis=(-2, -1)) / ((m - 1) * (n_neg - 1))
    corrected = delong - ms_interaction / (m * n_neg)
    return truth.size * np.where(corrected > 0, corrected, delong)


def difference_moments(
    a: np.ndarray,
    b: np.ndarray,
    deterministic_a: bool = False,
    allow_one_seed: bool = False,
    subject_variance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised core of `compare_arms`: ``(delta, se, df, seed_sd)`` over leading axes.

    `a` is ``(..., s_A, n)`` and `b` ``(..., s_B, n)`` pseudo-values on the same subjects.
    `subject_variance` replaces ``S_D^2`` (the sample variance of the per-subject differences)
    when a better estimate is known (`auc_subject_variance`).
    """
    s_a, s_b, n = a.shape[-2], b.shape[-2], a.shape[-1]
    _check_seed_counts(s_a, s_b, deterministic_a, allow_one_seed)
    per_subject = b.mean(axis=-2) - a.mean(axis=-2)  # D_i
    delta = per_subject.mean(axis=-1)
    if subject_variance is None:
        subject_variance = per_subject.var(axis=-1, ddof=1)
    arms = [b] if deterministic_a else [a, b]
    parts = [seed_components(arm) for arm in arms]
    df_seed = sum(p[2] for p in parts)
    df_residual = sum(p[3] for p in parts)
    if df_seed > 0:
        # Pooled over arms, weighted by degrees of freedom: under "no difference" both arms
        # share their training noise, and 3 seeds alone give only 2 df per arm.
        ms_seed = sum(p[0] * p[2] for p in parts) / df_seed
        ms_residual = sum(p[1] * p[3] for p in parts) / df_residual
    else:
        ms_seed = ms_residual = np.zeros_like(delta)
    seed_weight = 1.0 / s_b + (0.0 if deterministic_a else 1.0 / s_a)
    variance, df, sigma_seed2 = _satterthwaite(
        subject_variance, n - 1, ms_seed, ms_residual, df_seed, df_residual, seed_weight, n
    )
    return delta, np.sqrt(variance), df, np.sqrt(sigma_seed2)


def _check_seed_counts(s_a: int, s_b: int, deterministic_a: bool, allow_one_seed: bool) -> None:
    if allow_one_seed:
        return
    single = [name for name, s in (("A", s_a), ("B", s_b)) if s < 2]
    if deterministic_a:
        single = [name for name in single if name != "A"]
    if single:
        raise ValueError(
            f"arm {' and '.join(single)} has a single fine-tuning seed: training noise cannot be "
            f"estimated from one seed, and a comparison without it calls two seeds of the same "
            f"configuration different. Train at least 2 seeds per arm (set `{SEEDS_KEY}`, e.g. "
            f"[0, 1, 2]) or pass one revision per seed"
        )


def _t_decision(delta: float, se: float, df: float, ci_level: float) -> tuple[float, float, float]:
    """``(ci_low, ci_high, p)`` of the t rule; se 0 means an exact (noise-free) difference."""
    if se == 0.0 or not np.isfinite(se):
        p_value = 1.0 if delta == 0.0 else 0.0
        return delta, delta, p_value if np.isfinite(se) else float("nan")
    half = float(stats.t.ppf(0.5 + ci_level / 2.0, df)) * se
    p_value = float(2.0 * stats.t.sf(abs(delta) / se, df))
    return delta - half, delta + half, p_value


def _undetermined(delta: float, se: float, scale: float) -> tuple[float, float, str] | None:
    """``(delta, p, note)`` when `se` is 0 up to rounding of pseudo-values of size `scale`."""
    tolerance = ZERO_SE_RTOL * scale
    if not np.isfinite(se) or se > tolerance:
        return None
    if abs(delta) <= tolerance:
        # The arms agree exactly: no evidence of a difference (a plain 0, not -1e-17).
        return 0.0, 1.0, NO_VARIATION_NOTE
    # A shift without any estimated noise would give p = 0 and a zero-width interval, a
    # certainty that a few seeds and subjects cannot give: untestable instead.
    return delta, float("nan"), CONSTANT_SHIFT_NOTE


@dataclass(frozen=True)
class _Verdict:
    """The difference as reported, its interval and p-value; `note` says why there is none."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    note: str | None


def _verdict(delta: float, se: float, df: float, ci_level: float, scale: float) -> _Verdict:
    """The t rule's interval and p; none (NaN) when `se` is 0 up to rounding (`_undetermined`)."""
    undetermined = _undetermined(delta, se, scale)
    if undetermined is None:
        low, high, p_value = _t_decision(delta, se, df, ci_level)
        return _Verdict(delta, low, high, p_value, None)
    difference, p_value, note = undetermined
    return _Verdict(difference, float("nan"), float("nan"), p_value, note)


def _check_level(ci_level: float) -> None:
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")


def _method(n_seeds: tuple[int, ...], seed_sd: float) -> str:
    if max(n_seeds) < 2:
        return "subject-only t (one seed: training noise not estimated)"
    noise = "seed + subject" if seed_sd > 0 else "seed + subject (seed variance estimated 0)"
    return f"{noise} random effects, jackknife pseudo-values, Satterthwaite t"


def seed_subject_estimate(values: npt.ArrayLike, ci_level: float = 0.95) -> SeedSubjectEstimate:
    """One arm's metric with an interval that includes seed and subject variance.

    `values` are ``(n_seeds, n_subjects)`` pseudo-values (``(n,)``: one seed). With one seed the
    interval is for subject sampling only, flagged in ``method``.
    """
    _check_level(ci_level)
    array = _as_seed_matrix(values, "values")
    s, n = array.shape
    subject_means = array.mean(axis=0)
    ms_seed, ms_residual, df_seed, df_residual = seed_components(array)
    variance, df, sigma_seed2 = _satterthwaite(
        np.asarray(subject_means.var(ddof=1)),
        n - 1,
        np.asarray(ms_seed),
        np.asarray(ms_residual),
        df_seed,
        df_residual,
        1.0 / s,
        n,
    )
    value, se = float(subject_means.mean()), float(np.sqrt(variance))
    low, high, _ = _t_decision(value, se, float(df), ci_level)
    return SeedSubjectEstimate(
        value=value,
        ci_low=low,
        ci_high=high,
        se=se,
        df=float(df),
        seed_sd=float(np.sqrt(sigma_seed2)),
        n_seeds=s,
        n_subjects=n,
        method=_method((s,), float(np.sqrt(sigma_seed2))),
    )


def compare_arms(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    ci_level: float = 0.95,
    deterministic_a: bool = False,
    allow_one_seed: bool = False,
    subject_variance: float | None = None,
) -> ArmDifference:
    """``B - A`` from pseudo-values ``a (s_A, n)`` and ``b (s_B, n)`` on the same subjects.

    Raises ValueError when an arm has one seed (training noise cannot be estimated), unless arm
    A is `deterministic_a` (a baseline with no seed, e.g. the ridge: its seed term is 0) or
    `allow_one_seed` asks for the subject-only interval (flagged in ``method``).
    `subject_variance` overrides ``S_D^2`` (`metric_difference` passes the AUC's unbiased one).

    No variation, no interval. When the estimated se is 0 (up to floating-point rounding:
    ``ZERO_SE_RTOL`` times the largest pseudo-value), e.g. every seed of both arms has AUC 1 or
    makes the same calls on every subject, the t rule would claim a certain, zero-width
    interval. Instead ``ci_low`` and ``ci_high`` are NaN and ``note`` says why, and

    - a difference of 0 (up to the same rounding; reported as exactly 0.0) has p = 1.0 (no
      evidence of a difference; ``NO_VARIATION_NOTE``);
    - a non-zero difference (every subject moves by the same amount) has p = NaN (untestable,
      left out of a multiplicity family by `adjust_pvalues`; ``CONSTANT_SHIFT_NOTE``), not 0.
    """
    _check_level(ci_level)
    arm_a, arm_b = _as_seed_matrix(a, "a"), _as_seed_matrix(b, "b")
    if arm_a.shape[1] != arm_b.shape[1]:
        raise ValueError(
            f"the arms must score the same subjects: a has {arm_a.shape[1]}, b {arm_b.shape[1]}"
        )
    delta, se, df, seed_sd = (
        float(x)
        for x in difference_moments(
            arm_a,
            arm_b,
            deterministic_a,
            allow_one_seed,
            None if subject_variance is None else np.asarray(subject_variance, dtype=np.float64),
        )
    )
    scale = float(max(np.abs(arm_a).max(), np.abs(arm_b).max()))
    verdict = _verdict(delta, se, df, ci_level, scale)
    seeds = (arm_b.shape[0],) if deterministic_a else (arm_a.shape[0], arm_b.shape[0])
    method = _method(seeds, seed_sd) + ("; A deterministic" if deterministic_a else "")
    return ArmDifference(
        difference=verdict.difference,
        ci_low=verdict.ci_low,
        ci_high=verdict.ci_high,
        p_value=verdict.p_value,
        se=se,
        df=df,
        n_seeds_a=arm_a.shape[0],
        n_seeds_b=arm_b.shape[0],
        n_subjects=arm_a.shape[1],
        method=method,
        seed_sd=seed_sd,
        note=verdict.note,
    )


def metric_difference(
    kind: str,
    metric: str,
    target: npt.ArrayLike,
    predictions_a: npt.ArrayLike,
    predictions_b: npt.ArrayLike,
    ci_level: float = 0.95,
    deterministic_a: bool = False,
    allow_one_seed: bool = False,
) -> ArmDifference:
    """`compare_arms` of raw predictions ``(s, n)`` (probabilities or years) of two arms.

    For the AUC the subject term is `auc_subject_variance` (small-sample unbiased) rather than
    the pseudo-values' sample variance, which is DeLong's and biased upward at small n.
    Thresholded metrics call at 0.5: pass `calls_at_thresholds` for other cuts. With no
    variation in the data (both arms perfect) there is no interval: see `compare_arms`.
    """
    values_a = pseudo_values(kind, metric, target, predictions_a)
    values_b = pseudo_values(kind, metric, target, predictions_b)
    subject_variance = None
    if kind == "binary" and metric == "auc":
        scores_a = np.atleast_2d(np.asarray(predictions_a, dtype=np.float64))
        scores_b = np.atleast_2d(np.asarray(predictions_b, dtype=np.float64))
        subject_variance = float(auc_subject_variance(target, scores_a, scores_b))
    return compare_arms(
        values_a, values_b, ci_level, deterministic_a, allow_one_seed, subject_variance
    )


def adjust_pvalues(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values: Holm (1979, family-wise error) or Benjamini-Hochberg
    (1995, false discovery rate). Monotone in the raw p, capped at 1; NaN (untestable) entries
    stay NaN and do not count in the family."""
    if method not in ADJUST_METHODS:
        raise ValueError(f"unknown adjustment {method!r}; expected one of {list(ADJUST_METHODS)}")
    raw = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(raw.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(raw))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(raw[finite], kind="stable")]
    ranked = raw[order]
    if method == "holm":
        scaled = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        scaled = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    adjusted[order] = np.minimum(scaled, 1.0)
    return adjusted
