"""Heads on cached features, run directories, metrics and bootstrap parity, the report, CLI and demo."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from typer.testing import CliRunner

from probebench.cli import app
from probebench.errors import ProbebenchError
from probebench.features.extract import extract
from probebench.train.fit import fit
from probebench.train.heads import LinearHead
from probebench.stats.bootstrap import BootstrapConfig, EvalData, bootstrap, replicate_weights
from probebench.report.tables import ReportOptions, collect_rows, comparisons, render
from probebench.runs import read_run, write_checksums

OPTS = dict(weights="random", resize=40, crop=32)


def sk_metrics(t, p):
    return {"accuracy": accuracy_score(t, p),
            **{name: fn(t, p, average="weighted", zero_division=0)
               for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score))}}


def test_linear_head_learns_separable_data_and_keeps_best_epoch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    head = LinearHead(epochs=30, lr=1e-2, seed=0).fit(x[:200], y[:200], x[200:250], y[200:250], 2)
    proba = head.predict_proba(x[250:])
    assert proba.shape == (50, 2) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == y[250:]).mean() > 0.9
    best = max(head.history_, key=lambda r: r["val_accuracy"])["val_accuracy"]
    assert head.history_[head.best_epoch_ - 1]["val_accuracy"] == best
    again = LinearHead(epochs=30, lr=1e-2, seed=0).fit(x[:200], y[:200], x[200:250], y[200:250], 2)
    assert np.array_equal(again.predict_proba(x[250:]), proba)  # deterministic given the seed


def test_fit_writes_run_directory(tiny, tmp_path):
    spec, root = tiny
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "cache", workers=0, progress=False, **OPTS)
    run_dir = fit("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                  epochs=5, progress=False, **OPTS)
    assert run_dir.parent == tmp_path / "runs" / "tiny" / "resnet50" / "frozen"
    names = {"config.json", "predictions.csv", "history.csv", "metrics.json"}
    assert {p.name for p in run_dir.iterdir()} == names | {"SHA256SUMS"}
    sums = dict(reversed(line.split("  ")) for line in (run_dir / "SHA256SUMS").read_text().splitlines())
    assert sums == {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in names}  # sha256sum's format
    config = json.loads((run_dir / "config.json").read_text())
    assert config["weights"]["sha256"] == "random" and config["head_params"]["lr"] == 1e-4
    assert config["n"] == {"train": 20, "val": 8, "test": 12}
    with (run_dir / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and list(rows[0]) == ["sample_id", "group", "true", "pred", "prob_a", "prob_b"]
    assert len(list(csv.DictReader((run_dir / "history.csv").open()))) == 5
    run = read_run(run_dir)
    assert np.allclose(run.proba.sum(1), 1, atol=1e-6)
    assert run.metrics["test"]["accuracy"] == pytest.approx(accuracy_score(run.y_true, run.y_pred))


def test_fit_without_cache_prints_the_extract_command(tiny, tmp_path):
    spec, root = tiny
    with pytest.raises(ProbebenchError, match=r"does not exist; run first:\n  probebench extract --model resnet50"):
        fit("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "none", progress=False, **OPTS)


def test_bootstrap_is_the_percentile_of_per_resample_metrics():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 3, 80)
    p = np.where(rng.random(80) < 0.7, t, rng.integers(0, 3, 80))
    data = EvalData(t, p, None, None, 3)
    cfg = BootstrapConfig(n_resamples=400, seed=7, memory_gib=1e-5, unit="sample")  # a few replicates per pass
    result, unit = bootstrap(data, cfg)
    assert unit.unit == "sample" and not unit.stratified
    # the engine's own draws, one resample at a time, through scikit-learn
    weights = np.concatenate(list(replicate_weights(np.arange(80), 80, cfg))).astype(int)
    assert weights.shape == (400, 80) and (weights.sum(axis=1) == 80).all()
    resampled = [sk_metrics(t[np.repeat(np.arange(80), w)], p[np.repeat(np.arange(80), w)]) for w in weights]
    for m in ("accuracy", "precision", "recall", "f1"):
        values = [r[m] for r in resampled]
        iv = result[m]
        assert (iv.low, iv.high) == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975)), abs=1e-12)
        assert iv.value == pytest.approx(sk_metrics(t, p)[m])


def test_bootstrap_interval_does_not_shrink_with_more_resamples():
    """The study's bug: the interval of the mean of resamples tends to zero width. Ours must not."""
    rng = np.random.default_rng(3)
    t = rng.integers(0, 2, 624)
    p = np.where(rng.random(624) < 0.8, t, 1 - t)
    data = EvalData(t, p, None, None, 2)
    widths = [bootstrap(data, BootstrapConfig(n_resamples=r))[0]["accuracy"] for r in (1000, 5000)]
    w1, w2 = (iv.high - iv.low for iv in widths)
    assert 0.04 < w1 < 0.08 and abs(w1 - w2) < 0.01  # ~ ±3 points at n = 624


def test_report_formats_flag_random_weights(tiny, tmp_path):
    spec, root = tiny
    for model, crop in (("resnet50", 32), ("dinov2_s", 28)):
        opts = {**OPTS, "crop": crop}
        extract(model, str(spec), data_root=root, cache_dir=tmp_path / "c", workers=0, progress=False, **opts)
        fit(model, str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "runs", epochs=3,
            progress=False, **opts)
    rows = collect_rows(tmp_path / "runs")
    assert [(r.model, r.freeze) for r in rows] == [("dinov2_s", "Y"), ("resnet50", "Y")]
    run = rows[1].run
    ref = sk_metrics(run.y_true, run.y_pred)
    for m in ref:
        iv = rows[1].values[m]
        assert iv.value == pytest.approx(ref[m]) and iv.low <= iv.high
    assert rows[1].unit == "patient"  # tiny's test patients have 2 images each -> resampled by patient

    md = render(rows, "md", ReportOptions(), comparisons(rows, ReportOptions()))
    assert md.count("†") >= 3 and "NOT a pretrained result" in md and "| Dataset | Model | Freeze |" in md
    assert "### Comparisons" in md and "(frozen, linear) − best " in md and "p (Holm)" in md
    table = render(rows, "table")
    assert "resnet50 †" in table and "percentile bootstrap" in table and "[CI by patient]" in table
    lines = list(csv.DictReader(render(rows, "csv").splitlines()))
    assert len(lines) == 30 and {ln["random_weights"] for ln in lines} == {"True"}  # 2 runs x 15 metrics
    assert {ln["unit"] for ln in lines} == {"patient"} and {ln["ci_method"] for ln in lines} == {"percentile"}
    acc = [ln for ln in lines if ln["model"] == "resnet50" and ln["metric"] == "accuracy"][0]
    assert float(acc["value"]) == pytest.approx(ref["accuracy"], abs=1e-6)


def test_cli_end_to_end_and_errors(tiny, tmp_path):
    spec, root = tiny
    runner = CliRunner()
    common = ["--model", "resnet50", "--dataset", str(spec), "--data-root", str(root), "--weights", "random",
              "--resize", "40", "--crop", "32"]
    res = runner.invoke(app, ["fit", *common, "--epochs", "2"])
    assert res.exit_code == 2 and "probebench extract" in res.output
    res = runner.invoke(app, ["extract", *common, "--workers", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["fit", *common, "--epochs", "2"])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "runs" / "tiny" / "resnet50" / "frozen").iterdir())
    acc = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert f"test accuracy {100 * acc:.2f}" in " ".join(res.output.split())  # fit says how it did
    res = runner.invoke(app, ["report", "--format", "md"])
    assert res.exit_code == 0 and "| tiny | resnet50 † | Y |" in res.output and "[CI by patient]" in res.output
    res = runner.invoke(app, ["report", "--format", "md", "--unit", "sample", "--method", "bca",
                              "--metrics", "accuracy,auroc_macro,kappa_quadratic"])
    assert res.exit_code == 0 and "Accuracy [CI by sample]" in res.output and "AUROC (macro)" in res.output
    assert "BCa bootstrap" in res.output
    res = runner.invoke(app, ["report", "--level", "patient", "--format", "md"])
    assert res.exit_code == 0 and "per patient" in res.output
    res = runner.invoke(app, ["fit", *common, "--epochs", "3", "--lr", "0.01"])
    assert res.exit_code == 0, res.output
    first, second = sorted((tmp_path / "runs" / "tiny" / "resnet50" / "frozen").iterdir())
    res = runner.invoke(app, ["compare", str(first), str(second)])
    assert res.exit_code == 0 and "A − B [CI]" in res.output and "resampling unit: patient" in res.output
    pred = second / "predictions.csv"
    pred.write_text("\n".join(pred.read_text().splitlines()[:-1]) + "\n")  # one test sample fewer
    res = runner.invoke(app, ["compare", str(first), str(second)])
    assert res.exit_code == 2 and "predictions.csv was changed after the run was written" in res.output
    write_checksums(second)  # as if written so: a whole run on another test set
    res = runner.invoke(app, ["compare", str(first), str(second)])
    assert res.exit_code == 2 and "different test sets" in res.output
    res = runner.invoke(app, ["extract", "--model", "alexnet", "--dataset", str(spec)])
    assert res.exit_code == 2 and "known models" in res.output
    res = runner.invoke(app, ["extract", "--model", "resnet50", "--dataset", "chest_xray"])
    assert res.exit_code == 2 and "not found" in res.output
    assert runner.invoke(app, ["models"]).exit_code == 0
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "chest_xray" in res.output


@pytest.mark.slow
def test_demo_runs_offline_and_flags_random_weights(tmp_path):
    from probebench.demo import run_demo

    text = run_demo(tmp_path / "demo", epochs=5, resize=64, crop=56, progress=False, fmt="md")
    assert "| demo_shapes | resnet50 † | Y |" in text and "| demo_shapes | dinov2_s † | Y |" in text
    assert "NOT a pretrained result" in text
