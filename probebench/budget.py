"""What this machine can hold: the memory a process may still use, so work that cannot fit is refused up front
with an estimate rather than dying at the end (a segmentation fault or the kernel's OOM killer says nothing)."""

from __future__ import annotations

import os
import resource

GIB = 2 ** 30


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the kernel's MemAvailable, the cgroup's memory.max
    less its current use, and the address-space limit (``ulimit -v``) less what is mapped; None if unknown."""
    limits = []
    meminfo = _read("/proc/meminfo")
    if meminfo:
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    cap, used = _read("/sys/fs/cgroup/memory.max"), _read("/sys/fs/cgroup/memory.current")
    if cap and cap.strip().isdigit() and used and used.strip().isdigit():
        limits.append(max(0, int(cap) - int(used)))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        statm = _read("/proc/self/statm")
        mapped = int(statm.split()[0]) * os.sysconf("SC_PAGE_SIZE") if statm else 0
        limits.append(max(0, soft - mapped))
    return min(limits) if limits else None


def default_workers(reserve: int = 1) -> int:
    """Worker processes when none are asked for: the CPUs less ``reserve`` (one left for the main process's
    forward passes), at least 1, at most 8 (more only compete for memory bandwidth)."""
    return min(8, max(1, (os.cpu_count() or 2) - reserve))


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.0f} MiB"
