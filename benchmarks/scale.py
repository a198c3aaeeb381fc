"""Time and peak memory of fit, report (percentile and BCa) and export at 10k, 100k and 1M samples.

Builds synthetic feature stores (the layout ``extract`` writes: features, labels, splits 70/10/20, sample ids and
groups), then runs each stage in a fresh process and reads its peak resident memory (ru_maxrss), wall and CPU
time; prints one JSON line per (size, dim, stage) and the growth exponent of each stage between the smallest and
the largest size (log time / log n). The stages call the library as the commands do:

- fit: ``read_features(by_split=True)`` (what ``fit`` reads) + the linear head (``--epochs``, default 10) + test
  probabilities;
- report: ``bootstrap`` of the test predictions (20% of n), percentile and BCa, ``--resamples`` replicates;
- export: ``read_features`` + ``np.savez`` (what ``export --format npz`` writes).

``work_s`` / ``work_cpu_s`` time the stage after its imports (torch alone is about 0.5 GiB resident and 2 s:
``base_mib``); the growth exponent uses ``work_cpu_s``. Thread counts are printed with each stage.

    python benchmarks/scale.py                                   # 10k and 100k x 1,024
    python benchmarks/scale.py --sizes 10000,100000,1000000 --dims 1024,1536
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 7  # classes (HAM10000's seven)
CHUNK = 4096


def build_store(path: Path, n: int, d: int, seed: int = 0) -> None:
    """A complete store of ``n`` x ``d`` float32 features with a class signal, written chunk by chunk."""
    import zarr

    from probebench.features.cache import SPLIT_CODES

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    u = rng.random(n)
    split = np.where(u < 0.7, SPLIT_CODES["train"], np.where(u < 0.8, SPLIT_CODES["val"], SPLIT_CODES["test"]))
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    feats = root.create_array("features", shape=(n, d), chunks=(CHUNK, d), dtype="float32")
    centres = rng.normal(size=(K, d)).astype(np.float32) * 0.15
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        feats[start:stop] = rng.normal(size=(stop - start, d)).astype(np.float32) + centres[labels[start:stop]]
    root.create_array("labels", data=labels.astype(np.int64))
    root.create_array("split", data=split.astype(np.int8))
    for name, values in (("sample_ids", [f"s{i}" for i in range(n)]), ("groups", [f"p{i // 2}" for i in range(n)]),
                         ("skip_reason", [""] * n)):
        arr = root.create_array(name, shape=(n,), dtype=str, chunks=(max(1, min(n, 1 << 16)),))
        arr[:] = np.asarray(values, dtype=str)
    root.attrs.update({"split_codes": SPLIT_CODES, "classes": [f"c{i}" for i in range(K)], "n_samples": n,
                       "feature_dim": d, "complete": True})


def stage(name: str, store: Path, epochs: int, resamples: int) -> dict:
    """One stage in this process; returns what it did (the caller measures time and memory)."""
    import resource

    __import__("torch")  # loaded before the clock starts, as every stage's command has it loaded

    from probebench.features.cache import read_features, split_rows
    from probebench.stats.bootstrap import BootstrapConfig, EvalData, bootstrap
    from probebench.threads import apply_threads, thread_counts
    from probebench.train.heads import LinearHead

    apply_threads()
    base = {"base_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    start, cpu = time.perf_counter(), time.process_time()
    out = _work(name, store, epochs, resamples, read_features, split_rows, LinearHead, BootstrapConfig, EvalData,
                bootstrap)
    return {**out, **base, "work_s": round(time.perf_counter() - start, 2),
            "work_cpu_s": round(time.process_time() - cpu, 2), "threads": thread_counts()}


def _work(name, store, epochs, resamples, read_features, split_rows, LinearHead, BootstrapConfig, EvalData,
          bootstrap) -> dict:
    if name == "fit":
        f = read_features(store, by_split=True)
        x, y, s = f.features, f.labels, f.split
        tr, va, te = (split_rows(s == k) for k in ("train", "val", "test"))
        head = LinearHead(epochs=epochs).fit(x[tr], y[tr], x[va], y[va], n_classes=K)
        proba = head.predict_proba(x[te])
        np.save(store.parent / "proba.npy", proba)
        np.save(store.parent / "y_test.npy", y[te])
        return {"test_accuracy": round(float((proba.argmax(1) == y[te]).mean()), 4)}
    if name.startswith("report"):
        proba, y = np.load(store.parent / "proba.npy"), np.load(store.parent / "y_test.npy")
        method = name.split("-")[1]
        out, _ = bootstrap(EvalData(y, proba.argmax(1), proba, None, K),
                           BootstrapConfig(n_resamples=resamples, method=method, unit="sample"))
        return {"n_test": len(y), "auroc": [round(out["auroc_macro"].low, 4), round(out["auroc_macro"].high, 4)]}
    if name == "export":
        f = read_features(store)
        with open(store.parent / "export.npz", "wb") as fh:
            np.savez(fh, features=f.features, labels=f.labels, sample_ids=f.sample_ids, groups=f.groups,
                     split=f.split)
        size = (store.parent / "export.npz").stat().st_size
        (store.parent / "export.npz").unlink()
        return {"bytes": size}
    raise SystemExit(f"unknown stage {name}")


def measured(name: str, store: Path, epochs: int, resamples: int) -> dict:
    """``stage`` in a fresh process: wall and CPU seconds, peak resident memory."""
    code = ("import json, resource, sys, time; from pathlib import Path; sys.path.insert(0, 'benchmarks'); "
            "import scale; t = time.perf_counter(); c = time.process_time(); "
            f"r = scale.stage({name!r}, Path({str(store)!r}), {epochs}, {resamples}); "
            "r.update(wall_s=round(time.perf_counter() - t, 2), cpu_s=round(time.process_time() - c, 2), "
            "peak_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)); print(json.dumps(r))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    if res.returncode:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dims", default="1024")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--stages", default="fit,report-percentile,report-bca,export")
    ap.add_argument("--work", default=None, help="Folder for the synthetic stores (default: a temporary one).")
    args = ap.parse_args()
    sizes, dims = [int(s) for s in args.sizes.split(",")], [int(s) for s in args.dims.split(",")]
    stages = args.stages.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="probebench-scale-"))
    results: dict = {}
    for d in dims:
        for n in sizes:
            store = work / f"n{n}_d{d}" / "store.zarr"
            shutil.rmtree(store.parent, ignore_errors=True)
            store.parent.mkdir(parents=True)
            t = time.perf_counter()
            build_store(store, n, d)
            print(json.dumps({"n": n, "dim": d, "stage": "build", "wall_s": round(time.perf_counter() - t, 1)}),
                  flush=True)
            for name in stages:
                r = measured(name, store, args.epochs, args.resamples)
                results[(d, name, n)] = r
                print(json.dumps({"n": n, "dim": d, "stage": name, **r}), flush=True)
            shutil.rmtree(store.parent, ignore_errors=True)
        for name in stages:
            a, b = results.get((d, name, sizes[0]), {}), results.get((d, name, sizes[-1]), {})
            if len(sizes) > 1 and "work_cpu_s" in a and "work_cpu_s" in b and a["work_cpu_s"] > 0:
                slope = math.log(b["work_cpu_s"] / a["work_cpu_s"]) / math.log(sizes[-1] / sizes[0])
                print(json.dumps({"dim": d, "stage": name, "growth_exponent_cpu": round(slope, 2),
                                  "from": sizes[0], "to": sizes[-1]}), flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cpus": os.cpu_count(), "max_rss_children_mib": round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
