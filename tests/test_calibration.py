"""Calibration metrics and temperature scaling, each against scikit-learn, scipy or a hand-worked case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from probebench.stats.bootstrap import BootstrapConfig, EvalData, bootstrap
from probebench.stats.calibration import (apply_temperature, calibration_metrics, expected_calibration_error,
                                          fit_temperature, outcome_and_confidence, reliability)
from probebench.stats.metrics import replicate_metrics


def ece_by_hand(outcome, confidence, n_bins):
    """The textbook equal-mass ECE written out with a loop: edges at np.quantile of the confidences, a sample in
    bin b when edge[b] < c <= edge[b+1] (the first bin also takes the minimum), |acc - conf| weighted by size."""
    edges = np.quantile(confidence, np.linspace(0, 1, n_bins + 1))
    total = 0.0
    for b in range(n_bins):
        inside = (confidence > edges[b]) & (confidence <= edges[b + 1]) if b else confidence <= edges[1]
        if b == n_bins - 1:
            inside = confidence > edges[b] if b else np.ones_like(confidence, bool)
        if inside.any():
            total += inside.sum() / len(confidence) * abs(outcome[inside].mean() - confidence[inside].mean())
    return total


def guo_ece(right, confidence, n_bins=15):
    """Guo et al. (2017), eq. 3, written out: bins I_m = ((m-1)/M, m/M], sum of |B_m|/n |acc(B_m) - conf(B_m)|."""
    total = 0.0
    for m in range(1, n_bins + 1):
        inside = (confidence > (m - 1) / n_bins) & (confidence <= m / n_bins)
        if m == 1:
            inside |= confidence == 0
        if inside.any():
            total += inside.sum() / len(confidence) * abs(right[inside].mean() - confidence[inside].mean())
    return total


def test_ece_is_guos_equal_width_top_label_ece_and_the_equal_mass_one_is_named_apart():
    """Two classes, hand-worked: top-label confidences 0.9, 0.9, 0.6, 0.6 (bins (13/15, 14/15] and (8/15, 9/15]),
    right, wrong, right, right: |0.5 - 0.9| / 2 + |1 - 0.6| / 2 = 0.4. The equal-mass variant bins the
    positive class's probability instead and differs."""
    y = np.array([1, 1, 0, 1])
    proba = np.array([[0.1, 0.9], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    got = calibration_metrics(y, proba)
    assert got["ece"][0] == pytest.approx(0.4, abs=1e-12)
    assert got["ece_mass"][0] != pytest.approx(0.4)
    from probebench.stats.metrics import LABELS

    assert (LABELS["ece"], LABELS["ece_mass"]) == ("ECE", "ECE (equal-mass)")


@pytest.mark.parametrize("n", [16, 31, 46, 61])  # (n - 1) x 1/15 integral: edges fall exactly on samples
def test_equal_mass_ece_equals_calibration_curve_at_integer_quantile_positions(n):
    rng = np.random.default_rng(n)
    for conf in (np.linspace(0.02, 0.98, n), np.sort(rng.uniform(size=n)), np.round(rng.uniform(size=n), 1)):
        y = (rng.random(n) < conf).astype(int)
        outcome, c = outcome_and_confidence(y, np.stack([1 - conf, conf], axis=1))
        prob_true, prob_pred = calibration_curve(y, conf, n_bins=15, strategy="quantile")
        edges = np.percentile(conf, np.linspace(0, 1, 16) * 100)  # calibration_curve's own edges
        size = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=15)
        size = size[size > 0]
        ref = float((size / n * np.abs(prob_true - prob_pred)).sum())
        assert expected_calibration_error(outcome, c)[0] == pytest.approx(ref, abs=1e-12)


def test_ece_hand_worked_two_bins():
    # edges 0.2 | 0.5 | 0.8: bins {0.2, 0.4} (mean conf 0.3, half right) and {0.6, 0.8} (0.7, half right)
    ece = expected_calibration_error(np.array([0, 1, 0, 1.0]), np.array([0.2, 0.4, 0.6, 0.8]), n_bins=2)
    assert ece[0] == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
    # a perfectly calibrated set: each bin's accuracy equals its confidence
    ece = expected_calibration_error(np.array([0, 0, 0, 1, 1, 1.0]), np.array([0, 0, 0, 1, 1, 1.0]), n_bins=2)
    assert ece[0] == 0.0


@pytest.mark.parametrize("k", [2, 3, 6])
def test_calibration_of_bootstrap_replicates_equals_sklearn_on_the_resampled_rows(k):
    rng = np.random.default_rng(k)
    for trial in range(12):
        n = int(rng.integers(8, 80))
        proba = rng.dirichlet(np.full(k, rng.uniform(0.3, 3)), size=n)
        if trial % 3 == 0:  # ties: confidences on a coarse grid, as a kNN head gives
            proba = np.round(proba, 1) + 1e-3
            proba /= proba.sum(axis=1, keepdims=True)
        y = rng.integers(0, k, n)
        weights = rng.multinomial(n, np.full(n, 1 / n), size=6).astype(float)
        weights[0] = (np.arange(n) != 3)  # a jackknife row (0/1 weights)
        got = calibration_metrics(y, proba, weights, n_bins=10)
        for r in range(len(weights)):
            rows = np.repeat(np.arange(n), weights[r].astype(int))
            yy, pp = y[rows], proba[rows]
            outcome = (yy == 1) if k == 2 else (pp.argmax(1) == yy)
            conf = pp[:, 1] if k == 2 else pp.max(axis=1)
            assert got["ece_mass"][r] == pytest.approx(ece_by_hand(outcome.astype(float), conf, 10), abs=1e-12)
            right, top = (pp.argmax(1) == yy).astype(float), pp.max(axis=1)
            assert got["ece"][r] == pytest.approx(guo_ece(right, top, 10), abs=1e-12)
            assert got["brier"][r] == pytest.approx(brier_score_loss(yy, pp, labels=list(range(k))), abs=1e-12)
            assert got["nll"][r] == pytest.approx(log_loss(yy, pp, labels=list(range(k))), abs=1e-12)


def test_reliability_points_equal_calibration_curve_and_sizes_add_up():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1, 1], size=200)
    y = (rng.random(200) < proba[:, 1] ** 2).astype(int)  # over-confident in the positive class
    outcome, conf = outcome_and_confidence(y, proba)
    true_, pred_, size = reliability(outcome, conf, n_bins=8)
    ref_true, ref_pred = calibration_curve(y, proba[:, 1], n_bins=8, strategy="quantile")
    np.testing.assert_allclose(true_, ref_true, atol=1e-12)
    np.testing.assert_allclose(pred_, ref_pred, atol=1e-12)
    assert size.sum() == 200
    ece = expected_calibration_error(outcome, conf, n_bins=8)[0]
    assert ece == pytest.approx(float((size / 200 * np.abs(ref_true - ref_pred)).sum()), abs=1e-12)


def test_calibration_metrics_get_bootstrap_intervals_like_any_metric():
    rng = np.random.default_rng(2)
    proba = rng.dirichlet([1, 1, 1], size=120)
    y = rng.integers(0, 3, 120)
    data = EvalData(y, proba.argmax(1), proba, np.array([f"p{i // 2}" for i in range(120)]), 3)
    for method in ("percentile", "bca"):
        values, drawn = bootstrap(data, BootstrapConfig(n_resamples=200, method=method, seed=1))
        for m in ("ece", "ece_mass", "brier", "nll"):
            v = values[m]
            assert v.low <= v.value <= v.high and v.undefined == 0
    assert drawn.unit == "group"
    assert values["nll"].value == pytest.approx(log_loss(y, proba, labels=[0, 1, 2]))
    assert set(replicate_metrics(y, proba.argmax(1), 3, None)) .isdisjoint({"ece", "ece_mass", "brier", "nll"})


def test_temperature_minimises_validation_log_loss_and_keeps_the_predicted_class():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(300, 4)) * 3
    y = np.array([rng.choice(4, p=np.exp(z / 3) / np.exp(z / 3).sum()) for z in logits])  # drawn at T = 3
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    found = fit_temperature(proba, y)
    def losses(grid):
        return [log_loss(y, np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True), labels=[0, 1, 2, 3])
                for t in grid]

    coarse = np.exp(np.linspace(np.log(0.2), np.log(20), 101))  # a scan with scikit-learn, then a finer one
    centre = coarse[int(np.argmin(losses(coarse)))]
    fine = centre * np.exp(np.linspace(-0.05, 0.05, 201))
    best = losses(fine)
    assert found["temperature"] == pytest.approx(fine[int(np.argmin(best))], rel=2e-3)
    assert found["temperature"] == pytest.approx(3, rel=0.15)  # the labels were drawn at temperature 3
    assert found["val_nll_after"] == pytest.approx(min(best), abs=1e-6)
    assert found["val_nll_after"] < found["val_nll_before"]
    scaled = apply_temperature(proba, found["temperature"])
    np.testing.assert_array_equal(scaled.argmax(1), proba.argmax(1))
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    np.testing.assert_allclose(apply_temperature(proba, 1.0), proba, atol=1e-12)


def test_a_temperature_at_its_search_bound_is_flagged_and_marked():
    """Every validation prediction right: the NLL keeps falling as T -> 0, so the search stops at 0.01 and the
    test probabilities become one-hot; the fit says so and the calibration table marks it."""
    from pathlib import Path
    from types import SimpleNamespace

    from probebench.report.publish import _temperature
    from probebench.stats.calibration import T_BOUNDS, bound_warning

    y = np.array([0, 1] * 10)
    proba = np.where(np.eye(2)[y] == 1, 0.7, 0.3)
    found = fit_temperature(proba, y)
    assert found["temperature"] < 0.05 and found["at_bound"]  # as low as the bound allows, to numerical precision
    assert T_BOUNDS == (0.01, 100.0)
    assert "its search bound" in bound_warning(found) and "one-hot" in bound_warning(found)
    from probebench.runs import RunRecord

    record = RunRecord.from_config({"dataset": "d", "model": "m", "mode": "frozen", "head": "linear",
                                    "classes": ["a", "b"], "weights": {"sha256": "random"}, "calibration": found})
    row = SimpleNamespace(run=SimpleNamespace(record=record, path=Path("r")))
    assert "at its search bound" in _temperature(row)
    mixed = np.array([0, 1] * 10)
    mixed[:3] = 1 - mixed[:3]  # some mistakes: an interior optimum
    inner = fit_temperature(proba, mixed)
    assert not inner["at_bound"] and bound_warning(inner) == ""
