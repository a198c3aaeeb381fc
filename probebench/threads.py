"""The thread policy, stated once: how many threads torch and the BLAS libraries (NumPy, SciPy, scikit-learn) use.

Default: the CPUs this process may actually run on (its affinity mask and its cgroup's CPU quota, not the machine's
count), or ``OMP_NUM_THREADS`` when the user set it; ``--threads N`` (or ``PROBEBENCH_THREADS``) overrides both.
Small products (a head's minibatch of 32 rows) run on one thread: more threads only add synchronisation, and on a
busy node cost many times the CPU for no speed (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

THREADS_ENV = "PROBEBENCH_THREADS"


def _cgroup_cpus() -> int | None:
    """The cgroup v2 CPU quota in whole CPUs (``cpu.max`` "quota period"), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup's CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, quota) if quota else n)


def _positive(text: str | None, what: str) -> int | None:
    from probebench.errors import ProbebenchError

    if text in (None, ""):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ProbebenchError(f"{what} must be a whole number of threads of at least 1, got {text!r}")
    return value


def default_threads() -> int:
    """``PROBEBENCH_THREADS``, else ``OMP_NUM_THREADS`` (the user's own setting), else the available CPUs."""
    return (_positive(os.environ.get(THREADS_ENV), THREADS_ENV)
            or _positive(os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS") or available_cpus())


def apply_threads(n: int | None = None) -> int:
    """Set torch's and the BLAS libraries' thread counts to ``n`` (default: ``default_threads()``); returns it."""
    import sys

    n = _positive(str(n), "--threads") if n is not None else default_threads()
    os.environ[THREADS_ENV] = str(n)  # DataLoader workers and torchrun children inherit the policy
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:  # a stage that may never load torch (report) does not pay for it: torch reads this when it loads
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


@contextmanager
def one_thread():
    """Run small products on one BLAS and torch thread, restoring the counts afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def thread_counts() -> dict:
    """What this process runs with (for benchmarks and run records): torch's and each BLAS library's threads."""
    import torch
    from threadpoolctl import threadpool_info

    return {"torch": torch.get_num_threads(), "available_cpus": available_cpus(),
            "blas": sorted({(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()})}
