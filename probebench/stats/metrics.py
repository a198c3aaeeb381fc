"""Classification metrics as pure functions of arrays, for one evaluation or thousands of weighted replicates.

A replicate is a vector of per-sample weights (how often each sample was drawn). All replicates'
confusion matrices come from one matrix product of weights with one-hot (true, predicted) codes,
and every confusion-based metric is computed from that (R, K, K) tensor; AUROC comes from
weighted ranks. Every value equals scikit-learn's on the resampled data, including its handling of
classes that are absent from a resample (``zero_division=0``; macro averages over the classes
present; quadratic kappa over all K classes, as ``labels=range(K)``; undefined AUROC or kappa is NaN
where scikit-learn raises or returns NaN).
"""

from __future__ import annotations

import numpy as np

from probebench.stats.calibration import CALIBRATION_METRICS, calibration_metrics

STUDY_METRICS = ("accuracy", "precision", "recall", "f1")  # precision/recall/F1 weighted, as the study
CONFUSION_METRICS = STUDY_METRICS + ("precision_macro", "recall_macro", "f1_macro", "balanced_accuracy",
                                     "kappa_quadratic")
AUROC_METRICS = ("auroc_macro", "auroc_weighted")
ALL_METRICS = [*CONFUSION_METRICS, *AUROC_METRICS, *CALIBRATION_METRICS]  # grows by ``register_metric``
LOWER_IS_BETTER = set(CALIBRATION_METRICS)
FROM_CONFUSION: dict = {}  # metrics added with ``register_metric``: name -> function of (R, K, K) confusion counts
LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1",
          "precision_macro": "Precision (macro)", "recall_macro": "Recall (macro)", "f1_macro": "F1 (macro)",
          "balanced_accuracy": "Balanced acc.", "kappa_quadratic": "Kappa (quadratic)",
          "auroc_macro": "AUROC (macro)", "auroc_weighted": "AUROC (weighted)", "ece": "ECE",
          "ece_mass": "ECE (equal-mass)", "brier": "Brier",
          "nll": "NLL"}


def register_metric(name: str, label: str, of_confusion, *, lower_is_better: bool = False) -> None:
    """Add a metric computed from the confusion counts: ``of_confusion`` takes the (R, K, K) float array of counts
    [true, predicted] of R replicates and returns R values. It then has intervals, comparisons and a column like
    every built-in metric (``--metrics NAME``); ``label`` is how the literature names it."""
    if name in ALL_METRICS:
        raise ValueError(f"metric {name!r} exists already")
    FROM_CONFUSION[name] = of_confusion
    ALL_METRICS.append(name)
    LABELS[name] = label
    if lower_is_better:
        LOWER_IS_BETTER.add(name)


def scale(metric: str) -> float:
    """How a metric is shown: in percent, except the negative log-likelihood (in nats)."""
    return 1.0 if metric == "nll" else 100.0


def _div(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, empty, dtype=np.float64)
    return np.divide(num, den, out=out, where=den > 0)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(R, K, K) confusion counts [true, pred], one per weight row (R, n); (1, K, K) when unweighted."""
    codes = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    if weights is None:
        return np.bincount(codes, minlength=n_classes * n_classes).reshape(1, n_classes, n_classes).astype(float)
    onehot = np.zeros((len(codes), n_classes * n_classes), dtype=np.float64)
    onehot[np.arange(len(codes)), codes] = 1.0
    return (np.asarray(weights, dtype=np.float64) @ onehot).reshape(-1, n_classes, n_classes)


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Every confusion-based metric for each matrix in (R, K, K); per-class ones are (R, K)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    total = support.sum(axis=1)
    present = (support + predicted) > 0  # scikit-learn's unique_labels(y_true, y_pred)
    precision, recall = _div(tp, predicted), _div(tp, support)
    f1 = _div(2 * tp, support + predicted)
    weight = support / total[:, None]
    n_present = present.sum(axis=1)
    out = {"accuracy": tp.sum(axis=1) / total}
    for name, per in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[name] = (per * weight).sum(axis=1)
        out[f"{name}_macro"] = (per * present).sum(axis=1) / n_present
        out[f"{name}_class"] = per
    has_true = support > 0  # balanced accuracy: mean recall over classes present in y_true
    out["balanced_accuracy"] = (recall * has_true).sum(axis=1) / has_true.sum(axis=1)
    # quadratic kappa over all K classes (scikit-learn's labels=range(K)): an ordinal grade keeps its distance to
    # the others when a middle grade is absent from the resample
    k = cm.shape[1]
    w = ((np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2)[None, :, :]
    expected = support[:, :, None] * predicted[:, None, :] / total[:, None, None]
    observed_w, expected_w = (w * cm).sum(axis=(1, 2)), (w * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["kappa_quadratic"] = np.where(expected_w > 0, 1 - observed_w / np.where(expected_w > 0, expected_w, 1),
                                          np.nan)
    out.update({name: np.asarray(fn(cm), dtype=np.float64) for name, fn in FROM_CONFUSION.items()})
    return out


def _counts(weights: np.ndarray) -> np.ndarray:
    """Bootstrap weights are counts: as int16 (exact, a quarter of the memory to move) when they are whole numbers
    below 2^15, else float64."""
    if weights.size and weights.max() < 2 ** 15 and weights.min() >= 0 and np.array_equal(weights, np.rint(weights)):
        return weights.astype(np.int16)
    return weights.astype(np.float64)


def _auroc_binary(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray,
                  buffer: np.ndarray | None = None) -> np.ndarray:
    """Weighted Mann-Whitney AUROC for each weight row: P(pos > neg) + P(tie) / 2; NaN without both classes.

    One sort of the negatives' scores; then per row one cumulative sum over the negatives' weights, read at each
    positive's place: how much negative weight lies below it, and below or level with it. With whole-number
    weights (``_counts``) every sum is exact integer arithmetic. ``buffer``: room for the cumulative sums, shared
    by the classes of one call.
    """
    pos_idx, neg_idx = np.flatnonzero(positive), np.flatnonzero(~positive)
    neg_idx = neg_idx[np.argsort(scores[neg_idx], kind="mergesort")]
    neg_scores, pos_scores = scores[neg_idx], scores[pos_idx]
    below = np.searchsorted(neg_scores, pos_scores, side="left")  # negatives strictly below each positive
    level = np.searchsorted(neg_scores, pos_scores, side="right")  # ... below or tied with it
    acc = np.float64 if weights.dtype.kind == "f" else np.int32  # int32: a row's total weight is below 2^31
    if buffer is None or buffer.dtype != acc:
        buffer = np.empty((weights.shape[0], weights.shape[1] + 1), dtype=acc)
    wn = buffer[:, :len(neg_idx) + 1]
    wn[:, 0] = 0
    np.cumsum(weights[:, neg_idx], axis=1, dtype=acc, out=wn[:, 1:])  # wn[:, q]: weight of the q lowest negatives
    wp = weights[:, pos_idx]
    big = np.float64 if acc is np.float64 else np.int64  # products summed over a row can pass 2^31
    num = np.einsum("ij,ij->i", wp, wn[:, below], dtype=big, casting="safe")
    if not np.array_equal(below, level):  # tied scores: half of the level negative weight
        num = (num + np.einsum("ij,ij->i", wp, wn[:, level], dtype=big, casting="safe")) / 2.0
    return _div(num, wp.sum(axis=1, dtype=big) * wn[:, -1].astype(big), empty=np.nan)


def auroc(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One-vs-rest AUROC, macro and weighted by prevalence, for each weight row (scikit-learn's definition).

    Binary tasks use the positive-class probability. As ``roc_auc_score(..., labels=range(K))``: the
    macro average is NaN when a class is absent from the true labels, the weighted one skips it.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    w = np.ones((1, len(y_true))) if weights is None else np.asarray(weights, dtype=np.float64)
    wc = _counts(w)
    k = proba.shape[1]
    if k == 2:
        a = _auroc_binary(proba[:, 1], y_true == 1, wc)
        return {"auroc_macro": a, "auroc_weighted": a.copy()}
    buffer = np.empty((w.shape[0], w.shape[1] + 1), dtype=np.float64 if wc.dtype.kind == "f" else np.int32)
    per = np.stack([_auroc_binary(proba[:, c], y_true == c, wc, buffer) for c in range(k)], axis=1)
    support = w @ np.eye(k)[y_true]  # (R, K) weight of each class: one product (exact for whole-number weights)
    macro = per.mean(axis=1)  # NaN when a class is absent from the resample, as scikit-learn's
    weighted = np.where(support > 0, per * support, 0.0).sum(axis=1) / support.sum(axis=1)
    return {"auroc_macro": macro, "auroc_weighted": weighted}


def replicate_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, proba: np.ndarray | None = None,
                      weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric for each weight row (R values each; per-class ones R x K); AUROC and calibration need
    ``proba``."""
    out = confusion_metrics(confusion(y_true, y_pred, n_classes, weights))
    if proba is not None:
        out.update(auroc(y_true, proba, weights))
        out.update(calibration_metrics(y_true, proba, weights))
    return out


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                  proba: np.ndarray | None = None) -> dict[str, float | list[float]]:
    """Every metric on the whole set (per-class ones as lists)."""
    values = replicate_metrics(y_true, y_pred, n_classes, proba)
    return {k: (v[0].tolist() if v.ndim == 2 else float(v[0])) for k, v in values.items()}
