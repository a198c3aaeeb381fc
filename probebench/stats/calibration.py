"""Calibration: expected calibration error, Brier score and log loss for one evaluation or many weighted replicates,
the reliability diagram's points, and temperature scaling fitted on validation.

``ece`` is the literature's ECE (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks",
ICML 2017, eq. 3): 15 equal-width bins ((m-1)/15, m/15] of the top-label confidence, the sum over bins of
(bin size / n) x |accuracy - mean confidence|, for any number of classes. ``ece_mass`` is the equal-mass variant
(Nixon et al. 2019 call it adaptive): bin edges at the quantiles of the (resampled) confidences, as
``calibration_curve(..., strategy="quantile")``, of the positive class's probability for two classes and the
top-label confidence for more; every replicate is binned afresh. Brier equals ``brier_score_loss(y, proba,
labels=range(K))`` (the positive class's squared error for two classes, the sum over classes for more), NLL
``log_loss`` (probabilities clipped to [eps, 1 - eps]); every value equals its reference on the resampled data.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_METRICS = ("ece", "ece_mass", "brier", "nll")
ECE_BINS = 15  # Guo et al. (2017): 15 bins (equal-width for ``ece``, equal-mass for ``ece_mass``)
EPS = np.finfo(np.float64).eps  # log_loss's clipping
CALIBRATE = (None, "temperature")
T_BOUNDS = (0.01, 100.0)  # the temperature search interval; an optimum at either end is reported as such


def top_label(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether the top label is right, and its confidence (what Guo et al.'s ECE bins), for any number of classes."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    return (proba.argmax(axis=1) == y_true).astype(np.float64), proba.max(axis=1)


def equal_width_ece(outcome: np.ndarray, confidence: np.ndarray, weights: np.ndarray | None = None,
                    n_bins: int = ECE_BINS) -> np.ndarray:
    """Guo et al.'s ECE: bins ((m-1)/M, m/M] of the confidence, sum over bins of |sum of outcomes - sum of
    confidences| / N, for each weight row (counts). Bins are fixed, so every replicate is one matrix product."""
    outcome = np.asarray(outcome, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    w = np.ones((1, len(outcome))) if weights is None else np.asarray(weights, dtype=np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gaps = np.zeros((len(outcome), n_bins))
    gaps[np.arange(len(outcome)), bins] = outcome - confidence
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(w @ gaps).sum(axis=1) / np.where(total > 0, total, np.nan)


def outcome_and_confidence(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the equal-mass ECE bins: for two classes the positive class's probability and whether the label is
    positive; for more, the top-label confidence and whether the top label is right (top-label calibration)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] == 2:
        return (y_true == 1).astype(np.float64), proba[:, 1]
    return (proba.argmax(axis=1) == y_true).astype(np.float64), proba.max(axis=1)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own linear interpolation (``np.percentile``'s), so bin edges equal calibration_curve's to the bit."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def expected_calibration_error(outcome: np.ndarray, confidence: np.ndarray, weights: np.ndarray | None = None,
                               n_bins: int = ECE_BINS) -> np.ndarray:
    """Equal-mass-binned ECE, sum over bins of (bin size / n) x |mean outcome - mean confidence|, for each weight
    row (weights are counts: how often each sample was drawn). (R,) values; (1,) without weights.

    Per row: the quantile edges of the resampled confidences (the weighted form of ``np.percentile``: position
    q (N - 1) in the sorted, expanded sample), then one cumulative sum of weight x (outcome - confidence) in
    confidence order, read at the bin boundaries: a bin's |sum of outcomes - sum of confidences| / N.
    """
    outcome = np.asarray(outcome, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    w = np.ones((1, len(outcome))) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(confidence, kind="mergesort")
    v, gap = confidence[order], (outcome - confidence)[order]
    w = w[:, order]
    rows, n = w.shape
    cum = np.cumsum(w, axis=1)  # cum[:, k]: expanded positions taken by the k + 1 lowest samples
    total = cum[:, -1]
    q = np.linspace(0, 1, n_bins + 1)[1:-1] * 100 / 100  # as np.percentile(x, q * 100) divides by 100
    position = (total[:, None] - 1) * q[None, :]  # (R, B - 1)
    lower = np.floor(position)
    frac = position - lower
    upper = np.minimum(lower + 1, (total - 1)[:, None])
    at = np.empty((rows, 2 * len(q)), dtype=np.int64)  # the samples at the expanded positions lower and upper
    for r in range(rows):  # one small search per row: cheaper than one search over all rows laid end to end
        at[r] = np.searchsorted(cum[r], np.concatenate([lower[r], upper[r]]), side="right")
    at = np.minimum(at, n - 1)  # only for a row without weight, whose ECE is NaN anyway
    edges = _lerp(v[at[:, :len(q)]], v[at[:, len(q):]], frac)
    bounds = np.searchsorted(v, edges.ravel(), side="right").reshape(rows, -1)  # bin b+1 starts after edge b
    bounds = np.concatenate([np.zeros((rows, 1), dtype=np.int64), bounds, np.full((rows, 1), n)], axis=1)
    run = np.zeros((rows, n + 1))
    np.multiply(w, gap[None, :], out=w)  # w is this function's own copy (reordered above)
    np.cumsum(w, axis=1, out=run[:, 1:])
    per_bin = np.diff(np.take_along_axis(run, bounds, axis=1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(per_bin).sum(axis=1) / np.where(total > 0, total, np.nan)


def reliability(outcome: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reliability diagram's points over the non-empty equal-mass bins: (mean outcome, mean confidence, size),
    the first two as ``calibration_curve(outcome, confidence, strategy="quantile")``."""
    outcome = np.asarray(outcome, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    edges = np.percentile(confidence, np.linspace(0, 1, n_bins + 1) * 100)
    ids = np.searchsorted(edges[1:-1], confidence)
    size = np.bincount(ids, minlength=n_bins)
    hit = np.bincount(ids, weights=outcome, minlength=n_bins)
    conf = np.bincount(ids, weights=confidence, minlength=n_bins)
    keep = size > 0
    return hit[keep] / size[keep], conf[keep] / size[keep], size[keep]


def _weighted_mean(per_sample: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ per_sample) / np.where(total > 0, total, np.nan)


def calibration_metrics(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None,
                        n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """ECE (equal-width, top label), equal-mass ECE, Brier score and NLL (lower is better, all) per weight row."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    w = np.ones((1, len(y_true))) if weights is None else np.asarray(weights, dtype=np.float64)
    k = proba.shape[1]
    onehot = np.eye(k)[y_true]
    brier = ((proba - onehot) ** 2).sum(axis=1) * (0.5 if k == 2 else 1.0)
    nll = -np.log(np.clip(proba[np.arange(len(y_true)), y_true], EPS, 1 - EPS))
    outcome, confidence = outcome_and_confidence(y_true, proba)
    right, top = top_label(y_true, proba)
    return {"ece": equal_width_ece(right, top, w, n_bins),
            "ece_mass": expected_calibration_error(outcome, confidence, w, n_bins),
            "brier": _weighted_mean(brier, w), "nll": _weighted_mean(nll, w)}


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities a temperature-scaled head gives (the predicted class never changes)."""
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-300, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _nll(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], EPS, 1 - EPS)).mean())


def fit_temperature(val_proba: np.ndarray, y_val: np.ndarray) -> dict:
    """The temperature T in [0.01, 100] that minimises the validation NLL of softmax(log p / T) (Guo et al., 2017),
    searched on log T; returns T and the validation NLL before and after."""
    from scipy.optimize import minimize_scalar

    y_val = np.asarray(y_val, dtype=np.int64)
    found = minimize_scalar(lambda log_t: _nll(apply_temperature(val_proba, np.exp(log_t)), y_val),
                            bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(found.x))
    after = _nll(apply_temperature(val_proba, t), y_val)
    at_ends = [_nll(apply_temperature(val_proba, b), y_val) for b in T_BOUNDS]
    # at the bound: the search stopped there, or the NLL is as low at a bound as at the optimum found (it keeps
    # falling, or is flat, toward that end: every validation prediction right gives one-hot probabilities)
    at_bound = min(abs(found.x - np.log(b)) for b in T_BOUNDS) < 1e-3 or min(at_ends) <= after + 1e-12
    return {"method": "temperature", "temperature": t, "val_nll_before": _nll(np.asarray(val_proba, float), y_val),
            "val_nll_after": after, "at_bound": bool(at_bound)}


def bound_warning(calibration: dict) -> str:
    """The warning a temperature at its search bound deserves ("" otherwise)."""
    if not calibration.get("at_bound"):
        return ""
    t = calibration["temperature"]
    return (f"warning: the fitted temperature {t:.3g} is at (or as good as) its search bound {T_BOUNDS}: the "
            f"validation NLL keeps falling beyond it, and the test probabilities become "
            f"{'one-hot' if t < 1 else 'uniform'}; the report marks this run's temperature\n")
