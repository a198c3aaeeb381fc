"""``fit``: train a head on cached features and write a run directory (mode ``frozen``)."""

from __future__ import annotations

import time
from pathlib import Path

from probebench import cache as fcache
from probebench.errors import ProbebenchError
from probebench.extract import resolve_job
from probebench.heads import HEADS
from probebench.metrics import point_metrics
from probebench.progress import make_progress
from probebench.runs import write_run


def _extract_command(model: str, dataset: str, opts: dict) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in opts.items() if v not in (None, "auto"))
    return f"probebench extract --model {model} --dataset {dataset} {flags}".strip()


def fit(model: str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
        weights: str = "auto", tap: str | None = None, resize: int | None = None, crop: int | None = None,
        precision: str = "fp32", store_dtype: str = "float32", head: str = "linear", epochs: int = 100,
        lr: float = 1e-4, batch_size: int = 32, weight_decay: float = 0.0, seed: int = 0,
        progress: bool = True) -> Path:
    """Fit ``head`` on the cache that ``extract`` made with the same options; returns the run folder."""
    if head not in HEADS:
        raise ProbebenchError(f"unknown head {head!r}; heads: {', '.join(HEADS)}")
    job = resolve_job(model, dataset, data_root=data_root, weights=weights, tap=tap, resize=resize, crop=crop,
                      precision=precision, store_dtype=store_dtype)
    path = job.cache_path(cache_dir)
    root = fcache.open_store(path, job.request)
    if root is None or not root.attrs.get("complete"):
        state = "is incomplete" if root is not None else "does not exist"
        cmd = _extract_command(model, str(dataset), {
            "data_root": data_root, "cache_dir": cache_dir, "weights": weights, "tap": tap, "resize": resize,
            "crop": crop, "precision": None if precision == "fp32" else precision,
            "store_dtype": None if store_dtype == "float32" else store_dtype})
        raise ProbebenchError(f"the feature cache {path} {state}; run first:\n  {cmd}")
    feats = fcache.read_features(path)
    x_tr, y_tr = feats.subset("train")
    x_va, y_va = feats.subset("val")
    test = feats.split == "test"
    n_classes = len(feats.attrs["classes"])
    estimator = HEADS[head](epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    start = time.perf_counter()
    with make_progress(progress, unit="epoch") as bar:
        task = bar.add_task(f"fit {head} on {model} × {job.manifest.dataset}", total=epochs, info="")
        estimator.fit(x_tr, y_tr, x_va, y_va, n_classes, on_epoch=lambda r: bar.update(
            task, advance=1, info=f"val acc {r['val_accuracy']:.3f}"))
    seconds = time.perf_counter() - start
    proba = estimator.predict_proba(feats.features[test])
    attrs = feats.attrs
    config = {
        "mode": "frozen", "dataset": attrs["dataset"], "model": model, "head": head,
        "head_params": estimator.params(), "classes": attrs["classes"], "weights": attrs["weights"],
        "tap": attrs["tap"], "preprocessing": attrs["preprocessing"], "precision": attrs["precision"],
        "store_dtype": attrs["store_dtype"], "manifest_hash": attrs["manifest_hash"], "cache_key": attrs["key"],
        "cache_path": str(path), "extract_device": attrs.get("device"), "skipped": attrs["skipped"],
        "junk_files": attrs.get("junk_files", 0),
        "group_kind": attrs.get("group_kind", "group"), "versions": fcache.versions(), "data_root": str(data_root or ""),
        "n": {s: int((feats.split == s).sum()) for s in ("train", "val", "test")},
    }
    y_test = feats.labels[test]
    metrics = {"test": point_metrics(y_test, proba.argmax(1), n_classes, proba), "best_epoch": estimator.best_epoch_,
               "best_val_accuracy": max(r["val_accuracy"] for r in estimator.history_),
               "fit_seconds": round(seconds, 3)}
    return write_run(runs_dir, config, sample_ids=feats.sample_ids[test], groups=feats.groups[test], y_true=y_test,
                     proba=proba, history=estimator.history_, metrics=metrics)
