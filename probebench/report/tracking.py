"""Experiment tracking (``--track tensorboard`` or ``mlflow``): each run, once written, is logged with its
per-epoch curves (history.csv), its test metrics with 95% bootstrap intervals, and its configuration.

Both trackers are optional extras (``pip install "probebench[tensorboard]"`` / ``"probebench[mlflow]"``);
the run folder stays the record, tracking is a view of it. TensorBoard logs go to
``<runs>/_tensorboard/<dataset>/<model>/<mode>/<run-id>``; MLflow uses its own tracking URI
(``MLFLOW_TRACKING_URI``, else ``<runs>/_mlruns``), experiment ``probebench``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from probebench.errors import ProbebenchError, did_you_mean

TRACKERS = {"tensorboard": ("tensorboard", "probebench[tensorboard]"),  # name -> (module, extra)
            "mlflow": ("mlflow", "probebench[mlflow]")}
PARAMS = ("dataset", "model", "mode", "head", "tap", "seed", "epochs", "lr", "batch_size", "weight_decay",
          "optimizer", "select_metric", "patience")  # the configuration's scalar fields logged as parameters


def check_tracker(kind: str | None) -> None:
    """Refuse an unknown tracker, or one whose package is missing, before any work starts."""
    if kind is None:
        return
    if kind not in TRACKERS:
        raise ProbebenchError(f"--track {kind!r}: unknown tracker{did_you_mean(kind, TRACKERS)}; trackers: "
                              f"{', '.join(TRACKERS)}")
    module, extra = TRACKERS[kind]
    try:
        __import__(module)
    except ImportError:
        raise ProbebenchError(f"--track {kind} needs the {module} package, which is not installed: "
                              f'pip install "{extra}" (or pip install {module})') from None


def _history(run_dir: Path) -> list[dict]:
    """history.csv as rows of numbers (non-numeric cells left out)."""
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            numbers = {}
            for k, v in row.items():
                try:
                    numbers[k] = float(v)
                except (TypeError, ValueError):
                    pass
            rows.append(numbers)
    return rows


def run_summary(run_dir: str | Path) -> dict:
    """What a tracker logs for a run: ``params``, per-epoch ``curves`` (step, {name: value}), and ``final``
    test metrics with their 95% bootstrap interval (``<metric>``, ``<metric>_low``, ``<metric>_high``)."""
    from probebench.report.tables import ReportOptions, evaluate_run
    from probebench.runs import read_run

    run = read_run(run_dir)
    c = run.config
    params = {k: c[k] for k in PARAMS if isinstance(c.get(k), (str, int, float, bool))}
    record = run.record
    params.update({k: v for k, v in (record.head_params or {}).items() if isinstance(v, (str, int, float, bool))})
    params["weights_sha256"] = str(record.weights.get("sha256", ""))
    row = evaluate_run(run, ReportOptions())
    final = {}
    for metric, v in row.values.items():
        final.update({f"test/{metric}": v.value, f"test/{metric}_low": v.low, f"test/{metric}_high": v.high})
    curves = [(int(r.get("epoch", i + 1)), {f"epoch/{k}": x for k, x in r.items() if k != "epoch"})
              for i, r in enumerate(_history(Path(run_dir)))]
    return {"run_id": record.run_id or Path(run_dir).name, "params": params, "curves": curves, "final": final,
            "config": c}


TENSORBOARD_DIR, MLFLOW_DIR = "_tensorboard", "_mlruns"  # under the runs folder


def mlflow_uri(runs_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI``, else the store under the runs folder."""
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(runs_dir) / MLFLOW_DIR).resolve().as_uri()


def tracker_location(kind: str, runs_dir: str | Path) -> str:
    """Where ``track_run`` logs the runs under ``runs_dir``: the TensorBoard log folder, or the MLflow store."""
    if kind == "tensorboard":
        return f"{Path(runs_dir) / TENSORBOARD_DIR} (tensorboard --logdir {Path(runs_dir) / TENSORBOARD_DIR})"
    uri = mlflow_uri(runs_dir)
    return f"MLflow experiment 'probebench' at {uri} (mlflow ui --backend-store-uri {uri})"


def track_run(run_dir: str | Path, kind: str | None) -> None:
    """Log the written run ``run_dir`` to ``kind`` (nothing when None)."""
    if kind is None:
        return
    check_tracker(kind)
    run_dir = Path(run_dir)
    s = run_summary(run_dir)
    runs_root = run_dir.parents[3]  # <runs>/<dataset>/<model>/<mode>/<run-id>
    if kind == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(runs_root / TENSORBOARD_DIR / run_dir.relative_to(runs_root)))
        try:
            for step, values in s["curves"]:
                for name, value in values.items():
                    writer.add_scalar(name, value, step)
            for name, value in s["final"].items():
                writer.add_scalar(name, value, 0)
            writer.add_text("config", "```\n" + json.dumps(s["config"], indent=2, default=str) + "\n```", 0)
        finally:
            writer.close()
    elif kind == "mlflow":
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri(runs_root))
        mlflow.set_experiment("probebench")
        with mlflow.start_run(run_name=s["run_id"]):
            mlflow.log_params(s["params"])
            for step, values in s["curves"]:
                mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)
            mlflow.log_metrics({k.replace("/", "_"): v for k, v in s["final"].items() if v == v})
            mlflow.log_artifact(str(run_dir / "config.json"))
