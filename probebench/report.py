"""``report``: the study's Tables III/IV from run directories, each metric ``value [low, high]`` in percent.

The value is the metric on the whole test set; the interval is a seeded 95% percentile bootstrap over
test samples. Runs made with random weights are flagged in every format.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from probebench.metrics import METRICS, bootstrap_ci, point_metrics
from probebench.runs import find_runs, read_run

FORMATS = ("table", "md", "csv")
RANDOM_MARK = "†"


@dataclass
class ReportRow:
    dataset: str
    model: str
    freeze: str  # "Y" frozen backbone, "N" all weights trained
    head: str
    random_weights: bool
    n_test: int
    values: dict  # metric -> (value, low, high)
    run: str
    skipped: list = field(default_factory=list)

    @property
    def model_label(self) -> str:
        return self.model + (f" {RANDOM_MARK}" if self.random_weights else "")


def collect_rows(runs_dir: str | Path = "runs", *, datasets: list[str] | None = None, n_resamples: int = 1000,
                 seed: int = 0, confidence: float = 0.95, latest_only: bool = True) -> list[ReportRow]:
    """One row per run (the latest per dataset x model x mode x head unless ``latest_only`` is off)."""
    runs = [read_run(p) for p in find_runs(runs_dir)]
    if datasets:
        runs = [r for r in runs if r.config["dataset"] in datasets]
    if latest_only:
        latest = {}
        for r in sorted(runs, key=lambda r: r.config["run_id"]):
            latest[(r.config["dataset"], r.config["model"], r.config["mode"], r.config["head"])] = r
        runs = list(latest.values())
    rows = []
    for r in sorted(runs, key=lambda r: (r.config["dataset"], r.config["model"], r.config["mode"], r.config["head"])):
        k = len(r.classes)
        point = point_metrics(r.y_true, r.y_pred, k)
        ci = bootstrap_ci(r.y_true, r.y_pred, k, n_resamples=n_resamples, seed=seed, confidence=confidence)
        rows.append(ReportRow(
            dataset=r.config["dataset"], model=r.config["model"], freeze="Y" if r.config["mode"] == "frozen" else "N",
            head=r.config["head"], random_weights=r.config["weights"]["sha256"] == "random", n_test=len(r.y_true),
            values={m: (point[m], *ci[m]) for m in METRICS}, run=str(r.path), skipped=r.config.get("skipped", [])))
    return rows


def _cell(v: tuple[float, float, float]) -> str:
    return f"{100 * v[0]:.2f} [{100 * v[1]:.2f}, {100 * v[2]:.2f}]"


HEADER = ["Dataset", "Model", "Freeze", "Head", "Accuracy", "Precision", "Recall", "F1"]


def _table_rows(rows: list[ReportRow]) -> list[list[str]]:
    return [[r.dataset, r.model_label, r.freeze, r.head] + [_cell(r.values[m]) for m in METRICS] for r in rows]


def footnotes(rows: list[ReportRow], n_resamples: int, seed: int, confidence: float) -> list[str]:
    notes = [f"Metrics in %: value on the whole test set [{confidence:.0%} percentile bootstrap interval; "
             f"{n_resamples} resamples of test samples, seed {seed}]. Precision, recall and F1 are weighted "
             "averages over classes."]
    if any(r.random_weights for r in rows):
        notes.append(f"{RANDOM_MARK} random weights (--weights random): NOT a pretrained result.")
    for r in rows:
        if r.skipped:
            names = ", ".join(s["sample_id"] for s in r.skipped[:5]) + (" …" if len(r.skipped) > 5 else "")
            notes.append(f"{r.dataset}/{r.model}: {len(r.skipped)} unreadable image(s) skipped: {names}")
    return notes


def render(rows: list[ReportRow], fmt: str = "table", *, n_resamples: int = 1000, seed: int = 0,
           confidence: float = 0.95) -> str:
    """The report as text in ``fmt`` (``table`` renders with rich for a terminal)."""
    body = _table_rows(rows)
    notes = footnotes(rows, n_resamples, seed, confidence)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["dataset", "model", "freeze", "head", "random_weights", "n_test", "metric", "value", "low",
                    "high", "ci_method", "n_resamples", "unit", "run"])
        for r in rows:
            for m in METRICS:
                w.writerow([r.dataset, r.model, r.freeze, r.head, r.random_weights, r.n_test, m,
                            *(f"{x:.6f}" for x in r.values[m]), "percentile", n_resamples, "sample", r.run])
        return out.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table

        table = Table(title="probebench results", caption="\n".join(notes), caption_justify="left")
        for h in HEADER:
            table.add_column(h, no_wrap=h in ("Dataset", "Model"))
        for row in body:
            table.add_row(*row)
        console = Console(record=True, width=160)
        with console.capture() as cap:
            console.print(table)
        return cap.get()
    raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
