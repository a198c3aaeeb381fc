"""Ranking backbones across datasets: average ranks, Friedman's test, pairwise rank tests with Holm's adjustment,
and the Nemenyi critical difference (Demšar, 2006). Pure functions of a datasets x models table of scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probebench.errors import ProbebenchError


def ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Each row's models ranked 1 (best) .. k, tied scores sharing their average rank."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    return rankdata(-scores if higher_is_better else scores, axis=1, method="average")


@dataclass(frozen=True)
class Friedman:
    """Friedman's test on N datasets x k models: mean ranks, the tie-corrected chi-square and its p-value."""

    mean_ranks: np.ndarray
    statistic: float
    p: float
    n_datasets: int
    n_models: int


def friedman(scores: np.ndarray, higher_is_better: bool = True) -> Friedman:
    """Friedman's chi-square with the correction for ties, chi2 with k - 1 degrees of freedom (as scipy's
    ``friedmanchisquare`` for k >= 3; defined here for k = 2 as well)."""
    from scipy.stats import chi2

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        raise ProbebenchError("a rank test across datasets needs at least 2 datasets and 2 models")
    if not np.isfinite(scores).all():
        raise ProbebenchError("a rank test across datasets needs every model's score on every dataset")
    n, k = scores.shape
    r = ranks(scores, higher_is_better)
    sums = r.sum(axis=0)
    ties = 0.0
    for row in r:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts ** 3 - counts).sum())
    correction = 1 - ties / (n * (k ** 3 - k))
    if correction <= 0:  # every model tied on every dataset: nothing to test
        return Friedman(sums / n, 0.0, 1.0, n, k)
    stat = (12.0 / (n * k * (k + 1)) * float((sums ** 2).sum()) - 3.0 * n * (k + 1)) / correction
    return Friedman(sums / n, float(stat), float(chi2.sf(stat, k - 1)), n, k)


def rank_se(n_models: int, n_datasets: int) -> float:
    """Standard error of a difference of two mean ranks under the null: sqrt(k (k + 1) / (6 N))."""
    return float(np.sqrt(n_models * (n_models + 1) / (6.0 * n_datasets)))


def pairwise_rank_tests(mean_ranks: np.ndarray, n_datasets: int) -> list[tuple[int, int, float, float]]:
    """Every pair (i, j, i < j): z = (R_i - R_j) / se, its two-sided normal p-value, and Holm's adjustment over
    all pairs (Demšar's post-hoc comparison of all classifiers). Returns (i, j, p, p_holm)."""
    from scipy.stats import norm

    from probebench.stats.bootstrap import holm

    k = len(mean_ranks)
    se = rank_se(k, n_datasets)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    p = [float(2 * norm.sf(abs(mean_ranks[i] - mean_ranks[j]) / se)) for i, j in pairs]
    return [(i, j, pi, ph) for (i, j), pi, ph in zip(pairs, p, holm(p) if p else [])]


def critical_difference(n_models: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks: q_alpha sqrt(k (k + 1) / (6 N)), q_alpha the studentized range
    quantile over sqrt(2) (Demšar's Table 5: k = 4, alpha = 0.05 gives q = 2.569)."""
    from scipy.stats import studentized_range

    q = float(studentized_range.ppf(1 - alpha, n_models, np.inf)) / np.sqrt(2)
    return q * rank_se(n_models, n_datasets)
