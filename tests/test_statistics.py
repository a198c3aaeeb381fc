"""Metrics equal scikit-learn on any resample; bootstrap intervals agree with scipy; cluster bootstrap,
patient-level evaluation, paired comparisons and Holm's adjustment."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from probebench.bootstrap import (BootstrapConfig, EvalData, bootstrap, holm, paired_comparison, replicate_weights,
                                  unit_codes)
from probebench.errors import ProbebenchError
from probebench.evaluate import aggregate_groups
from probebench.metrics import ALL_METRICS, replicate_metrics


def sklearn_metrics(t, p, proba, k):
    out = {"accuracy": skm.accuracy_score(t, p), "balanced_accuracy": skm.balanced_accuracy_score(t, p),
           "kappa_quadratic": skm.cohen_kappa_score(t, p, weights="quadratic")}
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        out[name] = fn(t, p, average="weighted", zero_division=0)
        out[f"{name}_macro"] = fn(t, p, average="macro", zero_division=0)
        out[f"{name}_class"] = fn(t, p, labels=list(range(k)), average=None, zero_division=0)
    try:
        if k == 2:
            out["auroc_macro"] = out["auroc_weighted"] = skm.roc_auc_score(t, proba[:, 1])
        else:
            for avg in ("macro", "weighted"):
                out[f"auroc_{avg}"] = skm.roc_auc_score(t, proba, multi_class="ovr", average=avg, labels=list(range(k)))
    except ValueError:  # only one class present: undefined
        out["auroc_macro"] = out["auroc_weighted"] = np.nan
    return out


def test_every_metric_equals_sklearn_on_random_and_degenerate_resamples():
    rng = np.random.default_rng(0)
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(250):
            k = int(rng.integers(2, 6))
            n = int(rng.integers(2, 30))
            t = rng.integers(0, k, n)
            p = np.where(rng.random(n) < 0.5, t, rng.integers(0, k, n))
            proba = rng.dirichlet(np.ones(k), n).round(1)  # rounded: ties in the scores
            proba = proba / proba.sum(axis=1, keepdims=True)
            idx = rng.integers(0, n, (4, n))
            idx[0] = 0  # degenerate: one sample drawn n times
            weights = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
            ours = replicate_metrics(t, p, k, proba, weights)
            for r in range(4):
                ref = sklearn_metrics(t[idx[r]], p[idx[r]], proba[idx[r]], k)
                for m, v in ref.items():
                    assert np.allclose(ours[m][r], v, atol=1e-10, equal_nan=True), (m, t[idx[r]], p[idx[r]])
                    checked += 1
    assert checked > 10_000


def _scipy_interval(t, p, method, n_resamples, seed):
    res = stats.bootstrap((t, p), lambda a, b, axis=-1: (a == b).mean(axis=axis), paired=True, vectorized=True,
                          n_resamples=n_resamples, method=method, confidence_level=0.95,
                          random_state=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


@pytest.mark.parametrize("method,scipy_method", [("percentile", "percentile"), ("bca", "BCa")])
def test_intervals_agree_with_scipy_bootstrap(method, scipy_method):
    rng = np.random.default_rng(4)
    t = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.85, t, 1 - t)  # accuracy near 0.85: a skewed statistic
    ours = bootstrap(EvalData(t, p, None, None, 2),
                     BootstrapConfig(n_resamples=20_000, method=method, unit="sample", seed=1))[0]["accuracy"]
    low, high = _scipy_interval(t, p, scipy_method, 20_000, 2)
    # Monte-Carlo error of a 2.5% quantile with 20,000 replicates is ~0.002 here
    assert ours.low == pytest.approx(low, abs=0.006) and ours.high == pytest.approx(high, abs=0.006)


def test_bca_differs_from_percentile_when_skewed():
    t = np.ones(60, dtype=int)
    p = np.r_[np.ones(57, dtype=int), np.zeros(3, dtype=int)]  # accuracy 0.95, bounded at 1
    data = EvalData(t, p, None, None, 2)
    perc = bootstrap(data, BootstrapConfig(n_resamples=4000, unit="sample"))[0]["accuracy"]
    bca = bootstrap(data, BootstrapConfig(n_resamples=4000, method="bca", unit="sample"))[0]["accuracy"]
    assert bca.low < perc.low  # BCa shifts toward the long tail


def test_cluster_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(5)
    n_groups, per = 40, 10
    g_true = rng.integers(0, 2, n_groups)
    g_pred = np.where(rng.random(n_groups) < 0.75, g_true, 1 - g_true)
    # every slice of a patient carries the patient's label and prediction: perfectly correlated
    t, p = np.repeat(g_true, per), np.repeat(g_pred, per)
    groups = np.repeat([f"patient{i}" for i in range(n_groups)], per)
    data = EvalData(t, p, None, groups, 2)
    cfg = BootstrapConfig(n_resamples=4000, seed=0)
    codes, n_units = unit_codes(data, "group")
    w = next(replicate_weights(codes, n_units, cfg))
    assert all(len(np.unique(w[:, groups == f"patient{i}"], axis=1).T) == 1 for i in range(5))
    cluster, unit = bootstrap(data, cfg)
    assert unit == "group"  # the default when samples share groups
    naive = bootstrap(data, BootstrapConfig(n_resamples=4000, seed=0, unit="sample"))[0]["accuracy"]
    per_patient = bootstrap(EvalData(g_true, g_pred, None, None, 2), cfg)[0]["accuracy"]
    width = cluster["accuracy"].high - cluster["accuracy"].low
    assert width == pytest.approx(per_patient.high - per_patient.low, abs=0.03)  # 40 patients, not 400 slices
    assert naive.high - naive.low < 0.5 * width  # resampling slices pretends to know far more


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(6)
    t, p = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
    data = EvalData(t, p, rng.dirichlet(np.ones(3), 100), None, 3)
    a, b = (bootstrap(data, BootstrapConfig(n_resamples=300, seed=9))[0] for _ in range(2))
    c = bootstrap(data, BootstrapConfig(n_resamples=300, seed=10))[0]
    assert all(a[m].low == b[m].low for m in ALL_METRICS if np.isfinite(a[m].low))
    assert any(a[m].low != c[m].low for m in ALL_METRICS)


def test_patient_aggregation_mean_and_vote():
    groups = np.array(["p1", "p1", "p1", "p2", "p2"])
    y_true = np.array([2, 2, 2, 0, 0])
    proba = np.array([[0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.45, 0.45, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    y_pred = proba.argmax(1)
    ids, gt, gp, gprob = aggregate_groups(y_true, y_pred, proba, groups, "mean")
    assert list(ids) == ["p1", "p2"] and list(gt) == [2, 0]
    assert np.allclose(gprob[0], [0.35, 0.31666667, 0.33333333]) and list(gp) == [0, 1]
    ids, gt, gp, gprob = aggregate_groups(y_true, y_pred, proba, groups, "vote")
    assert np.allclose(gprob[0], [2 / 3, 0, 1 / 3]) and gp[0] == 0
    assert gp[1] == 1  # 1:1 vote between classes 0 and 1; mean probability 0.5 for class 1 > 0.4 for class 0
    with pytest.raises(ProbebenchError, match="more than one true label"):
        aggregate_groups(np.array([0, 1]), np.array([0, 1]), np.eye(2), np.array(["p", "p"]))


def test_paired_comparison():
    rng = np.random.default_rng(7)
    t = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, t, 1 - t)
    bad = np.where(rng.random(400) < 0.7, t, 1 - t)
    cfg = BootstrapConfig(n_resamples=2000, unit="sample")
    same, _ = paired_comparison(EvalData(t, good, None, None, 2), EvalData(t, good, None, None, 2), cfg)
    assert same["accuracy"].diff == 0 and same["accuracy"].p == 1.0
    assert same["accuracy"].low == same["accuracy"].high == 0  # same replicates for both runs
    diff, _ = paired_comparison(EvalData(t, good, None, None, 2), EvalData(t, bad, None, None, 2), cfg)
    d = diff["accuracy"]
    assert d.diff == pytest.approx((good == t).mean() - (bad == t).mean())
    assert 0 < d.low < d.diff < d.high and d.p < 0.01
    with pytest.raises(ProbebenchError, match="same test samples"):
        paired_comparison(EvalData(t, good, None, None, 2), EvalData(t[:-1], bad[:-1], None, None, 2), cfg)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.5]) == pytest.approx([1.0, 1.0])
