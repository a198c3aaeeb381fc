"""Progress of long work: rich bars on a terminal; under nohup, a batch scheduler or a pipe, one plain line every
``PROBEBENCH_PROGRESS_EVERY`` seconds (default 30) with done/total, rate and ETA, and a last line with the true
rate (items / wall time). Silent when disabled (tests, library use)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True, markup=False, highlight=False)


def true_rate(task) -> float | None:
    """Items per second: over the whole task once it is finished (done / wall time); while it runs, rich's
    recent-window estimate, else done / elapsed when too few updates came for a window (slow items)."""
    elapsed = task.finished_time if task.finished else task.elapsed
    done = task.completed - task.fields.get("start_at", 0)  # items done before this process (a resume) excluded
    if task.finished and elapsed:
        return done / elapsed
    return task.speed or (done / elapsed if elapsed and done > 0 else None)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``12.3 img/s``."""

    def __init__(self, unit: str = "img"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = true_rate(task)
        return Text(f"{speed:,.2f} {self.unit}/s" if speed else f"– {self.unit}/s", style="progress.data.speed")


def clock(seconds: float | None) -> str:
    """``3725`` -> ``1:02:05``; None -> ``?``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def log_line(task, unit: str, final: bool = False) -> str:
    """One plain line for a log: ``extract ...: 512/2,000 (25.6%), 2.10 img/s, elapsed 0:04:03, ETA 0:11:48``."""
    rate = true_rate(task)
    done, total = task.completed, task.total
    head = f"{task.description}: {done:,.0f}" + (f"/{total:,.0f} ({100 * done / total:.1f}%)" if total else "")
    speed = f"{rate:,.2f} {unit}/s" if rate else f"– {unit}/s"
    info = f" [{task.fields['info']}]" if task.fields.get("info") else ""
    if final:
        return f"{head} done in {clock(task.finished_time or task.elapsed)} ({speed}){info}"
    left = (total - done) / rate if rate and total else None
    return f"{head}, {speed}, elapsed {clock(task.elapsed)}, ETA {clock(left)}{info}"


class LoggedProgress(Progress):
    """A rich Progress that, on a console that is not a terminal, prints a plain line per task every ``every``
    seconds and a final line when it stops (rich itself would print nothing until the end)."""

    def __init__(self, *columns, unit: str, every: float, log: bool, **kwargs):
        super().__init__(*columns, **kwargs)
        self.unit, self.every, self.log = unit, every, log
        self._last: dict = {}
        self._ended: set = set()  # tasks whose final line is printed

    def _maybe_log(self, task_id) -> None:
        if not self.log or task_id in self._ended:
            return
        with self._lock:
            task = self._tasks[task_id]
        now = self.get_time()
        if task.finished:
            self._ended.add(task_id)
            self.console.print(log_line(task, self.unit, final=True), soft_wrap=True)
        elif now - self._last.setdefault(task_id, now) >= self.every:
            self._last[task_id] = now
            self.console.print(log_line(task, self.unit), soft_wrap=True)

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields):
        from probebench.supervise import step

        step(description)  # a supervising parent can name it if this process dies of a signal
        task_id = super().add_task(description, start, total, completed, visible, start_at=completed, **fields)
        self._last[task_id] = self.get_time()
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe_log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def stop(self) -> None:
        super().stop()
        if self.log:
            for task in self.tasks:  # an interrupted or uncounted task: where it stopped
                if task.id not in self._ended and task.completed > task.fields.get("start_at", 0):
                    self._ended.add(task.id)
                    self.console.print(log_line(task, self.unit), soft_wrap=True)
            self.log = False  # once


def log_interval() -> float:
    """Seconds between log lines off a terminal (``PROBEBENCH_PROGRESS_EVERY``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("PROBEBENCH_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def make_progress(enabled: bool = True, unit: str = "img") -> Progress:
    """A progress display for ``unit``s: bars on a terminal, timed plain lines otherwise, nothing if disabled."""
    terminal = console.is_terminal
    return LoggedProgress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                          MofNCompleteColumn(), RateColumn(unit), TextColumn("{task.fields[info]}", markup=False),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not (enabled and terminal),
                          transient=False, unit=unit, every=log_interval(), log=enabled and not terminal)
