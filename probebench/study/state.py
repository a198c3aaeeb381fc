"""A study's state: which cells are done (with their config hash and runs) or failed, in
``<runs_dir>/_studies/<name>.json`` and one file per shard, so a rerun after a crash picks up where it stopped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from probebench.atomic import write_json
from probebench.study.config import Study


def _state_path(study: Study, shard: tuple[int, int] | None = None) -> Path:
    """The state file a process writes: ``<runs>/_studies/<name>.json``, or one per shard (``run --shard``), so
    that shards running at once never write the same file."""
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(study.runs_dir) / "_studies" / f"{study.name}{suffix}.json"


def _read_state(p: Path) -> dict:
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (ValueError, OSError) as exc:  # only a record of finished cells: the runs themselves are checked
        sys.stderr.write(f"note: study state {p} is unreadable ({exc}); its cells are checked afresh\n")
        return {}


def _load_state(study: Study) -> dict:
    """Every cell's record, merged over the study's state files (the unsharded one and each shard's); each cell
    is written by one process at a time, so the most recently written record of a cell wins."""
    folder = _state_path(study).parent
    files = [p for p in (_state_path(study), *folder.glob(f"{study.name}.shard-*-of-*.json")) if p.is_file()]
    state: dict = {}
    for p in sorted(files, key=lambda p: p.stat().st_mtime_ns):
        state.update(_read_state(p))
    return state


def study_runs(study: Study) -> list[str]:
    """The run folders of the study's finished cells, from its state files (its report shows these only)."""
    return [r for cell in _load_state(study).values() if cell.get("status") == "done" for r in cell.get("runs", [])]


def _save_state(study: Study, records: dict, shard: tuple[int, int] | None = None) -> None:
    """Record this process's cells in its own state file (the others' records stay in theirs)."""
    if records:
        path = _state_path(study, shard)
        write_json(path, {**_read_state(path), **records})
