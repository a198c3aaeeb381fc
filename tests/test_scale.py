"""Scale: the bootstrap's memory budget never changes a result, BCa's grouped jackknife stays close to the exact one,
the thread policy honours the process's CPUs, and fit's memory stays near the training features' size."""

from __future__ import annotations

import numpy as np
import pytest

from probebench.stats.bootstrap import (DRAW_BLOCK, BootstrapConfig, EvalData, bootstrap, jackknife,
                                        jackknife_assignment, paired_comparison, replicate_weights)


def _data(n=1500, k=3, seed=0, groups=False, rare=True):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, k, n)
    if rare:
        t[t == k - 1] = 0
        t[:3] = k - 1  # a class with 3 samples: the auto rule stratifies
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), t] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    g = rng.integers(0, n // 3, n) if groups else None
    return EvalData(t, proba.argmax(1), proba, g, k)


def test_the_draws_are_todays_stream_whatever_the_budget():
    """The replicates' weights, by hand: 250 replicates per step, each an (r, n) draw of unit indices counted per
    row, as the engine drew them before it had a budget; a budget of a few rows per pass gives the same."""
    n, cfg = 37, BootstrapConfig(n_resamples=600, seed=5)
    rng = np.random.default_rng(5)
    want = []
    for start in range(0, 600, 250):
        b = min(250, 600 - start)
        draws = rng.integers(0, n, size=(b, n))
        want.append(np.stack([np.bincount(row, minlength=n) for row in draws]))
    want = np.concatenate(want)
    for rows in (DRAW_BLOCK, 7, 1):
        got = np.concatenate(list(replicate_weights(np.arange(n), n, cfg, rows=rows)))
        assert np.array_equal(got, want), rows


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_a_budgeted_bootstrap_equals_the_unbudgeted_one(groups, method):
    data = _data(n=600, groups=groups)
    wide, how = bootstrap(data, BootstrapConfig(n_resamples=600, method=method, seed=2, memory_gib=8.0))
    assert how.stratified or groups  # the rare class: strata drawn in turn, the stream still the same
    for memory in (1e-3, 1e-6):  # a few replicates per pass; one per pass
        narrow, _ = bootstrap(data, BootstrapConfig(n_resamples=600, method=method, seed=2, memory_gib=memory))
        for m, iv in wide.items():
            assert (narrow[m].low, narrow[m].high) == pytest.approx((iv.low, iv.high), abs=1e-12, nan_ok=True), m
    a, b = _data(n=600, seed=0, groups=groups), _data(n=600, seed=0, groups=groups)
    b.y_pred = np.roll(b.y_pred, 1)
    d1, _ = paired_comparison(a, b, BootstrapConfig(n_resamples=300, method=method, memory_gib=8.0))
    d2, _ = paired_comparison(a, b, BootstrapConfig(n_resamples=300, method=method, memory_gib=1e-5))
    for m in d1:
        assert (d2[m].low, d2[m].high, d2[m].p) == pytest.approx((d1[m].low, d1[m].high, d1[m].p),
                                                                       abs=1e-12, nan_ok=True), m


def test_jackknife_groups_are_random_near_equal_and_exact_below_the_threshold():
    assert np.array_equal(jackknife_assignment(500, 1000, 0), np.arange(500))  # leave-one-out: today's jackknife
    g = jackknife_assignment(10_007, 1000, 0)
    sizes = np.bincount(g)
    assert len(sizes) == 1000 and sizes.min() >= 10 and sizes.max() <= 11
    assert np.array_equal(g, jackknife_assignment(10_007, 1000, 0)) and not np.array_equal(g, jackknife_assignment(
        10_007, 1000, 1))
    assert not np.array_equal(g[:20], np.arange(20) % 1000)  # not contiguous runs of similar units


def test_grouped_jackknife_bca_is_within_a_stated_tolerance_of_the_exact_one():
    """n = 3,000 samples: BCa with 100 groups and with the exact leave-one-out jackknife (3,000 evaluations); the
    endpoints agree within 2% of the interval's width (measured: within 0.5%). README states the tolerance."""
    data = _data(n=3000, rare=False)
    exact, _ = bootstrap(data, BootstrapConfig(n_resamples=2000, method="bca", jackknife_groups=5000))
    grouped, _ = bootstrap(data, BootstrapConfig(n_resamples=2000, method="bca", jackknife_groups=100))
    assert len(jackknife(data, "sample", BootstrapConfig(jackknife_groups=100))["accuracy"]) == 100
    for m in ("accuracy", "auroc_macro", "f1", "kappa_quadratic"):
        width = exact[m].high - exact[m].low
        assert abs(grouped[m].low - exact[m].low) < 0.02 * width, m
        assert abs(grouped[m].high - exact[m].high) < 0.02 * width, m


def test_bootstrap_options_reach_the_statistics():
    from probebench.report.tables import ReportOptions, _method_text

    opts = ReportOptions.of(method="bca", bootstrap_memory=0.5, jackknife_groups=200)
    assert opts.bootstrap.memory_gib == 0.5 and opts.bootstrap.jackknife_groups == 200
    assert "BCa bootstrap (acceleration from the leave-one-out jackknife up to 200 units" in _method_text(opts)
    with pytest.raises(Exception, match="at least 20"):
        BootstrapConfig(jackknife_groups=3)
    with pytest.raises(Exception, match="positive number of GiB"):
        BootstrapConfig(memory_gib=0)


def test_the_thread_policy_honours_the_affinity_mask_the_quota_and_omp_num_threads(monkeypatch):
    """A child process restricted to one CPU sees one; OMP_NUM_THREADS and PROBEBENCH_THREADS win in that order
    of precedence (ours first); a cgroup quota caps the mask; apply_threads sets torch and BLAS."""
    import os
    import subprocess
    import sys

    from threadpoolctl import threadpool_info

    from probebench import threads

    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from probebench.threads import available_cpus, default_threads; print(available_cpus(), default_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PROBEBENCH_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["1", "1"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 3)  # cpu.max "300000 100000"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PROBEBENCH_THREADS", raising=False)
    assert threads.available_cpus() == 3 and threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.default_threads() == 2
    monkeypatch.setenv("PROBEBENCH_THREADS", "1")
    assert threads.default_threads() == 1
    monkeypatch.setenv("PROBEBENCH_THREADS", "none")
    with pytest.raises(Exception, match="PROBEBENCH_THREADS must be a whole number"):
        threads.default_threads()
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1 and torch.get_num_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info())
        with threads.one_thread():
            assert torch.get_num_threads() == 1
    finally:
        threads.apply_threads(before)


def test_cgroup_quota_is_read_from_cpu_max(tmp_path, monkeypatch):
    from probebench import threads

    real = threads.Path
    for text, want in (("max 100000", None), ("250000 100000", 3), ("50000 100000", 1)):
        (tmp_path / "cpu.max").write_text(text + "\n")
        monkeypatch.setattr(threads, "Path", lambda p: tmp_path / "cpu.max" if p == "/sys/fs/cgroup/cpu.max" else real(p))
        assert threads._cgroup_cpus() == want, text


def test_threads_option_is_checked_and_passed_on(monkeypatch):
    from typer.testing import CliRunner

    from probebench.cli import app

    monkeypatch.delenv("PROBEBENCH_THREADS", raising=False)
    res = CliRunner().invoke(app, ["--threads", "0", "models"])
    assert res.exit_code == 2 and "--threads must be at least 1" in res.output
    res = CliRunner().invoke(app, ["--threads", "1", "models"])
    assert res.exit_code == 0 and __import__("os").environ["PROBEBENCH_THREADS"] == "1"


def _store(path, n=12_000, d=256, k=4, chunk=1000):
    """A complete store as ``extract`` lays it out (the arrays ``read_features`` reads), splits 70/10/20."""
    import zarr

    from probebench.features.cache import SPLIT_CODES

    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    split = rng.choice([SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]], size=n, p=[0.7, 0.1, 0.2])
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    x = (rng.normal(size=(n, d)) + 2 * np.eye(k, d)[labels]).astype(np.float32)
    root.create_array("features", data=x, chunks=(chunk, d))
    root.create_array("labels", data=labels.astype(np.int64))
    root.create_array("split", data=split.astype(np.int8))
    skip = np.array([""] * n, dtype=str)
    skip[5] = "unreadable"  # a skipped image: its row is dropped
    for name, values in (("sample_ids", np.array([f"s{i}" for i in range(n)])),
                         ("groups", np.array([f"p{i}" for i in range(n)])), ("skip_reason", skip)):
        root.create_array(name, shape=(n,), dtype=str)[:] = values
    root.attrs.update({"split_codes": SPLIT_CODES, "classes": [str(c) for c in range(k)]})
    return x, labels, split, skip


def test_fit_reads_each_split_as_a_view_and_holds_the_features_about_once(tmp_path):
    """read_features(by_split=True): the same rows as the store order, grouped train/val/test, each split a view
    of one array; reading and training a linear head peak (tracemalloc) at about the features' size, not 3.7x."""
    import tracemalloc

    from probebench.features.cache import read_features, split_rows
    from probebench.train.heads import LinearHead

    x, labels, split, skip = _store(tmp_path / "s.zarr")
    plain = read_features(tmp_path / "s.zarr")
    kept = skip == ""
    assert np.array_equal(plain.features, x[kept]) and np.array_equal(plain.labels, labels[kept])
    LinearHead(epochs=1).fit(x[:50], labels[:50], x[50:60], labels[60:70], n_classes=4)  # imports before tracing
    tracemalloc.start()
    f = read_features(tmp_path / "s.zarr", by_split=True)
    parts = {k: split_rows(f.split == k) for k in ("train", "val", "test")}
    tr, va = parts["train"], parts["val"]
    LinearHead(epochs=2).fit(f.features[tr], f.labels[tr], f.features[va], f.labels[va], n_classes=4)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(isinstance(p, slice) for p in parts.values())
    for name, rows in parts.items():  # each split: the store's rows of that split, in store order
        code = {"train": 0, "val": 1, "test": 2}[name]
        assert np.array_equal(f.features[rows], x[kept & (split == code)]), name
        assert np.shares_memory(f.features[rows], f.features)
    assert peak < 1.5 * x.nbytes, peak / x.nbytes  # measured 1.4x at this small size (a chunk and the strings
    # besides the features); before: the unfiltered copy, copies of each split and a ones column, 3.7x


def test_a_streamed_fit_trains_the_same_weights_as_the_in_memory_one(tiny, tmp_path, monkeypatch):
    """Above --fit-memory the linear head trains from the store a window of batches at a time: the same batches in
    the same order, so the same test probabilities, bit for bit; heads that need memory say so."""
    from probebench import extract, fit
    from probebench.errors import ProbebenchError
    from probebench.features.cache import StoreRows, read_features
    from probebench.runs import read_run

    spec, root = tiny
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", workers=0, progress=False,
                    weights="random", resize=32, crop=32, chunk_size=8)
    f = read_features(store, by_split=True)
    rows = StoreRows(store, f.rows, budget_rows=5)
    assert np.array_equal(rows.gather(np.array([7, 0, 3, 3, 12])), f.features[[7, 0, 3, 3, 12]])
    batches = [np.array([4, 1]), np.array([9, 2, 0]), np.array([11])]
    got = list(rows.batches(batches))  # windows of at most 5 rows: [4, 1, 9, 2, 0], then [11]
    assert [list(i) for _, i in got] == [list(b) for b in batches]
    assert all(np.array_equal(x, f.features[b]) for (x, _), b in zip(got, batches))
    common = dict(data_root=root, cache_dir=tmp_path / "c", epochs=4, batch_size=8, progress=False, weights="random",
                  resize=32, crop=32)
    memory = read_run(fit("resnet50", str(spec), runs_dir=tmp_path / "r1", **common))
    windows = []
    real = StoreRows.gather
    monkeypatch.setattr(StoreRows, "gather", lambda self, p: windows.append(len(p)) or real(self, p))
    streamed = read_run(fit("resnet50", str(spec), runs_dir=tmp_path / "r2", fit_memory=1e-6, **common))
    assert windows[:2] == [8, 12] and windows[2:] == [8, 8, 4] * 4  # val, test, then one batch per window
    assert np.array_equal(memory.proba, streamed.proba)
    with pytest.raises(ProbebenchError, match=r"exceed the fit memory budget .* linear head without --grid"):
        fit("resnet50", str(spec), runs_dir=tmp_path / "r3", fit_memory=1e-6, head="mlp", **common)
