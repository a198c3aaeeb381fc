"""Launching a study's shards side by side: one process per device (``run --devices``) or one submitit job per
shard (``run --launcher submitit``, SLURM where it exists)."""

from __future__ import annotations

import sys
from pathlib import Path

from probebench.errors import ProbebenchError
from probebench.study.config import load_study
from probebench.study.run import run_study


def run_on_devices(study_file: str | Path, devices: list[str], *, overrides: list[str] = (),
                   data_root: list | None = None, only: str | None = None, track: str | None = None) -> int:
    """``run --devices 0,1,2,3``: one shard per device, run side by side as processes that each see only their
    device (``CUDA_VISIBLE_DEVICES``; ``cpu`` hides every GPU); returns how many shards failed. The caller then
    runs the study once more in-process, which finds every cell done and writes the whole report."""
    import os
    import subprocess

    n = len(devices)
    base = [sys.executable, "-m", "probebench", "run", str(study_file)]
    for a in overrides:
        base += ["--set", a]
    for r in data_root or []:
        base += ["--data-root", str(r)]
    if only:
        base += ["--only", only]
    if track:
        base += ["--track", track]
    procs = []
    for i, dev in enumerate(devices, start=1):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if dev == "cpu" else dev}
        procs.append(subprocess.Popen([*base, "--shard", f"{i}/{n}"], env=env))
    return sum(p.wait() != 0 for p in procs)


def _shard_job(study_file: str, overrides: list[str], data_root, only, track, shard: tuple[int, int]) -> None:
    """What one submitit job runs: the study's shard, without the report (written once all jobs are done)."""
    study = load_study(study_file, overrides=overrides, data_root=data_root)
    run_study(study, only=only, shard=shard, progress=False, write_report=False, echo=lambda t: None, track=track)


def run_with_submitit(study_file: str | Path, jobs: int, *, overrides: list[str] = (), data_root: list | None = None,
                      only: str | None = None, track: str | None = None, cluster: str | None = None,
                      slurm: dict | None = None) -> list[str]:
    """``run --launcher submitit``: the study's cells as ``jobs`` shards submitted through submitit (SLURM where
    ``sbatch`` exists, else local processes; ``cluster="local"`` forces those), waited for; returns the errors of
    jobs that failed. Job logs go to ``<runs>/_submitit``."""
    try:
        import submitit
    except ImportError:
        raise ProbebenchError('--launcher submitit needs the submitit package: pip install "probebench[submitit]" '
                              "(or pip install submitit)") from None
    study = load_study(study_file, overrides=overrides, data_root=data_root)
    executor = submitit.AutoExecutor(folder=Path(study.runs_dir) / "_submitit", cluster=cluster)  # logs by job id
    executor.update_parameters(name=f"probebench-{study.name}", **(slurm or {}))
    roots = [str(r) for r in data_root] if data_root else None
    submitted = [executor.submit(_shard_job, str(study_file), list(overrides), roots, only, track, (i, jobs))
                 for i in range(1, jobs + 1)]
    errors = []
    for i, job in enumerate(submitted, start=1):
        try:
            job.result()
        except Exception as exc:  # the job's own error, from its log; the summary run shows which cells
            errors.append(f"shard {i}/{jobs} (job {job.job_id}): {str(exc).strip().splitlines()[-1][:300]}")
    return errors


def parse_slurm(items: list[str]) -> dict:
    """``--slurm KEY=VALUE`` items as submitit job parameters (digits become integers)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ProbebenchError(f"--slurm {item!r}: expected KEY=VALUE, e.g. slurm_partition=gpu")
        params[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return params


def launch(study_file: str | Path, *, devices: str | None = None, launcher: str | None = None, jobs: int = 4,
           slurm: list[str] = (), shard: str | None = None, dry_run: bool = False, overrides: list[str] = (),
           data_root: list | None = None, only: str | None = None, track: str | None = None) -> list[str]:
    """Run the study's shards side by side when ``devices`` or ``launcher`` asks for it (nothing otherwise);
    returns a line per shard that failed. The caller then runs the study once more, which finds the cells done and
    writes the whole report."""
    import os

    if devices and launcher is not None:
        raise ProbebenchError("--launcher submits every shard itself: use it without --shard, --devices and "
                              "--dry-run")
    if devices:
        if shard or dry_run:
            raise ProbebenchError("--devices runs every shard itself: use it without --shard and --dry-run")
        chosen = [d.strip() for d in devices.split(",") if d.strip()]
        load_study(study_file, overrides=overrides, data_root=data_root)  # refuse a bad file before forking
        failed = run_on_devices(study_file, chosen, overrides=overrides, data_root=data_root, only=only, track=track)
        return [f"{failed} of {len(chosen)} shard(s); the summary follows"] if failed else []
    if launcher is None:
        return []
    if launcher != "submitit":
        raise ProbebenchError(f"--launcher {launcher!r}: the launcher is submitit")
    if shard or dry_run:
        raise ProbebenchError("--launcher submits every shard itself: use it without --shard, --devices and "
                              "--dry-run")
    if jobs < 1:
        raise ProbebenchError(f"--jobs {jobs}: must be 1 or more")
    cluster = os.environ.get("PROBEBENCH_SUBMITIT_CLUSTER") or None  # "local" in the tests
    return run_with_submitit(study_file, jobs, overrides=overrides, data_root=data_root, only=only, track=track,
                             cluster=cluster, slurm=parse_slurm(list(slurm)))
