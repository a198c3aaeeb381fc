"""Run directories: ``runs/<dataset>/<model>/<mode>/<run-id>/`` with config, predictions, history, metrics.

A run is written to a temporary folder and renamed when complete, so readers never see half a run.
``report`` needs nothing else: no model, no cache.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from probebench.atomic import PARTIAL, atomic_dir


def check_writable(folder: str | Path) -> None:
    """Refuse before any work when ``folder`` cannot take new files, so a trained head is never lost."""
    import errno
    import os
    import tempfile

    from probebench.errors import ProbebenchError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probebench-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = {errno.EACCES: "no permission", errno.EROFS: "read-only file system",
                  errno.ENOSPC: "disk full"}.get(exc.errno, exc.strerror or str(exc))
        raise ProbebenchError(f"cannot write into {folder} ({reason}); choose a writable folder with --runs-dir "
                              "(or runs_dir in a study file)") from None


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _section(key: str, doc: str) -> property:
    return property(lambda self: self.details.get(key), doc=doc)


@dataclass
class RunRecord:
    """What every run's ``config.json`` holds, the same fields whether ``fit`` or ``finetune`` wrote it.

    Written flat (``details`` merged in), so the file stays plain JSON any tool reads; ``from_config``
    reads older runs too (``extract_device`` became ``device``).
    """

    mode: str  # "frozen" or "unfrozen"
    path: str  # "cache" (extract + fit) or "end-to-end" (finetune)
    dataset: str
    model: str
    classes: list
    head: str
    seed: int
    weights: dict  # sha256 (or "random"), label, source; seed for random weights; head_sha256 for a tap's layer
    tap: str
    preprocessing: dict
    manifest_hash: str
    n: dict  # samples per split
    counts: dict  # samples per split and class
    head_label: str = ""
    head_params: dict = field(default_factory=dict)
    group_kind: str = "group"
    device: str | None = None  # where the numbers were computed: the extraction (cache) or training device
    extract_img_s: float | None = None  # extraction throughput of the store (cache path)
    skipped: list = field(default_factory=list)
    junk_files: int = 0
    versions: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # what one path alone has: cache key, grid selection, seed group...

    # The sections one path or option alone writes (merged flat through ``details``), read typed: None when absent.
    run_id = _section("run_id", "the run folder's name (written by ``write_run``)")
    cache_key = _section("cache_key", "the feature store's key (cache path)")
    cache_path = _section("cache_path", "where the feature store was (cache path)")
    feature_dim = _section("feature_dim", "the feature dimension")
    precision = _section("precision", "the forward pass's autocast precision")
    store_dtype = _section("store_dtype", "the feature store's dtype (cache path)")
    features = _section("features", "feature options of the head (normalisation)")
    select_metric = _section("select_metric", "what chose the kept epoch: val_accuracy or val_loss")
    selection = _section("selection", "a grid's or a chosen hyper-parameter's validation record")
    budget = _section("budget", "a label budget: {label_fraction: f} or {shots: k}")
    train_used = _section("train_used", "the training samples and groups a label budget used")
    cv = _section("cv", "cross-validation: folds, samples, per-fold metrics")
    calibration = _section("calibration", "temperature scaling: method, temperature, NLL before and after")
    seed_group = _section("seed_group", "the id shared by the seeds of one fit")
    fit_group = _section("fit_group", "the id shared by every run of one fit command")
    seeds_asked = _section("seeds_asked", "every seed the fit was asked for")
    seed_position = _section("seed_position", "this seed's place among seeds_asked")
    study_quirks = _section("study_quirks", "the study's training quirks reproduced (fine-tuning)")

    @property
    def random_weights(self) -> bool:
        return self.weights.get("sha256") == "random"

    @property
    def kind(self) -> tuple:
        """What sets a run apart beyond dataset x model x mode x head: its label budget and cross-validation."""
        return (tuple(sorted((self.budget or {}).items())), (self.cv or {}).get("folds", 0))

    def as_config(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "details"}
        return {**self.details, **out}

    @classmethod
    def from_config(cls, config: dict) -> "RunRecord":
        names = {f.name for f in fields(cls)} - {"details"}
        known = {k: config[k] for k in names if k in config}
        if "device" not in known and config.get("extract_device"):  # runs written before the record was shared
            known["device"] = config["extract_device"]
        for key, default in (("path", None), ("seed", None), ("tap", None), ("preprocessing", {}),
                             ("manifest_hash", None), ("n", {}), ("counts", {})):
            known.setdefault(key, default)
        return cls(**known, details={k: v for k, v in config.items() if k not in names})


def budget_text(budget: dict) -> str:
    """A run's label budget (``budget`` in its config) as shown: "10% of labels" or "4 shots"."""
    if "label_fraction" in budget:
        return f"{100 * budget['label_fraction']:g}% of labels"
    return f"{budget['shots']} shot{'s' if budget['shots'] != 1 else ''}"


def run_folder(runs_dir: str | Path, dataset: str, model: str, mode: str) -> Path:
    """``<runs>/<dataset>/<model>/<mode>``: where the runs of one cell live (this module owns the layout)."""
    from probebench.validate import path_name

    return Path(runs_dir) / path_name(dataset) / path_name(model) / mode


def write_run(runs_dir: str | Path, record: RunRecord | dict, *, sample_ids, groups, y_true, proba: np.ndarray,
              history: list[dict], metrics: dict, run_suffix: str | None = None) -> Path:
    """Write a complete run and return its folder (named by time, head and a config hash)."""
    config = record.as_config() if isinstance(record, RunRecord) else record
    classes = config["classes"]
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{config['head']}"
    suffix = run_suffix or config_hash(config)
    folder = run_folder(runs_dir, config["dataset"], config["model"], config["mode"])
    run_id, n = f"{stem}-{suffix}", 1
    while (folder / run_id).exists():  # the same run again within a second (--force): never replace it
        n += 1
        run_id = f"{stem}.{n}-{suffix}"
    final = folder / run_id
    with atomic_dir(final) as tmp:  # readers never see half a run
        (tmp / "config.json").write_text(json.dumps({**config, "run_id": run_id}, indent=2, default=str),
                                         encoding="utf-8")
        y_pred = proba.argmax(axis=1)
        with (tmp / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "group", "true", "pred"] + [f"prob_{c}" for c in classes])
            for sid, g, t, p, pr in zip(sample_ids, groups, y_true, y_pred, proba):
                w.writerow([sid, g, classes[int(t)], classes[int(p)]] + [f"{v:.8g}" for v in pr])
        if history:
            keys = list(dict.fromkeys(k for row in history for k in row))
            with (tmp / "history.csv").open("w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(history)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        write_checksums(tmp)
    return final


CHECKSUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` in a run folder checks it without probebench
RUN_FILES = ("config.json", "predictions.csv", "metrics.json")  # every run has them; history.csv when trained


def write_checksums(folder: Path) -> None:
    """``SHA256SUMS`` of every file of a run, in ``sha256sum``'s format, written last (atomically)."""
    from probebench.atomic import write_text

    names = [n for n in (*RUN_FILES, "history.csv") if (folder / n).is_file()]
    write_text(folder / CHECKSUMS, "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
                                           for n in names))


def checked_files(folder: Path) -> tuple[dict[str, bytes], list[str]]:
    """The run's files as ``SHA256SUMS`` lists them, each read once, and what is wrong: a file edited, missing
    or not listed after writing. Readers parse these bytes, so what is checked is what is read."""
    try:
        lines = (folder / CHECKSUMS).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}, [f"{CHECKSUMS} is missing or unreadable (written by probebench before runs carried checksums, "
                    "or removed): its files cannot be shown to be as written; fit again (--force)"]
    listed = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            return {}, [f"{CHECKSUMS} is malformed (line {line[:40]!r})"]
        listed[name] = digest
    problems = [f"{n} is not listed in {CHECKSUMS}" for n in RUN_FILES if n not in listed]
    files = {}
    for name, digest in listed.items():
        if "/" in name or name.startswith("."):
            problems.append(f"{CHECKSUMS} names {name!r}, which is not a run file")
        elif not (folder / name).is_file():
            problems.append(f"{name} is missing")
        else:
            files[name] = (folder / name).read_bytes()
            if hashlib.sha256(files[name]).hexdigest() != digest:
                problems.append(f"{name} was changed after the run was written (its sha256 differs from "
                                f"{CHECKSUMS})")
    return files, problems


@dataclass
class Run:
    """A finished run read back from disk."""

    path: Path
    config: dict
    metrics: dict
    sample_ids: np.ndarray
    groups: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray

    @property
    def classes(self) -> list[str]:
        return self.config["classes"]

    @functools.cached_property
    def record(self) -> RunRecord:
        """The run's config read typed (the sections one path alone writes as properties)."""
        return RunRecord.from_config(self.config)


DAMAGED_HINT = "`probebench verify --repair` moves damaged runs aside (into _damaged/)"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def config_problems(config) -> list[str]:
    """What in a ``config.json`` does not match the run record's schema (the fields report and verify read)."""
    if not isinstance(config, dict):
        return ["not a JSON object"]
    problems = []
    classes = config.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        problems.append("classes must be a list of at least two distinct names")
    for key in ("dataset", "model", "head", "run_id"):
        if not (isinstance(config.get(key), str) and config.get(key)):
            problems.append(f"{key} must be a non-empty string")
    if config.get("mode") not in ("frozen", "unfrozen"):
        problems.append(f"mode must be 'frozen' or 'unfrozen', not {config.get('mode')!r}")
    weights = config.get("weights")
    if not (isinstance(weights, dict) and isinstance(weights.get("sha256"), str)):
        problems.append("weights must be an object with a sha256 (or 'random')")
    n = config.get("n", {})
    if not (isinstance(n, dict) and all(k in ("train", "val", "test") and _is_int(v) and v >= 0
                                        for k, v in n.items())):
        problems.append("n must map train/val/test to sample counts (integers)")
    for key in ("seed", "seed_position"):
        if config.get(key) is not None and not _is_int(config[key]):
            problems.append(f"{key} must be an integer")
    if config.get("seed_group") is not None and not (isinstance(config["seed_group"], str)
                                                     and _is_int(config.get("seed_position"))):
        problems.append("seed_group must be a string with an integer seed_position")
    cv = config.get("cv")
    if cv is not None and not (isinstance(cv, dict) and _is_int(cv.get("folds")) and _is_int(cv.get("samples"))):
        problems.append("cv must be an object with integer folds and samples")
    for key in ("budget", "preprocessing", "counts", "versions"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            problems.append(f"{key} must be an object")
    for key in ("skipped", "seeds_asked"):
        if config.get(key) is not None and not isinstance(config[key], list):
            problems.append(f"{key} must be a list")
    return problems


def metrics_problems(metrics) -> list[str]:
    """What in a ``metrics.json`` does not match its schema (numbers where numbers are read)."""
    if not isinstance(metrics, dict):
        return ["not a JSON object"]
    problems = [f"{k} must be a number" for k in ("val_accuracy", "best_val_accuracy", "fit_seconds",
                                                  "train_seconds", "peak_memory_gib")
                if metrics.get(k) is not None and not _is_number(metrics[k])]
    if not isinstance(metrics.get("test", {}), dict):
        problems.append("test must be an object of metric values")
    folds = metrics.get("folds", [])
    if not (isinstance(folds, list) and all(isinstance(f, dict) and isinstance(f.get("test"), dict) for f in folds)):
        problems.append("folds must be a list of objects with test metrics")
    return problems


def _damaged(path: Path, what: str):
    from probebench.errors import ProbebenchError

    return ProbebenchError(f"run {path} is damaged: {what}; {DAMAGED_HINT}")


def read_config(path: str | Path, data: bytes | None = None) -> dict:
    """A run's ``config.json`` (or its bytes, ``data``, already read), checked against the schema; an unreadable
    or malformed one is an error naming the run."""
    path = Path(path)
    try:
        config = json.loads(data if data is not None else (path / "config.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise _damaged(path, f"config.json cannot be read ({exc})") from None
    problems = config_problems(config)
    if problems:
        raise _damaged(path, "config.json: " + "; ".join(problems))
    return config


SUM_TOLERANCE = 1e-4  # probabilities are written with 8 significant digits: rows sum to 1 far closer than this


def read_run(path: str | Path) -> Run:
    """A run folder read back and checked: every file as written (``SHA256SUMS``), JSON as the schema says,
    probabilities finite, in [0, 1] and summing to 1 per row, ``pred`` their argmax, sample ids unique. Anything
    else is an error naming the run, so a table never shows numbers from an edited or damaged run. The
    predicted class is recomputed from the probabilities: the ``pred`` column is never trusted."""
    from probebench.errors import ProbebenchError

    path = Path(path)
    files, problems = checked_files(path)
    if problems:
        raise _damaged(path, "; ".join(problems))
    config = read_config(path, files["config.json"])
    classes = config["classes"]
    index = {c: i for i, c in enumerate(classes)}
    try:
        metrics = json.loads(files["metrics.json"])
        rows = list(csv.DictReader(io.StringIO(files["predictions.csv"].decode("utf-8"), newline="")))
        proba = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]).reshape(len(rows), len(classes))
        y_true = np.array([index[r["true"]] for r in rows], dtype=np.int64)
        written = np.array([index[r["pred"]] for r in rows], dtype=np.int64)
        sample_ids = np.array([r["sample_id"] for r in rows])
        groups = np.array([r["group"] for r in rows])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"unknown class or missing column {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _damaged(path, what) from None
    problems = metrics_problems(metrics)
    if problems:
        raise _damaged(path, "metrics.json: " + "; ".join(problems))
    if not len(rows):
        raise _damaged(path, "predictions.csv has no rows")
    bad = np.flatnonzero(~(np.isfinite(proba) & (proba >= 0) & (proba <= 1)).all(axis=1))
    if len(bad):
        raise ProbebenchError(f"run {path}: {len(bad)} prediction row(s) hold probabilities that are not finite "
                              f"numbers in [0, 1] (first: sample {sample_ids[bad[0]]}); NaN features or weights "
                              f"give such runs, which must not be reported; {DAMAGED_HINT}")
    sums = proba.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > SUM_TOLERANCE)
    if len(bad):
        raise _damaged(path, f"{len(bad)} prediction row(s) hold probabilities that do not sum to 1 (first: sample "
                             f"{sample_ids[bad[0]]}, sum {sums[bad[0]]:.6g})")
    bad = np.flatnonzero(proba[np.arange(len(rows)), written] < proba.max(axis=1) - SUM_TOLERANCE)
    if len(bad):
        raise _damaged(path, f"{len(bad)} row(s) of predictions.csv name a predicted class that is not the most "
                             f"probable one (first: sample {sample_ids[bad[0]]})")
    ids, counts = np.unique(sample_ids, return_counts=True)
    if (counts > 1).any():
        raise _damaged(path, f"{int((counts > 1).sum())} sample id(s) appear more than once in predictions.csv "
                             f"(first: {ids[counts > 1][0]})")
    return Run(path=path, config=config, metrics=metrics, sample_ids=sample_ids, groups=groups, y_true=y_true,
               y_pred=proba.argmax(axis=1), proba=proba)


def identical_run(folder: Path, digest: str) -> Path | None:
    """The newest run under ``folder`` written with the same inputs (run id ending in ``-<digest>``) that reads
    back whole; an identical run that does not is named on stderr and passed over (never reused)."""
    import sys

    from probebench.errors import ProbebenchError

    for candidate in sorted((p.parent for p in Path(folder).glob(f"*-{digest}/config.json")), reverse=True):
        if candidate.name.endswith((PARTIAL, ".partial")):
            continue
        try:
            read_run(candidate)
            return candidate
        except ProbebenchError as exc:
            sys.stderr.write(f"note: an identical earlier run is not reused: {str(exc).split('; `probebench')[0]} "
                             "(`probebench verify --repair` moves it aside)\n")
    return None


TRACKING_DIRS = ("_tensorboard", "_mlruns")  # trackers' own folders under a runs folder (report.tracking)


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Every complete run folder under ``runs_dir`` (partial ones, and trackers' copies, are ignored)."""
    return sorted(p.parent for p in Path(runs_dir).glob("*/*/*/*/config.json")
                  if not p.parent.name.endswith((PARTIAL, ".partial"))
                  and p.relative_to(runs_dir).parts[0] not in TRACKING_DIRS)
