"""From a run's predictions to what the statistics need, at sample or patient (group) level."""

from __future__ import annotations

import numpy as np

from probebench.stats.bootstrap import EvalData
from probebench.errors import ProbebenchError
from probebench.runs import Run

LEVELS = ("sample", "patient")
AGGREGATIONS = ("mean", "vote")


def aggregate_groups(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, groups: np.ndarray,
                     how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One prediction per group: mean of its samples' probabilities (argmax), or a majority vote.

    Returns (group ids, true label, predicted label, probabilities); for ``vote`` the probabilities
    are the vote shares, and ties go to the class with the higher mean probability.
    """
    if how not in AGGREGATIONS:
        raise ProbebenchError(f"aggregation {how!r} is not one of {', '.join(AGGREGATIONS)}")
    ids, inverse = np.unique(groups, return_inverse=True)
    k = proba.shape[1]
    counts = np.bincount(inverse, minlength=len(ids))
    true_counts = np.zeros((len(ids), k))
    np.add.at(true_counts, (inverse, y_true), 1)
    if ((true_counts > 0).sum(axis=1) > 1).any():
        bad = ids[(true_counts > 0).sum(axis=1) > 1][:5]
        raise ProbebenchError(f"groups with more than one true label cannot be evaluated per patient: {list(bad)}")
    g_true = true_counts.argmax(axis=1)
    mean = np.zeros((len(ids), k))
    np.add.at(mean, inverse, proba)
    mean /= counts[:, None]
    if how == "mean":
        return ids, g_true, mean.argmax(axis=1), mean
    votes = np.zeros((len(ids), k))
    np.add.at(votes, (inverse, y_pred), 1)
    share = votes / counts[:, None]
    tie_break = share + 1e-9 * mean  # among tied votes, the higher mean probability wins
    return ids, g_true, tie_break.argmax(axis=1), share


def eval_data(run: Run, level: str = "sample", how: str = "mean") -> EvalData:
    """The run's test predictions as ``EvalData``, per sample or aggregated per group (patient)."""
    if level not in LEVELS:
        raise ProbebenchError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    k = len(run.classes)
    if level == "sample":
        return EvalData(run.y_true, run.y_pred, run.proba, run.groups, k)
    ids, y_true, y_pred, proba = aggregate_groups(run.y_true, run.y_pred, run.proba, run.groups, how)
    return EvalData(y_true, y_pred, proba, ids, k)
