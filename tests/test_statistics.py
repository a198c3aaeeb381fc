"""Metrics equal scikit-learn on any resample; bootstrap intervals agree with scipy; cluster bootstrap,
patient-level evaluation, paired comparisons and Holm's adjustment."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from probebench.stats.bootstrap import (BootstrapConfig, EvalData, bootstrap, holm, paired_comparison, replicate_weights,
                                  unit_codes)
from probebench.errors import ProbebenchError
from probebench.stats.evaluate import aggregate_groups
from probebench.stats.metrics import ALL_METRICS, replicate_metrics


def sklearn_metrics(t, p, proba, k):
    out = {"accuracy": skm.accuracy_score(t, p), "balanced_accuracy": skm.balanced_accuracy_score(t, p),
           "kappa_quadratic": skm.cohen_kappa_score(t, p, weights="quadratic", labels=list(range(k)))}
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
    from probebench.stats.bootstrap import percentile_interval, replicates

    cfg = BootstrapConfig(n_resamples=4000, unit="sample")
    perc = percentile_interval(replicates(data, cfg, "sample")["accuracy"], 0.95)  # before any floor
    bca = bootstrap(data, BootstrapConfig(n_resamples=4000, method="bca", unit="sample"))[0]["accuracy"]
    assert bca.low < perc[0] and perc[1] == 1.0  # BCa shifts toward the long tail
    floored = bootstrap(data, cfg)[0]["accuracy"]  # the percentile interval touches 100%: floored
    assert floored.floor == "clopper-pearson" and floored.low < perc[0]


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
    assert unit.unit == "group" and unit.n_units == 40  # the default when samples share groups
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


def _excludes_zero(low, high):
    return low > 0 or high < 0


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_p_value_inverts_the_interval_for_every_shape_of_replicates(confidence):
    """'interval excludes 0' <=> 'p < 1 - confidence' on 4,000 random replicate sets: skewed, heavy-tailed, with
    ties at 0, far from and near 0, for the percentile and the BCa interval."""
    from probebench.stats.bootstrap import interval_p_value

    rng = np.random.default_rng(11)
    agree = 0
    for i in range(2000):
        r = int(rng.integers(20, 400))
        shape = i % 4
        if shape == 0:
            v = rng.normal(rng.normal(0, 2), 1, r)
        elif shape == 1:
            v = rng.lognormal(0, 1, r) - rng.uniform(0, 4)  # strongly skewed
        elif shape == 2:
            v = rng.standard_t(2, r) + rng.normal(0, 1)  # heavy tails
        else:
            v = np.round(rng.normal(rng.normal(0, 0.05), 0.05, r), 1)  # many exact zeros
        theta = float(np.median(v) + rng.normal(0, 0.3))
        jack = rng.normal(0, 1, 30) ** 3
        for j in (None, jack):
            low, high, p = interval_p_value(v, theta, j, confidence)
            assert _excludes_zero(low, high) == (p < 1 - confidence), (i, j is None, low, high, p)
            agree += 1
    assert agree == 4000


def test_percentile_p_value_matches_the_normal_closed_form():
    """For replicates ~ N(mu, 1), inverting the percentile interval gives p = 2 Phi(-|mu|)."""
    from probebench.stats.bootstrap import interval_p_value

    rng = np.random.default_rng(12)
    for mu in (0.0, 0.5, 1.0, 1.96, 2.5):
        v = rng.normal(mu, 1, 200_000)
        p = interval_p_value(v, mu, None, 0.95)[2]
        assert p == pytest.approx(2 * stats.norm.cdf(-abs(mu)), abs=0.005)


def test_paired_comparison_p_agrees_with_its_interval_on_skewed_data():
    """The old p-value (centred replicate differences) contradicted the percentile interval on skewed data; now
    every comparison agrees, for both methods."""
    rng = np.random.default_rng(13)
    for trial in range(40):
        n = int(rng.integers(15, 60))
        t = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < rng.uniform(0.6, 0.98), t, 1 - t)
        b = np.where(rng.random(n) < rng.uniform(0.6, 0.98), t, 1 - t)
        for method in ("percentile", "bca"):
            cfg = BootstrapConfig(n_resamples=500, method=method, unit="sample", seed=trial)
            d = paired_comparison(EvalData(t, a, None, None, 2), EvalData(t, b, None, None, 2), cfg)[0]
            for m in ("accuracy", "f1", "kappa_quadratic"):
                if np.isfinite(d[m].p):
                    assert _excludes_zero(d[m].low, d[m].high) == (d[m].p < 0.05), (trial, method, m, d[m])


def test_paired_bca_interval_agrees_with_scipy():
    """`compare --method bca` is BCa: the interval of a difference of accuracies matches scipy's paired BCa."""
    rng = np.random.default_rng(14)
    t = rng.integers(0, 2, 250)
    a = np.where(rng.random(250) < 0.92, t, 1 - t)
    b = np.where(rng.random(250) < 0.80, t, 1 - t)
    cfg = BootstrapConfig(n_resamples=20_000, method="bca", unit="sample", seed=3)
    ours = paired_comparison(EvalData(t, a, None, None, 2), EvalData(t, b, None, None, 2), cfg)[0]["accuracy"]
    perc = paired_comparison(EvalData(t, a, None, None, 2), EvalData(t, b, None, None, 2),
                             BootstrapConfig(n_resamples=20_000, unit="sample", seed=3))[0]["accuracy"]
    res = stats.bootstrap((t, a, b), lambda y, pa, pb, axis=-1: (pa == y).mean(axis=axis) - (pb == y).mean(axis=axis),
                          paired=True, vectorized=True, n_resamples=20_000, method="BCa",
                          random_state=np.random.default_rng(4))
    assert ours.low == pytest.approx(res.confidence_interval.low, abs=0.006)
    assert ours.high == pytest.approx(res.confidence_interval.high, abs=0.006)
    assert (ours.low, ours.high) != (perc.low, perc.high)


def test_undefined_replicates_are_counted_and_stratification_removes_them():
    """AUROC is undefined on a resample that lacks a class: a small test set with 2 positives loses many
    replicates; they are counted; resampling within each class keeps every class in every replicate."""
    rng = np.random.default_rng(15)
    t = np.r_[np.zeros(28, dtype=int), np.ones(2, dtype=int)]
    proba = rng.dirichlet([1, 1], 30)
    data = EvalData(t, proba.argmax(1), proba, None, 2)
    plain = bootstrap(data, BootstrapConfig(n_resamples=2000, unit="sample", stratify="none"))[0]["auroc_macro"]
    expected = 2000 * (28 / 30) ** 30  # P(no positive drawn) = (28/30)^30 ~ 12.6%
    assert plain.replicates == 2000 and abs(plain.undefined - expected) < 4 * np.sqrt(expected)
    strat, drawn = bootstrap(data, BootstrapConfig(n_resamples=2000, unit="sample", stratify="class"))
    assert strat["auroc_macro"].undefined == 0 and drawn.stratified
    auto = bootstrap(data, BootstrapConfig(n_resamples=2000, unit="sample"))[1]
    assert auto.stratified  # 2 positives < 5: auto stratifies


def test_stratified_draws_keep_each_class_size():
    from probebench.stats.bootstrap import resolve_strata

    t = np.array([0] * 7 + [1] * 3 + [2] * 5)
    data = EvalData(t, t, None, None, 3)
    codes, n = unit_codes(data, "sample")
    strata = resolve_strata(data, codes, n, "class")
    for w in replicate_weights(codes, n, BootstrapConfig(n_resamples=300, seed=1), strata):
        assert np.array_equal(np.stack([w[:, t == c].sum(axis=1) for c in range(3)], axis=1),
                              np.tile([7, 3, 5], (len(w), 1)))


def test_percentile_index_and_bca_terms_on_hand_made_replicates():
    """Exact values a Monte-Carlo comparison with scipy cannot resolve: the quantile positions of 0..99 and the
    BCa acceleration of a hand-made jackknife (an off-by-one rank or a flipped sign fails here)."""
    from statistics import NormalDist

    from probebench.stats.bootstrap import _bca_terms, bca_interval, percentile_interval

    values = np.arange(100.0)
    assert percentile_interval(values, 0.90) == pytest.approx((4.95, 94.05))  # positions 99 * 0.05 and 99 * 0.95
    jack = np.array([1.0, 2.0, 3.0, 10.0])  # d = mean - jack = (3, 2, 1, -6)
    z0, a = _bca_terms(np.arange(10.0), 4.5, jack)
    assert z0 == pytest.approx(0.0) and a == pytest.approx(-180 / (6 * 50 ** 1.5))
    n = NormalDist()
    lo_level = n.cdf(n.inv_cdf(0.025) / (1 - a * n.inv_cdf(0.025)))
    hi_level = n.cdf(n.inv_cdf(0.975) / (1 - a * n.inv_cdf(0.975)))
    low, high = bca_interval(values, 49.5, jack, 0.95)
    assert (low, high) == pytest.approx((99 * lo_level, 99 * hi_level))
