"""``fit``: train a head on cached features and write a run directory (mode ``frozen``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from probebench.features import cache as fcache
from probebench.features.cache import split_rows
from probebench.data.datasets import check_trainable, data_roots
from probebench.data.splits import cv_folds, label_subset
from probebench.errors import ProbebenchError
from probebench.features.spec import FeatureSpec, locate_store
from probebench.train.config import TrainConfig, check_fit_options, split_training
from probebench.validate import check_options
from probebench.train.heads import make_head, trains
from probebench.stats.calibration import apply_temperature, bound_warning, fit_temperature
from probebench.stats.metrics import point_metrics
from probebench.progress import make_progress
from probebench.runs import RunRecord, budget_text, check_writable, config_hash, identical_run, run_folder, write_run

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
    return [a if hasattr(a, "batches") else a.astype(np.float32, copy=False)  # float32 as it is; a store's rows
            for a in arrays]


def budgets_of(label_fractions: list[float] | None = None, shots: list[int] | None = None) -> list[dict | None]:
    """The label budgets asked for, smallest first: ``{"label_fraction": f}`` / ``{"shots": k}``; [None] for all."""
    out = [{"label_fraction": float(f)} for f in sorted(label_fractions or [])]
    out += [{"shots": int(k)} for k in sorted(shots or [])]
    return out or [None]


def _train_head(head: str, grid: bool, seed: int, options: dict, x_tr, y_tr, x_va, y_va, x_te, n_classes: int, *,
                normalize, standardize, calibrate, progress, title: str):
    """One head trained and applied: (estimator, test proba, validation proba, seconds, calibration record)."""
    x_tr, x_va, x_te = prepare_features(x_tr, x_va, x_te, normalize=normalize, standardize=standardize)
    estimator = make_head(head, grid=grid, seed=seed, **options)
    start = time.perf_counter()
    with make_progress(progress and trains(head, grid), unit="epoch") as bar:
        task = bar.add_task(f"fit {estimator.name} on {title}", total=options["epochs"], info="")
        estimator.fit(x_tr, y_tr, x_va, y_va, n_classes, on_epoch=lambda r: bar.update(
            task, advance=1, info=f"this epoch's val acc {r['val_accuracy']:.3f}"))
    seconds = time.perf_counter() - start
    proba = estimator.predict_proba(x_te)
    val_proba = estimator.predict_proba(x_va)
    if not (np.isfinite(proba).all() and np.isfinite(val_proba).all()):
        raise ProbebenchError(f"the {estimator.name} head on {title} gives non-finite probabilities: training "
                              "diverged; lower --lr, or --standardize the features; no run was written")
    calibration = None
    if calibrate == "temperature":  # fitted on validation only, then applied to both
        calibration = fit_temperature(val_proba, y_va)
        sys.stderr.write(bound_warning(calibration))
        proba = apply_temperature(proba, calibration["temperature"])
        val_proba = apply_temperature(val_proba, calibration["temperature"])
    return estimator, proba, val_proba, seconds, calibration


def fit(features: FeatureSpec | str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache",
        runs_dir: str | Path = "runs", head: str = "linear", grid: bool = False, train: TrainConfig | None = None,
        hidden: int = 256, normalize: str | None = None, standardize: bool = False, class_weight: str | None = None,
        seeds: list[int] | None = None, label_fractions: list[float] | None = None, shots: list[int] | None = None,
        cv: int | None = None, calibrate: str | None = None, progress: bool = True, force: bool = False,
        on_run=None, fit_memory: float | None = None, **options) -> Path:
    """Fit a head on the cache that ``extract`` made with the same feature spec (or a model name plus the spec's
    options); returns the (first) run folder. Needs only the cache: see ``features.locate_store``.

    ``train`` is the training protocol (``TrainConfig``; the study's when None); its fields may also be given as
    keywords (``epochs=5``), as the feature spec's may.

    ``seeds`` repeats the fit once per seed; the runs share a ``seed_group`` so that ``report`` can show
    their spread next to the first seed's bootstrap interval.

    ``label_fractions`` / ``shots``: one run per budget and seed, trained on a nested, group-whole, class-stratified
    share of the training split (``data.splits.label_subset``, drawn with the seed); validation and test stay whole.
    ``cv``: k-fold cross-validation over every sample of the store by group (``data.splits.cv_folds``), validation
    the next fold, the out-of-fold predictions pooled into one run with per-fold metrics beside them.
    ``calibrate="temperature"``: a temperature fitted on validation is applied to the test probabilities.
    ``fit_memory``: GiB the features may take (default: half the free memory); above it the linear head trains from
    the store a window of batches at a time (``StoreRows``), the same batches in the same order: the same weights.

    A seed whose run already exists with the same settings on the same cache (same cache key, library versions,
    head and options) is not trained again: that run is reused, unless ``force``. ``on_run(path)`` is called
    after each new run is written (the command line's ``--track`` logs it there).
    """
    overrides, options = split_training(options)
    train = TrainConfig.of(train, **overrides)
    check_options(head=head)
    check_fit_options(hidden=hidden, normalize=normalize, standardize=standardize,
                      class_weight=class_weight, seeds=seeds, grid=grid, label_fractions=label_fractions, shots=shots,
                      cv=cv, calibrate=calibrate)
    check_writable(runs_dir)
    spec = FeatureSpec.of(features, **options)
    model = spec.model
    path = locate_store(spec, dataset, data_root=data_root, cache_dir=cache_dir)
    stream = _stream_rows(path, fit_memory, head=head, grid=grid, cv=cv, normalize=normalize, standardize=standardize)
    feats = fcache.read_features(path, by_split=not cv, load=not stream)  # a split: a view of the array, not a copy
    n_classes = len(feats.attrs["classes"])
    shared, cache_details = _store_record(feats, path, model, {"normalize": normalize, "standardize": standardize},
                                          data_root)
    _check_store(feats, shared["counts"], cv, calibrate)
    seed_list = list(seeds) if seeds else [train.seed]
    options = dict(epochs=train.epochs, lr=train.lr, batch_size=train.batch_size, weight_decay=train.weight_decay,
                   hidden=hidden, class_weight=class_weight, select=train.select_metric, optimizer=train.optimizer,
                   patience=train.patience)
    attrs = feats.attrs
    base = {**shared, **cache_details}
    extra = {k: v for k, v in (("cv", cv), ("calibrate", calibrate)) if v}  # absent when unused: older digests hold
    budgets = budgets_of(label_fractions, shots)
    group = config_hash({**base, "head": head, "grid": grid, "options": options, "seeds": seed_list, **extra,
                         **({"budgets": budgets} if budgets != [None] else {})})
    prep = dict(normalize=normalize, standardize=standardize, calibrate=calibrate, progress=progress)
    first = None
    identity = {k: v for k, v in base.items() if k not in VARYING}
    for budget in budgets:
        seed_group = config_hash({"group": group, "budget": budget}) if budget else group
        for position, s in enumerate(seed_list):
            digest = config_hash({**identity, "head": head, "grid": grid, "options": options, "seed": s,
                                  "seeds": seed_list if len(seed_list) > 1 else None, **extra,
                                  **({"budget": budget} if budget else {})})
            done = None if force else identical_run(run_folder(runs_dir, attrs["dataset"], model, "frozen"), digest)
            if done is not None:
                sys.stderr.write(f"an identical run exists, reused: {done} (--force trains it again)\n")
                first = first or done
                continue
            title = (f"{model} × {attrs['dataset']} (seed {s}" + (f", {budget_text(budget)}" if budget else "")
                     + ")")
            trained = (_cross_validate(feats, cv, s, head, grid, options, n_classes, prep, title) if cv else
                       _fit_split(feats, budget, s, head, grid, options, n_classes, prep, title, stream))
            estimator, record_details, run_data, metrics, history = trained
            record = RunRecord(**shared, head=estimator.name, seed=s, head_label=estimator.describe(),
                               head_params=estimator.params(), details={
                                   **cache_details, "selection": estimator.selection_,
                                   "seed_group": seed_group if len(seed_list) > 1 else None, "seed_position": position,
                                   "seeds_asked": seed_list if len(seed_list) > 1 else None, "fit_group": group,
                                   **record_details})
            run = write_run(runs_dir, record, **run_data, history=history, metrics=metrics, run_suffix=digest)
            if on_run is not None:
                on_run(run)
            first = first or run
            if progress:
                sys.stderr.write(_summary(title, estimator, cv, metrics))
    return first


VARYING = ("data_root", "cache_path", "feature_dim", "extract_img_s")  # not inputs: where files lie, a speed


def _check_store(feats, counts: dict, cv: int | None, calibrate: str | None) -> None:
    """A store a head can be fitted on: every class in training (cross-validation draws its own), and validation
    samples when a temperature is to be fitted on them."""
    if not cv:
        check_trainable(feats.attrs["dataset"], feats.attrs["classes"], counts)
    if calibrate and not cv and not (feats.split == "val").any():
        raise ProbebenchError("--calibrate temperature fits the temperature on the validation split, and this "
                              "dataset has no validation samples")


def _store_record(feats, path, model: str, features: dict, data_root) -> tuple[dict, dict]:
    """What a frozen run records of its store: the run record's fields that depend on neither head nor seed, and
    the cache's own details (key, path, dtype, feature options and dimension, data roots)."""
    split, attrs = feats.split, feats.attrs
    n_classes = len(attrs["classes"])
    counts = {s: np.bincount(feats.labels[split == s], minlength=n_classes).tolist() for s in ("train", "val", "test")}
    shared = dict(
        mode="frozen", path="cache", dataset=attrs["dataset"], model=model, classes=attrs["classes"],
        weights=attrs["weights"], tap=attrs["tap"], preprocessing=attrs["preprocessing"],
        manifest_hash=attrs["manifest_hash"], n={s: int((split == s).sum()) for s in ("train", "val", "test")},
        counts=counts, group_kind=attrs.get("group_kind", "group"), device=attrs.get("device"),
        extract_img_s=(round(attrs["n_samples"] / attrs["extract_seconds"], 2) if attrs.get("extract_seconds")
                       else None),
        skipped=attrs["skipped"], junk_files=attrs.get("junk_files", 0), versions=fcache.versions())
    cache_details = {"precision": attrs["precision"], "store_dtype": attrs["store_dtype"], "cache_key": attrs["key"],
                     "cache_path": str(path), "features": features, "feature_dim": int(feats.attrs["feature_dim"]),
                     "data_root": [str(r) for r in data_roots(data_root)]}
    return shared, cache_details


def _summary(title: str, estimator, cv: int | None, metrics: dict) -> str:
    """The line a fit prints per run: test accuracy, F1 and AUROC, and the kept model's validation accuracy."""
    t, val = metrics["test"], metrics["val_accuracy"]
    kept = "none: no validation set" if val is None else f"{100 * val:.2f}"  # 0 is a value, not a missing one
    return (f"{title} {estimator.describe()}{f' {cv}-fold CV' if cv else ''}: test accuracy "
            f"{100 * t['accuracy']:.2f}, F1 {100 * t['f1']:.2f}, AUROC {100 * t['auroc_macro']:.2f} (validation "
            f"accuracy of the kept model {kept}); intervals: probebench report\n")


def _stream_rows(path, fit_memory: float | None, *, head: str, grid: bool, cv, normalize, standardize) -> int:
    """0 when the store's features fit the memory budget, else how many training rows to read at a time."""
    from probebench.budget import available_memory, gib

    _, _, attrs = fcache.read_index(path)
    size = int(attrs["n_samples"]) * int(attrs["feature_dim"]) * 4
    if fit_memory is not None:
        budget = fit_memory * 2 ** 30
    else:
        free = available_memory()
        budget = free / 2 if free else float("inf")
    if size <= budget:
        return 0
    if head != "linear" or grid or cv or normalize or standardize:
        raise ProbebenchError(f"the features ({gib(size)}) exceed the fit memory budget ({gib(budget)}); training "
                              "from the store works for the linear head without --grid, --cv, --normalize or "
                              "--standardize: raise --fit-memory, or fit on a machine with more memory")
    return max(1, int(budget // (int(attrs["feature_dim"]) * 4)))  # a window holds at least one batch


def _fit_split(feats, budget, s, head, grid, options, n_classes, prep, title, stream: int = 0):
    """Train on the store's training split (or a label budget of it), select on validation, predict the test."""
    split, labels, groups = feats.split, feats.labels, feats.groups
    train = split == "train"
    details = {}
    if budget:
        train[train] = label_subset(labels[train], groups[train], seed=s, fraction=budget.get("label_fraction"),
                                    shots=budget.get("shots"))
        details = {"budget": budget, "train_used": {
            "samples": int(train.sum()), "groups": int(len(np.unique(groups[train]))),
            "per_class": np.bincount(labels[train], minlength=n_classes).tolist()}}
    val, test = split == "val", split == "test"
    if feats.features is None:  # above the memory budget: training rows read from the store as the batches need them
        rows = feats.rows
        x_tr = fcache.StoreRows(feats.path, rows[train], stream)
        x_va, x_te = (fcache.StoreRows(feats.path, rows[m], 1).gather(np.arange(int(m.sum()))) for m in (val, test))
    else:
        x = feats.features
        x_tr, x_va, x_te = x[split_rows(train)], x[split_rows(val)], x[split_rows(test)]
    estimator, proba, val_proba, seconds, calibration = _train_head(
        head, grid, s, options, x_tr, labels[train], x_va, labels[val], x_te, n_classes, title=title, **prep)
    if calibration:
        details["calibration"] = calibration
    y_va, y_te = labels[val], labels[test]
    metrics = {"test": point_metrics(y_te, proba.argmax(1), n_classes, proba), "best_epoch": estimator.best_epoch_,
               "fit_seconds": round(seconds, 3),
               "val_accuracy": float((val_proba.argmax(1) == y_va).mean()) if len(y_va) else None}
    history = estimator.history_
    if history and "val_accuracy" in history[0]:
        metrics["best_val_accuracy"] = max(r["val_accuracy"] for r in history)
    run_data = dict(sample_ids=feats.sample_ids[test], groups=feats.groups[test], y_true=y_te, proba=proba)
    return estimator, details, run_data, metrics, history


def _cross_validate(feats, k, s, head, grid, options, n_classes, prep, title):
    """k folds over every sample by group: test fold i, validation fold i+1, training the rest; the out-of-fold
    test predictions pooled in sample order, with each fold's own metrics."""
    labels, groups = feats.labels, feats.groups
    fold = cv_folds(labels, groups, k, seed=s)
    proba = np.zeros((len(labels), n_classes))
    folds, history, calibrations, seconds = [], [], [], 0.0
    val_hits = 0
    for i in range(k):
        test, val = fold == i, fold == (i + 1) % k
        train = ~(test | val)
        missing = [feats.attrs["classes"][c] for c in range(n_classes) if not (labels[train] == c).any()]
        if missing:
            raise ProbebenchError(f"{k}-fold cross-validation: fold {i + 1}'s training part has no "
                                  f"{', '.join(missing)} sample; use fewer folds (--cv)")
        estimator, p, val_p, sec, calibration = _train_head(
            head, grid, s, options, feats.features[train], labels[train], feats.features[val], labels[val],
            feats.features[test], n_classes, title=f"{title}, fold {i + 1}/{k}", **prep)
        proba[test] = p
        seconds += sec
        hits = int((val_p.argmax(1) == labels[val]).sum())
        val_hits += hits
        if calibration:
            calibrations.append(calibration)
        folds.append({"fold": i + 1, "n_test": int(test.sum()), "n_val": int(val.sum()), "n_train": int(train.sum()),
                      "best_epoch": estimator.best_epoch_,
                      "val_accuracy": hits / int(val.sum()),
                      "test": point_metrics(labels[test], p.argmax(1), n_classes, p)})
        history += [{"fold": i + 1, **row} for row in (estimator.history_ or [])]
    details = {"cv": {"folds": k, "seed": s, "samples": int(len(labels)),
                      "fold_sizes": [int((fold == i).sum()) for i in range(k)],
                      "splits_pooled": sorted(set(feats.split.tolist()))}}
    if calibrations:
        details["calibration"] = {"method": "temperature", "per_fold": calibrations}
    metrics = {"test": point_metrics(labels, proba.argmax(1), n_classes, proba), "folds": folds,
               "best_epoch": [f["best_epoch"] for f in folds], "fit_seconds": round(seconds, 3),
               "val_accuracy": val_hits / float(len(labels))}  # every sample is validation once
    run_data = dict(sample_ids=feats.sample_ids, groups=groups, y_true=labels, proba=proba)
    return estimator, details, run_data, metrics, history
