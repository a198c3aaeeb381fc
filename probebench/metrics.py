"""Classification metrics as pure functions of arrays, and a vectorised percentile bootstrap.

Every replicate's confusion matrix is built in one ``bincount`` over (replicate, true, predicted);
all metrics then come from that tensor. Values follow scikit-learn (weighted averages over true
support, ``zero_division=0``).
"""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "precision", "recall", "f1")  # the study's: precision/recall/F1 weighted


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                       resamples: np.ndarray | None = None) -> np.ndarray:
    """(R, K, K) confusion counts [true, pred] for index resamples (R, n); (1, K, K) when None."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if resamples is None:
        resamples = np.arange(len(y_true))[None]
    r = resamples.shape[0]
    codes = (np.arange(r)[:, None] * n_classes + y_true[resamples]) * n_classes + y_pred[resamples]
    return np.bincount(codes.ravel(), minlength=r * n_classes * n_classes).reshape(r, n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and weighted precision / recall / F1 for each confusion matrix in (R, K, K)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)  # true counts per class
    predicted = cm.sum(axis=1)
    total = support.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)
    weight = support / total[:, None]
    return {"accuracy": tp.sum(axis=1) / total,
            "precision": (precision * weight).sum(axis=1),
            "recall": (recall * weight).sum(axis=1),
            "f1": (f1 * weight).sum(axis=1)}


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """The study's metrics on the whole set."""
    return {k: float(v[0]) for k, v in metrics_from_confusion(confusion_matrices(y_true, y_pred, n_classes)).items()}


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, *, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, block: int = 250) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over samples: the (α/2, 1-α/2) percentiles of each metric across resamples.

    This is the interval of the metric, not of the mean of the resamples (whose width shrinks to zero
    as resamples grow). Resamples are drawn in blocks to bound memory; the draw is seeded.
    """
    n = len(y_true)
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        for k, v in metrics_from_confusion(confusion_matrices(y_true, y_pred, n_classes, idx)).items():
            values[k].append(v)
    alpha = (1 - confidence) / 2
    return {k: (float(np.quantile(np.concatenate(v), alpha)), float(np.quantile(np.concatenate(v), 1 - alpha)))
            for k, v in values.items()}
