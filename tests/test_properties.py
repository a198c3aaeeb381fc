"""Property-based tests (hypothesis): splits, metrics and the bootstrap on inputs nobody wrote by hand."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from probebench.stats.bootstrap import BootstrapConfig, EvalData, bootstrap
from probebench.stats.metrics import replicate_metrics
from probebench.data.splits import group_labels, stratified_group_holdout

FAST = settings(max_examples=60, deadline=None)


@st.composite
def grouped_labels(draw):
    """Samples with labels and groups (each group one label, as patients in a classification dataset)."""
    n_groups = draw(st.integers(2, 25))
    k = draw(st.integers(2, 4))
    group_class = draw(st.lists(st.integers(0, k - 1), min_size=n_groups, max_size=n_groups))
    group_class[1] = group_class[0]  # at least one class has two groups, so stratification is exercised
    sizes = draw(st.lists(st.integers(1, 4), min_size=n_groups, max_size=n_groups))
    groups = np.array([f"g{i}" for i, s in enumerate(sizes) for _ in range(s)])
    labels = np.array([group_class[i] for i, s in enumerate(sizes) for _ in range(s)])
    return labels, groups


@FAST
@given(grouped_labels(), st.floats(0.1, 0.5), st.integers(0, 2**16))
def test_holdout_keeps_groups_whole_takes_each_class_and_is_seeded(data, fraction, seed):
    labels, groups = data
    held = stratified_group_holdout(labels, groups, fraction=fraction, seed=seed)
    for g in np.unique(groups):  # a group is held whole or not at all
        assert len(set(held[groups == g].tolist())) == 1
    per_class = {}
    for g, c in group_labels(labels, groups).items():
        per_class.setdefault(c, []).append(bool(held[groups == g][0]))
    assert any(len(flags) >= 2 for flags in per_class.values())
    for c, flags in per_class.items():
        if len(flags) >= 2:  # stratified: every class with two groups gives at least one, never all
            assert 1 <= sum(flags) < len(flags) and abs(sum(flags) - fraction * len(flags)) <= 1
        else:
            assert sum(flags) == 0
    assert np.array_equal(held, stratified_group_holdout(labels, groups, fraction=fraction, seed=seed))


@st.composite
def predictions(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(2, 40))
    t = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    p = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    raw = np.array(draw(st.lists(st.lists(st.integers(1, 9), min_size=k, max_size=k), min_size=n, max_size=n)),
                   dtype=float)
    return t, p, raw / raw.sum(axis=1, keepdims=True), k


@FAST
@given(predictions())
def test_metrics_equal_sklearn_whatever_classes_are_absent(data):
    t, p, proba, k = data
    ours = replicate_metrics(t, p, k, proba)
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {"accuracy": skm.accuracy_score(t, p),
                    "f1": skm.f1_score(t, p, average="weighted", zero_division=0),
                    "precision_macro": skm.precision_score(t, p, average="macro", zero_division=0),
                    "recall": skm.recall_score(t, p, average="weighted", zero_division=0),
                    "kappa_quadratic": skm.cohen_kappa_score(t, p, weights="quadratic", labels=labels)}
        if len(np.unique(t)) == k:
            expected["auroc_macro"] = (skm.roc_auc_score(t, proba[:, 1]) if k == 2 else
                                       skm.roc_auc_score(t, proba, multi_class="ovr", labels=labels))
    for m, v in expected.items():
        assert np.allclose(ours[m][0], v, equal_nan=True), (m, ours[m][0], v)


@FAST
@given(st.integers(10, 60), st.floats(0.55, 0.95), st.integers(0, 1000))
def test_bootstrap_interval_brackets_the_value_and_ignores_sample_order(n, acc, seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < acc, t, 1 - t)
    groups = np.array([f"p{i // 2}" for i in range(n)])
    cfg = BootstrapConfig(n_resamples=300, seed=seed, unit="group", stratify="none")
    iv = bootstrap(EvalData(t, p, None, groups, 2), cfg)[0]["accuracy"]
    assert iv.low <= iv.value <= iv.high
    order = rng.permutation(n)  # the same patients listed in another order: the same draws, the same interval
    again = bootstrap(EvalData(t[order], p[order], None, groups[order], 2), cfg)[0]["accuracy"]
    assert (again.value, again.low, again.high) == (iv.value, iv.low, iv.high)
