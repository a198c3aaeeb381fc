"""Edges of the interval and split arithmetic, each against a hand-worked value or an independent reference
(a brute-force scan of numpy's quantile function, scipy's percentileofscore, leave-one-out by hand). These are
the cases mutation testing found unguarded: degenerate BCa levels, replicates all on one side of zero, ties at
the estimate, cluster jackknife blocks, stratified paired draws, Holm's cap at 1, largest-remainder ties."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from probebench.data.splits import _allocate
from probebench.errors import ProbebenchError
from probebench.stats.bootstrap import (BootstrapConfig, EvalData, _bca_level, _bca_nominal, _bca_terms,
                                        _zero_levels, bca_interval, holm, interval_p_value, jackknife,
                                        paired_comparison)


def _scan(values: np.ndarray) -> tuple[float, float]:
    """sup{u: q(u) <= 0} and inf{u: q(u) >= 0} for numpy's (linear) quantile function, by brute force."""
    u = np.linspace(0, 1, 200_001)
    q = np.quantile(values, u)
    below, above = u[q <= 0], u[q >= 0]
    return (below.max() if len(below) else 0.0), (above.min() if len(above) else 1.0)


@pytest.mark.parametrize("values", [[-1.0], [2.0], [0.0], [0.5], [-1.0, 1.0], [0.5, 2.0], [1.0, 2.0, 3.0], [-3.0, -2.0, -1.0], [0.0, 1.0, 2.0],
                                    [-2.0, -1.0, 0.0], [-1.0, 1.0, 3.0], [-5.0, -1.0, 0.0, 0.0, 2.0, 7.0]])
def test_zero_levels_equal_a_scan_of_the_quantile_function(values):
    got = _zero_levels(np.array(values))
    assert np.allclose(got, _scan(np.array(values)), atol=1e-5), (values, got)


def test_bca_levels_at_and_beyond_the_edges():
    assert _bca_level(0.0, 0.1, 0.05) == 0.0 and _bca_level(1.0, 0.1, 0.05) == 1.0
    assert _bca_level(-0.2, 0.0, 0.0) == 0.0 and _bca_level(1.5, 0.0, 0.0) == 1.0
    z0, a, nominal = 0.1, 0.05, 0.975  # Efron (1987): Φ(z0 + (z0 + z) / (1 - a (z0 + z)))
    z = stats.norm.ppf(nominal)
    assert _bca_level(nominal, z0, a) == pytest.approx(stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    assert _bca_nominal(0.0, 0.1, 0.05) == 0.0 and _bca_nominal(1.0, 0.1, 0.05) == 1.0
    for level in (0.01, 0.3, 0.8, 0.99):  # the inverse of _bca_level where it is defined
        assert _bca_level(_bca_nominal(level, 0.2, 0.03), 0.2, 0.03) == pytest.approx(level, abs=1e-9)
    # beyond the pole 1 + a w = 0 no nominal level reaches this quantile level: 0 below it, 1 above
    assert _bca_nominal(stats.norm.cdf(-3.0), 0.0, 0.5) == 0.0
    assert _bca_nominal(stats.norm.cdf(0.5), 0.0, -3.0) == 1.0


def test_bias_correction_matches_scipys_definition_and_is_clipped():
    rng = np.random.default_rng(1)
    jack = rng.normal(size=20)
    for values, theta in (([1.0, 2.0, 2.0, 3.0], 2.0), (rng.normal(size=50), 0.3)):
        values = np.asarray(values)
        z0, _ = _bca_terms(values, theta, jack)
        share = stats.percentileofscore(values, theta, kind="mean") / 100  # ties count half
        assert z0 == pytest.approx(NormalDist().inv_cdf(share))
    values = np.arange(1.0, 11.0)  # all above (below) the estimate: the share is clipped to 1/(2n) (1 - 1/(2n))
    assert _bca_terms(values, 0.0, jack)[0] == pytest.approx(NormalDist().inv_cdf(0.05))
    assert _bca_terms(values, 20.0, jack)[0] == pytest.approx(NormalDist().inv_cdf(0.95))
    # a constant jackknife has no acceleration, also when its mean is off by a rounding error (0.8 is not exact)
    assert _bca_terms(values, 5.5, np.full(7, 0.8))[1] == 0.0 and _bca_terms(values, 5.5, np.ones(7))[1] == 0.0


def test_undefined_estimates_give_undefined_intervals_and_p_values():
    jack = np.array([0.1, 0.2, 0.3])
    assert np.isnan(bca_interval(np.array([0.1, 0.2]), float("nan"), jack, 0.95)).all()
    assert np.isnan(bca_interval(np.array([np.nan, np.nan]), 0.5, jack, 0.95)).all()
    assert np.isnan(interval_p_value(np.array([0.1, 0.2]), float("nan"), None, 0.95)).all()
    assert np.isnan(interval_p_value(np.array([np.nan]), 0.1, jack, 0.95)).all()


def _data(y_true, y_pred, groups=None, k=2):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return EvalData(y_true, y_pred, np.eye(k)[y_pred] * 0.8 + 0.2 / k, None if groups is None else np.asarray(groups),
                    k)


def test_cluster_jackknife_leaves_out_one_whole_group_in_every_block():
    y_true = [0, 0, 1, 1, 0, 1, 1, 0, 1]
    y_pred = [0, 1, 1, 1, 0, 0, 1, 0, 1]
    groups = ["a", "a", "b", "c", "c", "d", "e", "e", "f"]
    expected = []
    for g in sorted(set(groups)):  # by hand: accuracy without group g
        keep = [i for i, x in enumerate(groups) if x != g]
        expected.append(np.mean([y_true[i] == y_pred[i] for i in keep]))
    for memory in (None, 1e-6):  # every group at once, or one or two per pass
        got = jackknife(_data(y_true, y_pred, groups), "group", BootstrapConfig(memory_gib=memory))["accuracy"]
        assert np.allclose(got, expected), memory
    per_sample = jackknife(_data(y_true, y_pred, groups), "sample")["accuracy"]
    assert len(per_sample) == 9 and per_sample[1] == pytest.approx(7 / 8)  # 2 wrong of 9; leave one of them out


def test_paired_comparison_checks_its_inputs_and_stratifies_the_shared_draws():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(29, int), 2]  # a class with one test sample: unstratified draws often miss it
    y = np.r_[y, np.ones(10, int)]
    a = EvalData(y, y, rng.dirichlet(np.ones(3), len(y)), None, 3)
    b = EvalData(y, rng.integers(0, 3, len(y)), rng.dirichlet(np.ones(3), len(y)), None, 3)
    with pytest.raises(ProbebenchError) as err:
        paired_comparison(a, EvalData(y[::-1].copy(), y, None, None, 3))
    assert str(err.value) == "the two runs were not evaluated on the same test samples"
    plain, how = paired_comparison(a, b, BootstrapConfig(n_resamples=200, stratify="none"))
    strat, how_s = paired_comparison(a, b, BootstrapConfig(n_resamples=200, stratify="class"))
    assert not how.stratified and how_s.stratified and how_s.n_units == len(y)
    assert plain["auroc_macro"].undefined > 20 and strat["auroc_macro"].undefined == 0
    assert strat["auroc_macro"].replicates == 200


def test_bootstrap_config_names_what_is_allowed():
    for kwargs, message in (({"method": "x"}, "interval method 'x' is not one of percentile, bca"),
                            ({"unit": "x"}, "resampling unit 'x' is not one of auto, group, sample"),
                            ({"stratify": "x"}, "stratification 'x' is not one of auto, class, none"),
                            ({"n_resamples": 1}, "--resamples must be an integer from 2 to 1,000,000"),
                            ({"n_resamples": 10 ** 9}, "--resamples must be an integer from 2 to 1,000,000")):
        with pytest.raises(ProbebenchError) as err:
            BootstrapConfig(**kwargs)
        assert str(err.value).startswith(message)
    BootstrapConfig(n_resamples=2)  # the smallest bootstrap is allowed


def test_holm_by_hand_and_capped_at_one():
    # sorted: 0.01 x4 = 0.04; 0.03 x3 = 0.09; 0.04 x2 = 0.08 -> 0.09 (monotone); 0.5 x1 = 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 1.2 is capped at 1, and the larger p keeps up with it


def test_largest_remainder_allocation_by_hand():
    # 3 of 10 groups over classes of 5, 3, 2: exact 1.5, 0.9, 0.6 -> floors 1, 0, 0 -> the two largest
    # remainders (0.9, 0.6) get the rest
    assert _allocate({0: 5, 1: 3, 2: 2}, 3) == {0: 1, 1: 1, 2: 1}
    assert _allocate({0: 1, 1: 1}, 1) == {0: 1, 1: 0}  # equal remainders: the lower class first
    assert _allocate({0: 2, 1: 7, 2: 1}, 5) == {0: 1, 1: 4, 2: 0}  # 1.0, 3.5, 0.5 -> 1, 3, 0 (+1: class 1)


def test_unit_and_strata_rules_by_hand():
    from probebench.stats.bootstrap import resolve_strata, resolve_unit, unit_codes

    assert resolve_unit("auto", np.array(["a", "b", "c"])) == "sample"  # every group unique: samples
    assert resolve_unit("auto", np.array(["a", "a", "c"])) == "group" and resolve_unit("auto", None) == "sample"
    with pytest.raises(ProbebenchError) as err:
        resolve_unit("group", None)
    assert str(err.value) == "--unit group needs samples with groups, and these have none"

    def strata_for(y, stratify="auto", k=3):
        data = EvalData(np.asarray(y), np.asarray(y), None, None, k)
        codes, n = unit_codes(data, "sample")
        return resolve_strata(data, codes, n, stratify)

    assert strata_for([0] * 6 + [1] * 5) is None  # every present class has RARE_UNITS (5) or more units
    assert strata_for([0] * 6 + [1] * 4).tolist() == [0] * 6 + [1] * 4  # 4 < 5: stratified
    assert strata_for([0] * 6 + [1]).tolist() == [0] * 6 + [1]  # a class with a single unit is the rarest
    assert strata_for([0] * 6 + [2] * 6) is None  # an absent class (1) does not count as rare
    assert strata_for([1] * 3) is None  # one class present: nothing to stratify
    assert strata_for([0] * 9 + [1] * 9, "class").tolist() == [0] * 9 + [1] * 9
    assert strata_for([0, 1], "none") is None


def test_bootstrap_takes_the_jackknife_by_its_unit_and_the_studys_half_width_with_ddof_1():
    """BCa with patients as the unit uses the leave-one-patient-out jackknife (not leave-one-image-out); the
    study-style column is the replicate mean with 1.96 sd (ddof 1) / sqrt(R)."""
    from probebench.stats.bootstrap import bootstrap, replicates

    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    groups = np.repeat([f"p{i}" for i in range(15)], 4)
    y = np.repeat(rng.integers(0, 2, 15), 4)
    score = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.3, 60), 0.01, 0.99)
    proba = np.c_[1 - score, score]
    data = EvalData(y, proba.argmax(1), proba, groups, 2)
    cfg = BootstrapConfig(n_resamples=400, method="bca", unit="group", seed=3, stratify="none")
    got, _ = bootstrap(data, cfg)
    reps = replicates(data, cfg, "group")["auroc_macro"]
    theta = got["auroc_macro"].value  # equal to scikit-learn's to the last bit or two (checked below); ties at
    # the estimate make BCa's bias correction sensitive to that last bit, so the composition uses the same value
    assert theta == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    by_patient = bca_interval(reps, theta, jackknife(data, "group")["auroc_macro"], 0.95)
    by_image = bca_interval(reps, theta, jackknife(data, "sample")["auroc_macro"], 0.95)
    auroc = got["auroc_macro"]
    assert (auroc.low, auroc.high) == pytest.approx(by_patient)
    assert by_patient != pytest.approx(by_image)  # the check can tell the two apart
    assert auroc.replicate_mean == pytest.approx(np.nanmean(reps))
    finite = reps[np.isfinite(reps)]
    assert auroc.replicate_mean_half_width == pytest.approx(1.96 * np.std(finite, ddof=1) / np.sqrt(len(finite)))


def test_paired_bca_uses_the_jackknife_of_the_difference_by_patient():
    """The paired BCa interval is BCa of the replicate differences with the leave-one-patient-out jackknife of
    A − B (not of A + B, not by image), and it is not the percentile interval."""
    from probebench.stats.bootstrap import replicates

    rng = np.random.default_rng(11)
    groups = np.repeat([f"p{i}" for i in range(20)], 3)
    y = np.repeat(rng.integers(0, 2, 20), 3)

    def run(noise):
        score = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, noise, 60), 0.01, 0.99)
        proba = np.c_[1 - score, score]
        return EvalData(y, proba.argmax(1), proba, groups, 2)

    a, b = run(0.2), run(0.45)
    cfg = BootstrapConfig(n_resamples=300, method="bca", unit="group", seed=5, stratify="none")
    got, _ = paired_comparison(a, b, cfg)
    d = got["auroc_macro"]
    delta = replicates(a, cfg, "group")["auroc_macro"] - replicates(b, cfg, "group")["auroc_macro"]
    ja, jb = jackknife(a, "group")["auroc_macro"], jackknife(b, "group")["auroc_macro"]
    expected = interval_p_value(delta, d.diff, ja - jb, 0.95)
    assert (d.low, d.high, d.p) == pytest.approx(expected)
    for wrong in (interval_p_value(delta, d.diff, ja + jb, 0.95), interval_p_value(delta, d.diff, None, 0.95),
                  interval_p_value(delta, d.diff, jackknife(a, "sample")["auroc_macro"]
                                   - jackknife(b, "sample")["auroc_macro"], 0.95)):
        assert (d.low, d.high) != pytest.approx(wrong[:2])  # each wrong construction is told apart


def test_a_metric_undefined_in_every_replicate_has_no_interval_and_two_replicates_have_a_half_width():
    from probebench.stats.bootstrap import bootstrap

    y = np.zeros(12, dtype=int)  # one class only: AUROC is undefined in every replicate
    data = EvalData(y, y, np.tile([0.7, 0.3], (12, 1)), None, 2)
    got, _ = bootstrap(data, BootstrapConfig(n_resamples=50, stratify="none"))
    auroc = got["auroc_macro"]
    assert auroc.undefined == 50 and np.isnan([auroc.low, auroc.high, auroc.replicate_mean,
                                               auroc.replicate_mean_half_width]).all()
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 30)
    two, _ = bootstrap(EvalData(y, np.where(rng.random(30) < 0.8, y, 1 - y), None, None, 2),
                       BootstrapConfig(n_resamples=2, stratify="none"))
    assert np.isfinite(two["accuracy"].replicate_mean_half_width)  # two replicates give a standard deviation


def test_comparisons_go_on_after_a_dataset_with_a_single_row(tmp_path):
    """Dataset "a" has one run (nothing to compare); "b", sorted after it, still gets its comparison."""
    from conftest import fake_run

    from probebench.report.tables import ReportOptions, collect_rows, comparisons

    y = np.array([0, 1] * 10)
    proba = np.column_stack([1 - np.linspace(0.1, 0.9, 20), np.linspace(0.1, 0.9, 20)])
    fake_run(tmp_path, y, proba, dataset="a", model="m")
    fake_run(tmp_path, y, proba, dataset="b", model="m", mode="frozen")
    fake_run(tmp_path, y, proba[::-1], dataset="b", model="m", mode="unfrozen")
    opts = ReportOptions(BootstrapConfig(n_resamples=50))
    comps = comparisons(collect_rows(tmp_path, opts=opts), opts)
    assert {c.dataset for c in comps} == {"b"} and any("frozen (linear) − unfrozen" in c.label for c in comps)


def test_skipped_images_recorded_in_a_run_reach_the_footnotes(tmp_path):
    from conftest import fake_run

    from probebench.report.tables import ReportOptions, collect_rows, footnotes

    y = np.array([0, 1] * 6)
    p1 = 0.1 + 0.8 * y
    fake_run(tmp_path, y, np.column_stack([1 - p1, p1]), dataset="d", model="m",
             skipped=[{"sample_id": "broken.png", "reason": "truncated"}])
    opts = ReportOptions(BootstrapConfig(n_resamples=20))
    notes = footnotes(collect_rows(tmp_path, opts=opts), opts)
    assert any("d/m: 1 unreadable image(s) skipped: broken.png" in n for n in notes)


def test_csv_columns_are_the_documented_contract(tmp_path):
    """Users' scripts read results.csv by column name: the header is fixed, and each row's fields line up."""
    import csv
    import io

    from conftest import fake_run

    from probebench.report.tables import ReportOptions, collect_rows, render

    y = np.array([0, 1] * 6)
    p1 = 0.2 + 0.6 * y
    fake_run(tmp_path, y, np.column_stack([1 - p1, p1]), dataset="d", model="m", seed=4,
             seed_group="g", seeds_asked=[4, 5], seed_position=0)
    fake_run(tmp_path, y, np.column_stack([1 - p1, p1]), dataset="d", model="m", seed=5,
             seed_group="g", seeds_asked=[4, 5], seed_position=1)
    opts = ReportOptions(BootstrapConfig(n_resamples=20), study_ci=True)
    rows = list(csv.reader(io.StringIO(render(collect_rows(tmp_path, opts=opts), "csv", opts))))
    assert rows[0] == ["dataset", "model", "freeze", "head", "random_weights", "level", "n", "metric", "statistic",
                       "value", "low", "high", "sd", "ci_method", "confidence", "n_resamples", "seed", "unit",
                       "n_units", "stratified", "undefined_replicates", "marks", "run", "label_budget",
                       "labels_used", "evaluation"]
    assert all(len(r) == len(rows[0]) for r in rows)
    by = {(r[7], r[8]): dict(zip(rows[0], r)) for r in rows[1:]}
    acc = by[("accuracy", "test value + bootstrap CI")]
    assert (acc["level"], acc["ci_method"], acc["n_resamples"], acc["value"]) == ("sample", "percentile", "20", "1")
    study = by[("accuracy", "study-style: replicate mean + CI of the mean")]
    assert study["ci_method"] == "normal CI of the mean"
    seeds = by[("accuracy", "mean over seeds [4, 5]")]
    assert (seeds["value"], seeds["sd"]) == ("1.000000", "0.000000")
    assert [seeds[k] for k in rows[0][13:22]] == [""] * 9  # no interval, method or unit for a spread


def test_markdown_report_layout(tmp_path):
    """The Markdown a user pastes into a paper: a 'CI unit' column when rows resample different units, the
    seeds note listing each repeated cell separated by '; ', and blank lines around the comparison list."""
    from conftest import fake_run

    from probebench.report.tables import ReportOptions, collect_rows, comparisons, render

    y = np.array([0, 1] * 8)
    p1 = np.linspace(0.2, 0.8, 16)
    proba = np.column_stack([1 - p1, p1])
    patients = [f"p{i // 2}" for i in range(16)]
    for seed, pos in ((1, 0), (2, 1)):
        fake_run(tmp_path, y, proba, dataset="d", model="a", seed=seed, seed_group="ga", seeds_asked=[1, 2],
                 seed_position=pos, groups=patients)
        fake_run(tmp_path, y, proba[::-1], dataset="d", model="b", seed=seed, seed_group="gb", seeds_asked=[1, 2],
                 seed_position=pos)
    opts = ReportOptions(BootstrapConfig(n_resamples=30))
    rows = collect_rows(tmp_path, opts=opts)
    md = render(rows, "md", opts, comparisons(rows, opts))
    lines = md.splitlines()
    assert lines[0] == "| Dataset | Model | Freeze | Head | CI unit | Accuracy | Precision | Recall | F1 |"
    assert "(d/a: seeds [1, 2]; d/b: seeds [1, 2])" in md
    i = lines.index("### Comparisons")
    assert lines[i - 1] == "" and lines[i + 1] == ""
    assert lines[-2] == "" and lines[-1].startswith("- ")


def test_bca_gives_one_interval_for_one_number_computed_two_ways():
    """Accuracy and weighted recall are the same number (sum of the diagonal / n), computed by different sums:
    their BCa intervals and p-values of a paired difference must agree, whatever the last bits of each replicate
    (replicates equal to the point difference are counted within a tolerance, not by float equality)."""
    from probebench.stats.bootstrap import EvalData, paired_comparison

    for seed in range(8):
        rng = np.random.default_rng(seed)
        n = 72
        y = rng.integers(0, 3, n)
        pa = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
        pb = np.where(rng.random(n) < 0.65, y, (y + 2) % 3)
        onehot = np.eye(3)
        a, b = (EvalData(y, p, 0.1 + 0.7 * onehot[p], None, 3) for p in (pa, pb))
        diffs, _ = paired_comparison(a, b, BootstrapConfig(n_resamples=400, method="bca", seed=seed))
        acc, rec = diffs["accuracy"], diffs["recall"]
        assert (acc.low, acc.high, acc.p) == pytest.approx((rec.low, rec.high, rec.p), abs=1e-9), seed
