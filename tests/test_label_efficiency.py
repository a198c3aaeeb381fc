"""Label budgets, patient-level cross-validation and calibration in ``fit``: subsets checked by their defining
properties, folds against scikit-learn's StratifiedGroupKFold, and whole fits against scikit-learn written out."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from probebench.data.splits import cv_folds, label_subset
from probebench.errors import ProbebenchError
from probebench.features import cache as fcache
from probebench.features.extract import extract
from probebench.runs import find_runs, read_run
from probebench.train.fit import fit
from probebench.train.heads import DEFAULT_CS

OPTS = dict(weights="random", resize=40, crop=32)


def cohort(seed=0, patients=(7, 12, 3)):
    """Labels and patient groups: each class's patients with 1 to 4 images."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c, n in enumerate(patients):
        for p in range(n):
            k = int(rng.integers(1, 5))
            labels += [c] * k
            groups += [f"c{c}p{p}"] * k
    return np.array(labels), np.array(groups)


def per_class_groups(labels, groups, mask):
    out = defaultdict(set)
    for lab, g in zip(labels[mask], groups[mask]):
        out[lab].add(g)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_fractions_keep_whole_patients_per_class_and_are_nested(seed):
    labels, groups = cohort(seed)
    masks = {f: label_subset(labels, groups, fraction=f, seed=seed) for f in (0.01, 0.1, 0.25, 0.5, 1.0)}
    total = per_class_groups(labels, groups, np.ones(len(labels), bool))
    for f, m in masks.items():
        for g in np.unique(groups):  # a patient is kept whole or not at all
            assert len(set(m[groups == g])) == 1
        kept = per_class_groups(labels, groups, m)
        for c, all_groups in total.items():  # ceil(f x patients of the class), at least one
            assert len(kept[c]) == max(1, int(np.ceil(f * len(all_groups) - 1e-9)))
    fs = sorted(masks)
    for small, large in zip(fs, fs[1:]):
        assert not (masks[small] & ~masks[large]).any()  # nested
    assert masks[1.0].all()
    other = label_subset(labels, groups, fraction=0.25, seed=seed + 10)
    assert not np.array_equal(other, masks[0.25])  # another seed draws other patients


def test_shots_reach_the_number_with_the_fewest_patients_and_are_nested():
    labels, groups = cohort(3)
    size = Counter(groups.tolist())
    previous = np.zeros(len(labels), bool)
    for k in (1, 2, 4, 8, 16, 1000):
        m = label_subset(labels, groups, shots=k, seed=5)
        assert not (previous & ~m).any()
        previous = m
        for c in np.unique(labels):
            have = int((m & (labels == c)).sum())
            available = int((labels == c).sum())
            assert have >= min(k, available)
            if have > k:  # no patient could be dropped: without any one of them the class falls short
                assert any(have - size[g] < k for g in set(groups[m & (labels == c)]))
    assert label_subset(labels, groups, shots=1, seed=5).sum() < label_subset(labels, groups, fraction=1.0).sum()
    with pytest.raises(ProbebenchError, match="exactly one"):
        label_subset(labels, groups, fraction=0.5, shots=2)


def test_cv_folds_are_sklearns_stratified_group_folds():
    labels, groups = cohort(4, patients=(10, 14, 6))
    fold = cv_folds(labels, groups, 5, seed=7)
    expected = np.empty(len(labels), int)
    for i, (_, test) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=7).split(labels, labels, groups)):
        expected[test] = i
    np.testing.assert_array_equal(fold, expected)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    with pytest.raises(ProbebenchError, match="at least 50 groups"):
        cv_folds(labels, groups, 50)


def logreg_by_hand(x_tr, y_tr, x_va, y_va, x_te):
    """The logreg head's documented rule with scikit-learn alone: features standardised on the training rows, C
    along the grid from strong to weak regularisation, each fit warm-started from the last, chosen by validation
    accuracy (first best), then its probabilities on the test rows."""
    import copy

    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    model, best = LogisticRegression(solver="lbfgs", max_iter=1000, warm_start=True), None
    for c in sorted(DEFAULT_CS):
        model.set_params(C=c).fit(scaler.transform(x_tr), y_tr)
        acc = (model.predict_proba(scaler.transform(x_va)).argmax(1) == y_va).mean()
        if best is None or acc > best[0]:
            best = (acc, copy.deepcopy(model))
    return best[1].predict_proba(scaler.transform(x_te))


@pytest.fixture
def store(tmp_path, tiny):
    spec, root = tiny
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "cache", workers=0, progress=False, **OPTS)
    return spec, root, tmp_path / "cache"


def _features(spec, root, cache):
    from probebench.features.spec import FeatureSpec, locate_store

    return fcache.read_features(locate_store(FeatureSpec.of("resnet50", **OPTS), str(spec), data_root=root,
                                             cache_dir=cache))


def test_cross_validation_pools_out_of_fold_predictions_equal_to_a_hand_written_protocol(tmp_path, store):
    spec, root, cache = store
    run_path = fit("resnet50", str(spec), data_root=root, cache_dir=cache, runs_dir=tmp_path / "runs", head="logreg",
                   cv=5, seed=3, progress=False, **OPTS)
    run = read_run(run_path)
    feats = _features(spec, root, cache)
    x, y, g = feats.features.astype(np.float32), feats.labels, feats.groups
    fold = np.empty(len(y), int)
    for i, (_, test) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=3).split(x, y, g)):
        fold[test] = i
    expected = np.zeros((len(y), 2))
    for i in range(5):
        test, val = fold == i, fold == (i + 1) % 5
        train = ~(test | val)
        expected[test] = logreg_by_hand(x[train], y[train], x[val], y[val], x[test])
    order = {s: i for i, s in enumerate(feats.sample_ids)}
    idx = np.array([order[s] for s in run.sample_ids])
    assert sorted(run.sample_ids) == sorted(feats.sample_ids)  # every sample, once
    np.testing.assert_allclose(run.proba, expected[idx], atol=1e-6)
    metrics = json.loads((run_path / "metrics.json").read_text())
    assert [f["n_test"] for f in metrics["folds"]] == [int((fold == i).sum()) for i in range(5)]
    for f in metrics["folds"]:
        test = fold == f["fold"] - 1
        assert f["test"]["accuracy"] == pytest.approx((expected[test].argmax(1) == y[test]).mean())
    config = run.config
    assert config["cv"]["folds"] == 5 and config["cv"]["samples"] == len(y)
    from probebench.verify import check_run  # verify knows a CV run predicts every sample (not only the test split)

    assert check_run(run_path, tmp_path / "runs", repair=False).state == "ok"
    lines = (run_path / "predictions.csv").read_text().splitlines()
    (run_path / "predictions.csv").write_text("\n".join(lines[:-3]) + "\n")  # three rows lost
    assert check_run(run_path, tmp_path / "runs", repair=False).state == "damaged"


def test_label_fraction_runs_train_on_the_subset_and_the_full_fraction_equals_a_plain_fit(tmp_path, store):
    spec, root, cache = store
    runs = tmp_path / "runs"
    common = dict(data_root=root, cache_dir=cache, runs_dir=runs, head="logreg", progress=False, **OPTS)
    plain = read_run(fit("resnet50", str(spec), seed=2, **common))
    fit("resnet50", str(spec), label_fractions=[0.3, 1.0], seeds=[2, 4], **common)
    budget_runs = [read_run(p) for p in find_runs(runs) if read_run(p).config.get("budget")]
    assert len(budget_runs) == 4
    feats = _features(spec, root, cache)
    train, val, test = (feats.split == s for s in ("train", "val", "test"))
    x = feats.features.astype(np.float32)
    for run in budget_runs:
        c = run.config
        keep = label_subset(feats.labels[train], feats.groups[train], fraction=c["budget"]["label_fraction"],
                            seed=c["seed"])
        xs, ys = x[train][keep], feats.labels[train][keep]
        assert c["train_used"]["samples"] == len(ys)
        assert c["train_used"]["groups"] == len(np.unique(feats.groups[train][keep]))
        expected = logreg_by_hand(xs, ys, x[val], feats.labels[val], x[test])
        np.testing.assert_allclose(run.proba, expected, atol=1e-6)
        if c["budget"]["label_fraction"] == 1.0 and c["seed"] == 2:
            np.testing.assert_allclose(run.proba, plain.proba, atol=0)
    groups = {r.config["seed_group"] for r in budget_runs}
    assert len(groups) == 2  # one seed group per budget: the report's spread is across seeds at one budget


def test_temperature_calibration_is_applied_to_the_uncalibrated_test_probabilities(tmp_path, store):
    spec, root, cache = store
    common = dict(data_root=root, cache_dir=cache, runs_dir=tmp_path / "runs", epochs=20, lr=1e-2, seed=1,
                  progress=False, **OPTS)
    raw = read_run(fit("resnet50", str(spec), **common))
    cal = read_run(fit("resnet50", str(spec), calibrate="temperature", **common))
    t = cal.config["calibration"]["temperature"]
    logits = np.log(raw.proba) / t
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(cal.proba, expected, atol=2e-6)
    np.testing.assert_array_equal(cal.y_pred, raw.y_pred)
    assert cal.config["calibration"]["val_nll_after"] <= cal.config["calibration"]["val_nll_before"] + 1e-12
    with pytest.raises(ProbebenchError, match="cannot be combined"):
        fit("resnet50", str(spec), cv=5, label_fractions=[0.5], **{**common, "runs_dir": tmp_path / "x"})


def test_command_line_budgets_are_checked_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from probebench.cli import app

    base = ["fit", "-m", "resnet50", "--dataset", "nowhere", "--cache-dir", str(tmp_path)]
    cases = {("--label-fraction", "0.1,abc"): "--label-fraction '0.1,abc': expected numbers separated by commas",
             ("--label-fraction", "0,0.5"): "--label-fraction must be a non-empty list of distinct fractions in (0, 1]",
             ("--shots", "4,4"): "--shots must be a non-empty list of distinct integers >= 1",
             ("--cv", "1"): "--cv must be an integer number of folds from 2 to 1,000",
             ("--calibrate", "temprature"): "did you mean 'temperature'"}
    for args, message in cases.items():
        result = CliRunner().invoke(app, base + list(args))
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (args, result.output)


def test_every_head_takes_a_label_budget_and_knn_caps_k_at_the_training_set(tmp_path, store):
    spec, root, cache = store
    runs = tmp_path / "runs"
    for head in ("linear", "mlp", "logreg", "knn"):
        trained = {"epochs": 3} if head in ("linear", "mlp") else {}  # logreg and knn take no epochs
        fit("resnet50", str(spec), data_root=root, cache_dir=cache, runs_dir=runs, head=head, shots=[1, 2],
            progress=False, **trained, **OPTS)
    knn = [read_run(p) for p in find_runs(runs) if read_run(p).config["head"] == "knn"]
    feats = _features(spec, root, cache)
    train, test = feats.split == "train", feats.split == "test"
    for run in knn:
        used = run.config["train_used"]["samples"]
        ks = [g["k"] for g in run.config["selection"]["grid"]]
        assert ks == [used]  # 10, 20 and 50 all capped at the 2 or 4 training samples
        keep = label_subset(feats.labels[train], feats.groups[train], shots=run.config["budget"]["shots"],
                            seed=run.config["seed"])
        bank = feats.features[train][keep].astype(np.float64)
        bank /= np.linalg.norm(bank, axis=1, keepdims=True)
        q = feats.features[test].astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        votes = np.zeros((len(q), 2))
        w = np.exp(q @ bank.T / 0.07)  # every training sample votes (k = all of them), weighted exp(sim / T)
        for c in (0, 1):
            votes[:, c] = w[:, feats.labels[train][keep] == c].sum(axis=1)
        np.testing.assert_allclose(run.proba, votes / votes.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert len(find_runs(runs)) == 8
