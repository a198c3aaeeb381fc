"""Running a study: each dataset x model extracted once and reused by every frozen head, each cell whose run
already exists with the same config hash skipped, a failing cell recorded with its error while the others go on,
then the report of every finished cell."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from probebench.errors import describe_error
from probebench.study.config import Study
from probebench.study.plan import Cell, feature_spec, model_inputs, plan, render_plan
from probebench.study.state import _save_state, study_runs


def _frozen(study: Study, c: Cell, progress: bool, track: str | None) -> list[str]:
    """A frozen cell: its features extracted (once per dataset x model), then its head fitted for every seed, by
    cross-validation where the study asks for it, and the label curve where it asks for one."""
    from probebench.features.extract import extract
    from probebench.report.tracking import track_run
    from probebench.train.fit import fit
    from probebench.train.heads import trains

    t, data_root = study.training, study.data_roots()
    features = feature_spec(study, c.model)
    extract(features, c.dataset, data_root=data_root, cache_dir=study.cache_dir, progress=progress,
            batch_size=study.extract.get("batch_size"), workers=study.extract.get("workers"),
            skip_bad=study.extract.get("skip_bad", False))
    common = dict(data_root=data_root, cache_dir=study.cache_dir, runs_dir=study.runs_dir, head=c.head,
                  grid=study.grid,
                  train=study.train_config(t if trains(c.head, study.grid) else {}, seed=study.seeds[0]),
                  seeds=study.seeds if len(study.seeds) > 1 else None, calibrate=t.get("calibrate"),
                  progress=progress, on_run=lambda run: track_run(run, track))
    folds = study.cv_for(c.dataset)
    if folds:  # evaluated by cross-validation only: the label curve needs a fixed test split
        return [str(fit(features, c.dataset, cv=folds, **common))]
    runs = [str(fit(features, c.dataset, **common))]
    if t.get("label_fractions") or t.get("shots"):
        runs.append(str(fit(features, c.dataset, label_fractions=t.get("label_fractions"), shots=t.get("shots"),
                            **common)))
    return runs


def _unfrozen(study: Study, c: Cell, progress: bool, track: str | None) -> list[str]:
    """An unfrozen cell: the model fine-tuned end to end once per seed (resumed where a checkpoint matches)."""
    from probebench.report.tracking import track_run
    from probebench.train.finetune import finetune

    u = {**study.training, **study.unfrozen}
    return [str(finetune(
        model_inputs(feature_spec(study, c.model)), c.dataset, data_root=study.data_roots(), runs_dir=study.runs_dir,
        train=study.train_config(u, seed=s), accumulate=u.get("accumulate", 1), precision=u.get("precision", "auto"),
        grad_checkpointing=u.get("grad_checkpointing", False), workers=u.get("workers"), progress=progress,
        existing="reuse", resume="auto", head=c.head, calibrate=u.get("calibrate"),
        study_quirks=tuple(u.get("study_quirks", ())), on_run=lambda run: track_run(run, track)))
        for s in study.seeds]


@dataclass
class StudyResult:
    cells: list[Cell]
    report_dir: Path | None = None

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status in ("failed", "blocked")]


def run_study(study: Study, *, only: str | None = None, dry_run: bool = False, progress: bool = True,
              write_report: bool = True, echo=print, track: str | None = None,
              shard: tuple[int, int] | None = None) -> StudyResult:
    """Run every cell that is not done; record failures and go on; then write the report of every finished
    cell. ``track``: log each new run to ``tensorboard`` or ``mlflow``. ``shard`` (I, N): only the I-th of N
    deterministic shares of the cells (a SLURM job array runs all N); the report covers the cells of every
    shard finished so far, so the last shard to end writes the whole study's."""
    from probebench.progress import make_progress
    from probebench.report.tracking import check_tracker

    check_tracker(track)
    cells = plan(study, only, shard)
    echo(render_plan(cells))
    if dry_run:
        return StudyResult(cells)
    state = {}  # this process's records
    for c in cells:
        if c.status == "blocked":  # recorded like failures, so the state file tells the whole story
            state[c.key] = {"status": "blocked", "error": c.detail}
    _save_state(study, state, shard)
    todo = [c for c in cells if c.status == "todo"]
    with make_progress(progress, unit="cell") as bar:
        overall = bar.add_task(f"study {study.name}", total=len(cells),
                               completed=len(cells) - len(todo), info="")
        for c in todo:
            bar.update(overall, info=c.key)
            start = time.perf_counter()
            try:
                runs = (_frozen if c.mode == "frozen" else _unfrozen)(study, c, progress, track)
                c.status, c.detail = "done", f"{time.perf_counter() - start:.1f} s"
                state[c.key] = {"hash": c.hash, "status": "done", "runs": runs,
                                **({"overrides": study.overrides} if study.overrides else {})}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # recorded, and the study goes on
                c.status = "failed"
                c.detail = " ".join(describe_error(exc).split())
                state[c.key] = {"hash": c.hash, "status": "failed", "error": c.detail,
                                **({"overrides": study.overrides} if study.overrides else {}),
                                "traceback": traceback.format_exc()[-4000:]}
            _save_state(study, state, shard)
            bar.update(overall, advance=1)
    result = StudyResult(cells)
    if write_report and any(c.status == "done" for c in cells):
        from probebench.report.publish import write_report as publish

        result.report_dir = publish(study.runs_dir, study.report_dir, settings=study.report, only=study_runs(study),
                                    study_file=study.source, study_overrides=study.overrides)
    return result
