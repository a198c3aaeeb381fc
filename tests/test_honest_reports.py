"""Reports that cannot mislead: what each comparison compares, visible undefined replicates and too few clusters,
the comparison metric named in every format, incomplete seed sets, and the same marks and numbers everywhere."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_run
from typer.testing import CliRunner

from probebench.stats.bootstrap import BootstrapConfig
from probebench.cli import app
from probebench.report.publish import latex_escape, write_report
from probebench.report.tables import ReportOptions, cell_text, collect_rows, comparisons, render

OPTS = ReportOptions(BootstrapConfig(n_resamples=300, seed=0), metrics=("accuracy", "balanced_accuracy"))


def predictions(y, correct: float, seed: int):
    """Two-class probabilities that are right on about ``correct`` of the samples."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(y)) < correct
    pred = np.where(right, y, 1 - y)
    p1 = np.where(pred == 1, 0.8, 0.2)
    return np.stack([1 - p1, p1], axis=1)


@pytest.fixture
def study_like(tmp_path) -> Path:
    """One dataset; resnet50 (random weights) frozen with two heads and unfrozen; vgg16 frozen linear, whose
    test accuracy is the best although knn on resnet50 has the best validation accuracy."""
    y = np.tile([0, 1], 30)
    runs = tmp_path / "runs"
    fake_run(runs, y, predictions(y, 0.70, 1), model="resnet50", head="linear", random_weights=True, val_accuracy=0.6)
    fake_run(runs, y, predictions(y, 0.75, 2), model="resnet50", head="knn", random_weights=True, val_accuracy=0.9)
    fake_run(runs, y, predictions(y, 0.80, 3), model="resnet50", mode="unfrozen", random_weights=True,
             val_accuracy=0.7)
    fake_run(runs, y, predictions(y, 0.95, 4), model="vgg16", head="linear", val_accuracy=0.8)
    return runs


def test_frozen_minus_unfrozen_per_head_and_best_chosen_on_validation(study_like):
    rows = collect_rows(study_like, opts=OPTS)
    labels = [c.label for c in comparisons(rows, OPTS)]
    assert "resnet50 †: frozen (knn) − unfrozen (linear)" in labels
    assert "resnet50 †: frozen (linear) − unfrozen (linear)" in labels
    best = [lab for lab in labels if "best on validation" in lab]
    assert len(best) == 3 and all(lab.endswith("best on validation resnet50 † (frozen, knn)") for lab in best)
    test_best = max(rows, key=lambda r: r.values["accuracy"].value)
    assert test_best.model == "vgg16"  # the test set would have picked another row


def test_no_best_is_chosen_when_a_run_lacks_a_validation_score(tmp_path):
    y = np.tile([0, 1], 20)
    fake_run(tmp_path, y, predictions(y, 0.7, 1), model="a", val_accuracy=None)
    fake_run(tmp_path, y, predictions(y, 0.9, 2), model="b")
    comps = comparisons(collect_rows(tmp_path, opts=OPTS), OPTS)
    assert len(comps) == 1 and comps[0].diff is None
    assert "record no validation accuracy" in comps[0].note and "chosen on the test set" in comps[0].note


def test_every_format_shows_the_same_labels_marks_and_numbers(study_like, tmp_path):
    """Six test patients (§), a comparison metric other than accuracy, random weights (†): terminal, md, csv,
    tex and html agree."""
    rows = collect_rows(study_like, opts=OPTS)
    comps = comparisons(rows, OPTS, "balanced_accuracy")
    outputs = {fmt: render(rows, fmt, OPTS, comps, "balanced_accuracy") for fmt in ("table", "md")}
    out = write_report(study_like, tmp_path / "rep", opts=OPTS, rows=rows, comps=comps,
                       compare_metric="balanced_accuracy")
    outputs["tex"] = (out / "tables.tex").read_text()
    outputs["html"] = (out / "report.html").read_text()
    outputs["md_file"] = (out / "tables.md").read_text()
    for name, text in outputs.items():
        flat = " ".join(text.split())
        assert "Balanced acc." in flat and "Δ Accuracy" not in flat, name
        for r in rows:
            cell = cell_text(r.values["accuracy"], r.seeds, "accuracy", r.few_units)
            assert (latex_escape(cell) if name == "tex" else cell) in flat, (name, cell)
        c = comps[0]
        number = f"{100 * c.diff.diff:+.2f} [{100 * c.diff.low:+.2f}, {100 * c.diff.high:+.2f}]"
        assert (latex_escape(number) if name == "tex" else number) in flat, (name, number)
        assert ("$^\\dagger$" if name == "tex" else "†") in flat, name
    table = list(csv.DictReader(io.StringIO(render(rows, "csv", OPTS))))
    for r in rows:
        (line,) = [x for x in table if x["model"] == r.model and x["freeze"] == r.freeze
                   and x["head"] == r.head_label and x["metric"] == "accuracy"]
        v = r.values["accuracy"]
        assert [float(line[k]) for k in ("value", "low", "high")] == pytest.approx([v.value, v.low, v.high],
                                                                                   abs=1e-9)
        assert line["marks"] == ("†" if r.random_weights else "") + "" and line["undefined_replicates"] == "0"
    assert "double" not in outputs["html"] and '{"probebench"' not in outputs["html"]  # provenance as plain text
    assert "probebench test" in outputs["html"]


def test_too_few_clusters_and_undefined_replicates_are_marked(tmp_path):
    """Six patients: the § mark and its footnote; a rare class with the plain bootstrap: AUROC undefined in many
    replicates, the ‡ mark and the count."""
    y = np.r_[np.zeros(6, int), np.ones(6, int)]
    groups = np.repeat([f"p{i}" for i in range(6)], 2)
    fake_run(tmp_path / "few", y, predictions(y, 0.8, 1), groups=groups)
    opts = ReportOptions(BootstrapConfig(n_resamples=400, stratify="none"), metrics=("accuracy", "auroc_macro"))
    md = render(collect_rows(tmp_path / "few", opts=opts), "md", opts)
    assert re.search(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]§", md)
    assert "fewer than 10 resampling units in the test set (d: 6 patients)" in md
    assert ",6,False,0,§," in render(collect_rows(tmp_path / "few", opts=opts), "csv", opts)  # n_units, marks
    y = np.r_[np.zeros(38, int), np.ones(2, int)]
    fake_run(tmp_path / "rare", y, predictions(y, 0.8, 2))
    rows = collect_rows(tmp_path / "rare", opts=opts)
    und = rows[0].values["auroc_macro"]
    assert und.undefined > 0.05 * und.replicates
    md = render(rows, "md", opts)
    assert "‡" in md and f"auroc_macro: {und.undefined} of 400" in md and "--stratify class" in md
    auto = collect_rows(tmp_path / "rare", opts=ReportOptions(BootstrapConfig(n_resamples=400),
                                                               metrics=("accuracy", "auroc_macro")))
    assert auto[0].stratified and auto[0].values["auroc_macro"].undefined == 0
    assert "Resampled within each class" in render(auto, "md", opts)


def test_an_interrupted_multi_seed_fit_is_marked_incomplete(tmp_path):
    y = np.tile([0, 1], 20)
    fake_run(tmp_path, y, predictions(y, 0.8, 1), seed_group="g1", seed_position=0, seeds_asked=[1, 2, 3], seed=1)
    md = render(collect_rows(tmp_path, opts=OPTS), "md", OPTS)
    assert "(incomplete seeds)" in md and "asked [1, 2, 3], missing [2, 3]" in md


def test_compare_cli_with_bca_says_p_inverts_the_interval(study_like):
    a, b = sorted(p for p in study_like.glob("d/*/frozen/*") if p.is_dir())[:2]
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--method", "bca", "--resamples", "400"])
    assert res.exit_code == 0, res.output
    assert "95% BCa bootstrap" in res.output and "p inverts the interval shown" in res.output


def test_study_style_ci_is_the_ci_of_the_replicate_mean_and_shrinks_with_replicates(tmp_path):
    """The study's summary, as an extra labelled column: the replicate mean ± 1.96 sd/√R. For accuracy the
    replicate sd is sqrt(p(1-p)/n) (closed form), so the column is ~√R times narrower than the interval."""
    from probebench.stats.bootstrap import bootstrap
    from probebench.stats.evaluate import eval_data
    from probebench.runs import read_run

    y = np.tile([0, 1], 200)
    run = read_run(fake_run(tmp_path, y, predictions(y, 0.8, 5)))
    p = (run.y_pred == run.y_true).mean()
    sd = np.sqrt(p * (1 - p) / len(y))
    widths = {}
    for r in (1000, 4000):
        v = bootstrap(eval_data(run, "sample", "mean"), BootstrapConfig(n_resamples=r, unit="sample"))[0]["accuracy"]
        assert v.replicate_mean == pytest.approx(p, abs=4 * sd / np.sqrt(r))
        assert v.replicate_mean_half_width == pytest.approx(1.96 * sd / np.sqrt(r), rel=0.1)
        assert (v.high - v.low) == pytest.approx(2 * 1.96 * sd, rel=0.1)  # the honest interval does not shrink
        widths[r] = v.replicate_mean_half_width
    assert widths[4000] / widths[1000] == pytest.approx(0.5, rel=0.1)
    opts = ReportOptions(BootstrapConfig(n_resamples=1000, unit="sample"), metrics=("accuracy",), study_ci=True)
    rows = collect_rows(tmp_path, opts=opts)
    md = render(rows, "md", opts)
    assert "Accuracy, study-style: replicate mean [CI of the mean]" in md and "says nothing about how" in md
    out = write_report(tmp_path, tmp_path / "rep", opts=opts, rows=rows)
    for name in ("tables.md", "report.html", "results.csv"):
        assert "study-style" in (out / name).read_text(), name
    assert "study-style: replicate mean [CI of the mean]" in (out / "tables.tex").read_text()


def _memory_run(y, pred, name="m", dataset="d"):
    """A run held in memory (no folder): what ``evaluate_run`` needs."""
    from pathlib import Path

    from probebench.runs import Run

    k = int(max(y.max(), pred.max())) + 1
    proba = np.full((len(y), k), 0.1 / (k - 1))
    proba[np.arange(len(y)), pred] = 0.9
    ids = np.array([f"s{i}" for i in range(len(y))])
    config = {"dataset": dataset, "model": name, "mode": "frozen", "path": "cache", "head": "linear",
              "head_label": "linear",
              "weights": {"sha256": "x"}, "classes": [f"c{i}" for i in range(k)], "group_kind": "sample"}
    return Run(Path(f"mem/{name}"), config, {"val_accuracy": 0.9}, ids, ids, y, pred, proba)


def test_a_perfect_classifier_on_32_images_gets_the_exact_binomial_interval_and_its_mark():
    """100% on 32 images: the percentile bootstrap says [100, 100]; the exact (Clopper–Pearson) interval, from
    scipy's binomtest, is [89.11, 100], and the cell is marked in every format."""
    from scipy.stats import binomtest

    from probebench.report.tables import evaluate_run, report_record

    y = np.repeat([0, 1], 16)
    opts = ReportOptions(BootstrapConfig(n_resamples=500, unit="sample"))
    row = evaluate_run(_memory_run(y, y.copy()), opts)
    exact = binomtest(32, 32).proportion_ci(0.95, method="exact")
    acc = row.values["accuracy"]
    assert (acc.value, acc.high) == (1.0, 1.0) and acc.low == pytest.approx(exact.low, abs=1e-12)
    assert acc.floor == "clopper-pearson" and row.values["recall"].floor == "clopper-pearson"
    assert row.values["precision"].constant and not row.values["precision"].floor  # no exact interval: marked
    rows = [row]
    md = render(rows, "md", opts)
    assert "100.00 [89.11, 100.00]¶" in md and "100.00 [100.00, 100.00]¶" in md
    assert "exact Clopper–Pearson interval" in md and "every bootstrap replicate gave the same value" in md
    csv_text = render(rows, "csv", opts)
    assert all(line.count("¶") == 1 for line in csv_text.splitlines()[1:] if ",accuracy," in line)
    record = report_record(rows, opts)["rows"][0]["metrics"]
    assert record["accuracy"]["floor"] == "clopper-pearson" and record["precision"]["constant_replicates"]
    from probebench.report.publish import latex_tables

    assert r"[89.11, 100.00]\P{}" in latex_tables(rows, opts)


def test_a_constant_predictor_under_class_stratification_is_floored_not_certain():
    """Always class 0 with 2:1 classes, resampled within classes: every replicate is 66.67%; the interval is the
    exact one for 20 of 30, not [66.67, 66.67]."""
    from scipy.stats import binomtest

    from probebench.report.tables import evaluate_run

    y = np.array([0] * 20 + [1] * 10)
    opts = ReportOptions(BootstrapConfig(n_resamples=300, unit="sample", stratify="class"))
    acc = evaluate_run(_memory_run(y, np.zeros(30, dtype=int)), opts).values["accuracy"]
    exact = binomtest(20, 30).proportion_ci(0.95, method="exact")
    assert acc.constant and acc.value == pytest.approx(2 / 3)
    assert (acc.low, acc.high) == pytest.approx((exact.low, exact.high), abs=1e-12)


def test_a_cluster_resampled_degenerate_interval_uses_the_number_of_clusters():
    """Patients resampled: the floor counts patients (the conservative n for clustered images), so it is wider
    than the one counting images."""
    from scipy.stats import beta

    from probebench.report.tables import evaluate_run

    y = np.repeat([0, 1], 20)
    run = _memory_run(y, y.copy())
    run.groups[:] = np.repeat([f"p{i}" for i in range(10)], 4)  # 10 patients of 4 images
    acc = evaluate_run(run, ReportOptions(BootstrapConfig(n_resamples=200))).values["accuracy"]
    assert acc.low == pytest.approx(beta.ppf(0.025, 10, 1), abs=1e-12)  # 10 of 10 patients, not 40 of 40


def test_two_protocols_in_one_runs_folder_keep_their_rows_and_an_extra_seed_is_said(tmp_path):
    """The study's protocol and probebench's (another tap and resize) in one runs folder: two rows, each labelled
    with what differs. A later fit with another seed and the same settings is not silently swapped in: the row
    says it stands for the latest of two runs, and --all shows both."""
    import time

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    proba = rng.dirichlet([1, 1], 40)
    recommended = {"tap": "avgpool", "preprocessing": {"resize": 256, "crop": 224}}
    faithful = {"tap": "imagenet_logits", "preprocessing": {"resize": 224, "crop": 224}}
    fake_run(tmp_path, y, proba, model="resnet50", **recommended)
    fake_run(tmp_path, y, proba[::-1], model="resnet50", **faithful)
    time.sleep(1.1)  # run ids carry the second they were written
    fake_run(tmp_path, y, proba[::-1].copy(), model="resnet50", seed=1, **recommended)
    rows = collect_rows(tmp_path, opts=OPTS)
    assert len(rows) == 2
    labels = sorted(r.head_label for r in rows)
    assert labels == ["linear · preprocessing.resize=224, tap=imagenet_logits",
                      "linear · preprocessing.resize=256, tap=avgpool"]
    extra = next(r for r in rows if "avgpool" in r.head_label)
    assert extra.run.config["seed"] == 1 and extra.hidden == 1  # the latest, and it says so
    md = render(rows, "md", OPTS)
    assert "1 other run(s) with the same settings hidden" in md and "`report --all` shows every run" in md
    assert len(collect_rows(tmp_path, opts=OPTS, latest_only=False)) == 3


def test_the_recommendation_never_shows_a_perfect_row_without_its_mark():
    """A perfect head and a constant one, resampled within classes: the panel's cells carry ¶ and its notes
    explain it."""
    from probebench.report.recommend import dataset_panels, panel_lines, panel_notes
    from probebench.report.tables import evaluate_run

    y = np.repeat([0, 1], 16)
    opts = ReportOptions(BootstrapConfig(n_resamples=300, unit="sample", stratify="class"))
    rows = [evaluate_run(_memory_run(y, y.copy(), "perfect"), opts),
            evaluate_run(_memory_run(y, np.zeros(32, dtype=int), "constant"), opts)]
    panel = dataset_panels(rows, opts)[0]
    _, body = panel_lines(panel, opts, "accuracy")
    cells = {line[1]: line[3] for line in body}
    assert cells["perfect"] == "100.00 [89.11, 100.00]¶" and cells["constant"].endswith("¶")
    assert any(n.startswith("¶ the bootstrap could not show") for n in panel_notes([panel]))
