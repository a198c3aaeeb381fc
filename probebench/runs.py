"""Run directories: ``runs/<dataset>/<model>/<mode>/<run-id>/`` with config, predictions, history, metrics.

A run is written to a temporary folder and renamed when complete, so readers never see half a run.
``report`` needs nothing else: no model, no cache.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from probebench.atomic import atomic_dir

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

    def as_config(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "details"}
        return {**self.details, **out}

    @classmethod
    def from_config(cls, config: dict) -> "RunRecord":
        names = {f.name for f in fields(cls)} - {"details"}
        known = {k: config[k] for k in names if k in config}
        if "device" not in known and config.get("extract_device"):  # runs written before the record was shared
            known["device"] = config["extract_device"]
        for key, default in (("seed", None), ("tap", None), ("preprocessing", {}), ("manifest_hash", None),
                             ("n", {}), ("counts", {})):
            known.setdefault(key, default)
        return cls(**known, details={k: v for k, v in config.items() if k not in names and k != "run_id"})


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
        (tmp / "config.json").write_text(json.dumps({**config, "run_id": run_id}, indent=2, default=str))
        y_pred = proba.argmax(axis=1)
        with (tmp / "predictions.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "group", "true", "pred"] + [f"prob_{c}" for c in classes])
            for sid, g, t, p, pr in zip(sample_ids, groups, y_true, y_pred, proba):
                w.writerow([sid, g, classes[int(t)], classes[int(p)]] + [f"{v:.8g}" for v in pr])
        if history:
            keys = list(dict.fromkeys(k for row in history for k in row))
            with (tmp / "history.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(history)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return final


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

    @property
    def record(self) -> RunRecord:
        return RunRecord.from_config(self.config)


DAMAGED_HINT = "`probebench verify --repair` moves damaged runs aside (into _damaged/)"


def read_config(path: str | Path) -> dict:
    """A run's ``config.json``; an unreadable one is an error naming the run."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
        if not isinstance(config, dict) or not isinstance(config.get("classes"), list):
            raise ValueError("no class list")
        return config
    except (OSError, ValueError) as exc:
        from probebench.errors import ProbebenchError

        raise ProbebenchError(f"run {path} is damaged: config.json cannot be read ({exc}); {DAMAGED_HINT}") from None


def read_run(path: str | Path) -> Run:
    """A run folder read back; a truncated or edited file, or a probability that is not a finite number in
    [0, 1], is an error naming the run, so a table never shows numbers computed from damaged predictions."""
    from probebench.errors import ProbebenchError

    path = Path(path)
    config = read_config(path)
    classes = config["classes"]
    index = {c: i for i, c in enumerate(classes)}
    try:
        with (path / "predictions.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        proba = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]).reshape(len(rows), len(classes))
        run = Run(path=path, config=config, metrics=json.loads((path / "metrics.json").read_text()),
                  sample_ids=np.array([r["sample_id"] for r in rows]), groups=np.array([r["group"] for r in rows]),
                  y_true=np.array([index[r["true"]] for r in rows], dtype=np.int64),
                  y_pred=np.array([index[r["pred"]] for r in rows], dtype=np.int64), proba=proba)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"unknown class or missing column {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ProbebenchError(f"run {path} is damaged: {what}; {DAMAGED_HINT}") from None
    if not len(rows):
        raise ProbebenchError(f"run {path} is damaged: predictions.csv has no rows; {DAMAGED_HINT}")
    bad = np.flatnonzero(~(np.isfinite(proba) & (proba >= 0) & (proba <= 1)).all(axis=1))
    if len(bad):
        raise ProbebenchError(f"run {path}: {len(bad)} prediction row(s) hold probabilities that are not finite "
                              f"numbers in [0, 1] (first: sample {run.sample_ids[bad[0]]}); NaN features or weights "
                              f"give such runs, which must not be reported; {DAMAGED_HINT}")
    return run


TRACKING_DIRS = ("_tensorboard", "_mlruns")  # trackers' own folders under a runs folder (report.tracking)


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Every complete run folder under ``runs_dir`` (partial ones, and trackers' copies, are ignored)."""
    return sorted(p.parent for p in Path(runs_dir).glob("*/*/*/*/config.json")
                  if not p.parent.name.endswith(".partial")
                  and p.relative_to(runs_dir).parts[0] not in TRACKING_DIRS)
