"""``fit``: train a head on cached features and write a run directory (mode ``frozen``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from probebench.features import cache as fcache
from probebench.data.datasets import check_trainable, data_roots
from probebench.errors import ProbebenchError
from probebench.features.spec import FeatureSpec, locate_store
from probebench.train.heads import make_head
from probebench.stats.metrics import point_metrics
from probebench.progress import make_progress
from probebench.runs import RunRecord, check_writable, config_hash, run_folder, write_run
from probebench.validate import check_options

NORMALIZE = (None, "l2")


def prepare_features(train: np.ndarray, *others: np.ndarray, normalize: str | None = None,
                     standardize: bool = False) -> list[np.ndarray]:
    """L2-normalise rows and/or standardise with the mean and sd of the training rows only."""
    if normalize not in NORMALIZE:
        raise ProbebenchError(f"--normalize {normalize!r} is not one of: l2")
    arrays = [train, *others]
    if normalize == "l2":
        arrays = [a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays]
    if standardize:
        mean, sd = arrays[0].mean(axis=0), arrays[0].std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        arrays = [(a - mean) / sd for a in arrays]
    return [a.astype(np.float32) for a in arrays]


def fit(features: FeatureSpec | str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache",
        runs_dir: str | Path = "runs", head: str = "linear", grid: bool = False,
        epochs: int = 100, lr: float = 1e-4, batch_size: int = 32, weight_decay: float = 0.0, hidden: int = 256,
        normalize: str | None = None, standardize: bool = False, class_weight: str | None = None,
        select_metric: str = "val_accuracy", optimizer: str = "adam", patience: int | None = None, seed: int = 0,
        seeds: list[int] | None = None, progress: bool = True, force: bool = False, on_run=None,
        **options) -> Path:
    """Fit a head on the cache that ``extract`` made with the same feature spec (or a model name plus the spec's
    options); returns the (first) run folder. Needs only the cache: see ``features.locate_store``.

    ``seeds`` repeats the fit once per seed; the runs share a ``seed_group`` so that ``report`` can show
    their spread next to the first seed's bootstrap interval.

    A seed whose run already exists with the same settings on the same cache (same cache key, library versions,
    head and options) is not trained again: that run is reused, unless ``force``. ``on_run(path)`` is called
    after each new run is written (the command line's ``--track`` logs it there).
    """
    check_options(head=head, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, hidden=hidden,
                  normalize=normalize, standardize=standardize, class_weight=class_weight,
                  select_metric=select_metric, optimizer=optimizer, patience=patience, seed=seed, seeds=seeds,
                  grid=grid)
    check_writable(runs_dir)
    spec = FeatureSpec.of(features, **options)
    model = spec.model
    path = locate_store(spec, dataset, data_root=data_root, cache_dir=cache_dir)
    feats = fcache.read_features(path)
    test = feats.split == "test"
    x_tr, x_va, x_te = prepare_features(feats.features[feats.split == "train"], feats.features[feats.split == "val"],
                                        feats.features[test], normalize=normalize, standardize=standardize)
    y_tr, y_va, y_te = (feats.labels[feats.split == s] for s in ("train", "val", "test"))
    n_classes = len(feats.attrs["classes"])
    counts = {s: np.bincount(feats.labels[feats.split == s], minlength=n_classes).tolist()
              for s in ("train", "val", "test")}
    check_trainable(feats.attrs["dataset"], feats.attrs["classes"], counts)
    seed_list = list(seeds) if seeds else [seed]
    options = dict(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, hidden=hidden,
                   class_weight=class_weight, select=select_metric, optimizer=optimizer, patience=patience)
    attrs = feats.attrs
    shared = dict(  # the fields of the run record that do not depend on the head or the seed
        mode="frozen", path="cache", dataset=attrs["dataset"], model=model, classes=attrs["classes"],
        weights=attrs["weights"], tap=attrs["tap"], preprocessing=attrs["preprocessing"],
        manifest_hash=attrs["manifest_hash"], n={s: int((feats.split == s).sum()) for s in ("train", "val", "test")},
        counts=counts, group_kind=attrs.get("group_kind", "group"), device=attrs.get("device"),
        extract_img_s=(round(attrs["n_samples"] / attrs["extract_seconds"], 2) if attrs.get("extract_seconds")
                       else None),
        skipped=attrs["skipped"], junk_files=attrs.get("junk_files", 0), versions=fcache.versions())
    cache_details = {"precision": attrs["precision"], "store_dtype": attrs["store_dtype"], "cache_key": attrs["key"],
                     "cache_path": str(path), "features": {"normalize": normalize, "standardize": standardize},
                     "data_root": [str(r) for r in data_roots(data_root)]}
    base = {**shared, **cache_details}
    group = config_hash({**base, "head": head, "grid": grid, "options": options, "seeds": seed_list})
    first = None
    identity = {k: v for k, v in base.items() if k not in ("data_root", "cache_path")}  # where files lie is not
    for position, s in enumerate(seed_list):                                           # what the run computes
        digest = config_hash({**identity, "head": head, "grid": grid, "options": options, "seed": s,
                              "seeds": seed_list if len(seed_list) > 1 else None})
        done = sorted(p.parent for p in run_folder(runs_dir, attrs["dataset"], model, "frozen").glob(
            f"*-{digest}/config.json"))
        if done and not force:
            sys.stderr.write(f"an identical run exists, reused: {done[-1]} (--force trains it again)\n")
            first = first or done[-1]
            continue
        estimator = make_head(head, grid=grid, seed=s, **options)
        start = time.perf_counter()
        with make_progress(progress and estimator.__class__.__name__ in ("LinearHead", "MLPHead", "GridHead"),
                           unit="epoch") as bar:
            task = bar.add_task(f"fit {estimator.name} on {model} × {attrs['dataset']} (seed {s})", total=epochs,
                                info="")
            estimator.fit(x_tr, y_tr, x_va, y_va, n_classes, on_epoch=lambda r: bar.update(
                task, advance=1, info=f"val acc {r['val_accuracy']:.3f}"))
        seconds = time.perf_counter() - start
        proba = estimator.predict_proba(x_te)
        val_proba = estimator.predict_proba(x_va)
        if not (np.isfinite(proba).all() and np.isfinite(val_proba).all()):
            raise ProbebenchError(f"the {estimator.name} head on {model} × {attrs['dataset']} (seed {s}) gives "
                                  "non-finite probabilities: training diverged; lower --lr, or --standardize the "
                                  "features; no run was written")
        record = RunRecord(**shared, head=estimator.name, seed=s, head_label=estimator.describe(),
                           head_params=estimator.params(), details={
                               **cache_details, "selection": estimator.selection_,
                               "seed_group": group if len(seed_list) > 1 else None, "seed_position": position,
                               "seeds_asked": seed_list if len(seed_list) > 1 else None})
        history = estimator.history_
        metrics = {"test": point_metrics(y_te, proba.argmax(1), n_classes, proba), "best_epoch": estimator.best_epoch_,
                   "fit_seconds": round(seconds, 3),
                   "val_accuracy": float((val_proba.argmax(1) == y_va).mean()) if len(y_va) else None}
        if history and "val_accuracy" in history[0]:
            metrics["best_val_accuracy"] = max(r["val_accuracy"] for r in history)
        run = write_run(runs_dir, record, sample_ids=feats.sample_ids[test], groups=feats.groups[test], y_true=y_te,
                        proba=proba, history=history, metrics=metrics, run_suffix=digest)
        if on_run is not None:
            on_run(run)
        first = first or run
        if progress:
            t = metrics["test"]
            sys.stderr.write(f"{model} × {attrs['dataset']} {estimator.describe()} (seed {s}): test accuracy "
                             f"{100 * t['accuracy']:.2f}, F1 {100 * t['f1']:.2f}, AUROC {100 * t['auroc_macro']:.2f} "
                             f"(validation accuracy {100 * (metrics['val_accuracy'] or float('nan')):.2f}); "
                             f"intervals: probebench report\n")
    return first
