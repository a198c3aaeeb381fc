"""Rank statistics against scipy and Demšar's tables, and the recommendation panel on runs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fake_run
from scipy.stats import friedmanchisquare, norm, rankdata
from typer.testing import CliRunner

from probebench.cli import app
from probebench.report.recommend import across_datasets, dataset_panels, recommendation_record
from probebench.report.tables import ReportOptions, collect_rows
from probebench.stats.bootstrap import BootstrapConfig
from probebench.stats.ranking import critical_difference, friedman, pairwise_rank_tests


@pytest.mark.parametrize("shape", [(5, 3), (8, 4), (12, 6), (4, 7)])
def test_friedman_equals_scipy_with_and_without_ties(shape):
    rng = np.random.default_rng(sum(shape))
    for scores in (rng.random(shape), np.round(rng.random(shape), 1)):  # rounded: tied scores
        got = friedman(scores)
        ref = friedmanchisquare(*scores.T)
        assert got.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
        np.testing.assert_allclose(got.mean_ranks, rankdata(-scores, axis=1).mean(axis=0))
        lower = friedman(-scores, higher_is_better=False)  # the same order, stated the other way round
        assert lower.statistic == pytest.approx(got.statistic)


def test_friedman_with_two_models_is_the_sign_test_chi_square():
    a = np.array([0.8, 0.7, 0.9, 0.6, 0.75, 0.85, 0.7])
    b = np.array([0.7, 0.75, 0.8, 0.5, 0.7, 0.8, 0.72])
    wins, losses = int((a > b).sum()), int((a < b).sum())
    got = friedman(np.stack([a, b], axis=1))
    assert got.statistic == pytest.approx((wins - losses) ** 2 / (wins + losses))


def test_critical_difference_matches_demsar_table_5():
    # Demšar (2006), Table 5(a), q_0.05 for k = 2..10
    q = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, qk in q.items():
        assert critical_difference(k, 9) == pytest.approx(qk * np.sqrt(k * (k + 1) / 54), abs=2e-3)


def test_pairwise_rank_tests_by_hand():
    ranks = np.array([1.2, 2.0, 2.8])
    out = pairwise_rank_tests(ranks, 10)
    se = np.sqrt(3 * 4 / 60)
    p = [2 * norm.sf(abs(ranks[i] - ranks[j]) / se) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert [(i, j) for i, j, *_ in out] == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose([x[2] for x in out], p)
    order = np.argsort(p)  # Holm by hand: (m - rank) x p, made monotone
    adjusted = np.empty(3)
    running = 0
    for r, i in enumerate(order):
        running = max(running, min(1, (3 - r) * p[i]))
        adjusted[i] = running
    np.testing.assert_allclose([x[3] for x in out], adjusted)


def predictions(y, accuracy, rng, k=2):
    """Probabilities whose argmax is right for the first ``accuracy`` share of samples (a shuffled pattern)."""
    n = len(y)
    right = np.zeros(n, bool)
    right[rng.permutation(n)[: int(round(accuracy * n))]] = True
    pred = np.where(right, y, (y + 1) % k)
    proba = np.full((n, k), 0.2 / (k - 1))
    proba[np.arange(n), pred] = 0.8
    return proba


def test_panel_picks_each_backbone_on_validation_ranks_on_test_and_tests_against_the_top(tmp_path):
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    y = np.repeat([0, 1], 60)
    truth = {"d1": {"a": 0.9, "b": 0.85, "c": 0.775}, "d2": {"a": 0.85, "b": 0.8, "c": 0.6},
             "d3": {"a": 0.7, "b": 0.75, "c": 0.5}}
    for d, accs in truth.items():
        for m, acc in accs.items():
            fake_run(runs, y, predictions(y, acc, rng), dataset=d, model=m, val_accuracy=0.8, extract_img_s=50.0,
                     feature_dim=768, n={"train": 100, "val": 20, "test": 120})
    # model a on d1 also has an mlp head, better on test but worse on validation: it must not be chosen
    fake_run(runs, y, predictions(y, 0.99, rng), dataset="d1", model="a", head="mlp", val_accuracy=0.5)
    opts = ReportOptions(BootstrapConfig(n_resamples=2000, seed=1))
    rows = collect_rows(runs, opts=opts)
    panels = dataset_panels(rows, opts)
    d1 = panels[0]
    assert [c.model for c in d1.choices] == ["a", "b", "c"] and d1.choices[0].row.head == "linear"
    assert [c.rank for c in d1.choices] == [1, 2, 3]
    assert d1.reference is d1.choices[0]  # every backbone has validation accuracy 0.8: ties go by name
    for c in d1.choices[1:]:  # Δ = this − reference, in accuracy points
        assert c.diff.diff == pytest.approx(truth["d1"][c.model] - truth["d1"]["a"], abs=1e-9)
    raw = [c.diff.p for c in d1.choices[1:]]
    assert 0.05 < raw[0] < 0.5 and 0 < raw[1] < 0.05  # p-values Holm visibly changes
    assert [c.p_holm for c in d1.choices[1:]] == pytest.approx(
        [min(1, 2 * min(raw)) if p == min(raw) else max(min(1, 2 * min(raw)), p) for p in raw])
    assert d1.choices[2].p_holm == pytest.approx(2 * raw[1])  # the smaller p, times the family size
    across = across_datasets(panels)
    scores = np.array([[truth[d][m] for m in ("a", "b", "c")] for d in ("d1", "d2", "d3")])
    assert across.models == ["a", "b", "c"]
    np.testing.assert_allclose(across.scores, scores, atol=1e-9)
    assert across.test.statistic == pytest.approx(friedmanchisquare(*scores.T).statistic)
    np.testing.assert_allclose(across.test.mean_ranks, [4 / 3, 5 / 3, 3])
    record = recommendation_record(rows, opts)
    assert record["datasets"][0]["backbones"][0]["feature_dim"] == 768
    assert record["across_datasets"]["friedman_p"] == pytest.approx(friedmanchisquare(*scores.T).pvalue)

    result = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--recommend", "--resamples", "200",
                                      "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "### d1" in result.output and "Friedman's test over 3 datasets × 3 backbones" in result.output
    assert "| 1 | a | frozen, linear |" in result.output and "worse than the reference" in result.output
    assert "reference (best on validation)" in result.output  # a: tied on validation, first by name
    result = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--recommend", "--json", "--resamples",
                                      "200"])
    assert json.loads(result.output)["recommendation"]["across_datasets"]["models"] == ["a", "b", "c"]


def test_lower_is_better_metrics_rank_the_smallest_first(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    runs = tmp_path / "runs"
    sharp = predictions(y, 0.8, rng)
    fake_run(runs, y, sharp, dataset="d", model="calibrated", val_accuracy=0.8)
    over = np.where(sharp > 0.5, 0.999, 0.001)  # same decisions, over-confident: larger NLL
    fake_run(runs, y, over, dataset="d", model="overconfident", val_accuracy=0.8)
    opts = ReportOptions(BootstrapConfig(n_resamples=200), metrics=("nll",))
    panel = dataset_panels(collect_rows(runs, opts=opts), opts, "nll")[0]
    assert [c.model for c in panel.choices] == ["calibrated", "overconfident"]
    assert panel.choices[1].diff.diff > 0  # its NLL is higher than the top's


def _simulated_rows(rng, accuracies: list[float], n: int, opts) -> list:
    """One dataset's rows, held in memory: a backbone per accuracy, each right on an independent random share of
    ``n`` test samples, with a validation accuracy drawn independently (100 validation samples, same accuracy)."""
    from pathlib import Path

    from probebench.report.tables import evaluate_run
    from probebench.runs import Run

    y = rng.integers(0, 2, n)
    rows = []
    for i, acc in enumerate(accuracies):
        right = rng.random(n) < acc
        pred = np.where(right, y, 1 - y)
        proba = np.where(pred[:, None] == np.arange(2)[None, :], 0.8, 0.2)
        config = {"dataset": "d", "model": f"m{i}", "mode": "frozen", "head": "linear", "head_label": "linear",
                  "weights": {"sha256": "x"}, "classes": ["a", "b"], "group_kind": "sample"}
        run = Run(Path(f"sim/m{i}"), config, {"val_accuracy": rng.binomial(100, acc) / 100},
                  np.array([f"s{j}" for j in range(n)]), np.array([f"s{j}" for j in range(n)]), y, pred, proba)
        rows.append(evaluate_run(run, opts))
    return rows


@pytest.mark.parametrize("k", [4, 6])
def test_equal_backbones_are_rarely_called_worse_and_a_planted_difference_is_found(k):
    """k equally good backbones (n = 300): the share of data sets in which any is called "worse than the
    reference" stays at the nominal 5% within Monte Carlo error (150 data sets: SE 1.8 points), because the
    reference is chosen on validation; a backbone 12 points worse is found in most data sets."""
    rng = np.random.default_rng(k)
    opts = ReportOptions(BootstrapConfig(n_resamples=200, seed=0))
    false_worse, found = 0, 0
    sets = 150
    for _ in range(sets):
        panel = dataset_panels(_simulated_rows(rng, [0.8] * k, 300, opts), opts)[0]
        assert panel.reference is not None
        false_worse += any(c.diff is not None and c.p_holm < 0.05 and c.diff.diff < 0 for c in panel.choices)
    assert false_worse / sets <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / sets), false_worse
    for _ in range(20):
        panel = dataset_panels(_simulated_rows(rng, [0.8] * (k - 1) + [0.68], 300, opts), opts)[0]
        planted = next(c for c in panel.choices if c.model == f"m{k - 1}")
        found += planted.diff is not None and planted.p_holm < 0.05 and planted.diff.diff < 0
    assert found >= 14, found
