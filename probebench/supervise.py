"""A command that dies of a signal still ends in one message: the ``probebench`` command runs its work in a forked
child, which tells the parent each step it starts; if the child is killed (a crash in native code, the system's
out-of-memory killer, a scheduler), the parent prints which step it was in and what the signal usually means,
instead of a bare ``Segmentation fault`` or ``Killed`` and exit status 139 or 137."""

from __future__ import annotations

import os
import select
import signal
import sys

STEP_FD = "PROBEBENCH_STEP_FD"  # "<fd>:<pid>": where the supervised process reports its steps, and which process
CAUSES = {
    signal.SIGKILL: "killed from outside, most often by the system for lack of memory (see `dmesg` or the "
                    "scheduler's log; lower --batch-size, --resamples or --workers)",
    signal.SIGSEGV: "a crash inside native code (a library or a driver), not a probebench error",
    signal.SIGBUS: "a crash inside native code, or a file that shrank while it was mapped",
    signal.SIGABRT: "a library aborted (a failed internal check in native code)",
    signal.SIGILL: "native code used an instruction this CPU lacks",
    signal.SIGFPE: "an arithmetic fault inside native code",
    signal.SIGTERM: "stopped from outside (a scheduler's time limit, or kill)",
    signal.SIGHUP: "the terminal it ran in was closed",
}


def step(text: str) -> None:
    """Tell the supervising parent (if any) the step this process starts; a no-op otherwise, and in any other
    process (data-loader workers and spawned ranks inherit the variable, not the right to write)."""
    where = os.environ.get(STEP_FD, "")
    fd, _, owner = where.partition(":")
    if not fd or owner != str(os.getpid()):
        return
    try:
        os.write(int(fd), (" ".join(str(text).split())[:300] + "\n").encode("utf-8", "backslashreplace"))
    except (OSError, ValueError):
        pass


def message(sig: int, last_step: str) -> str:
    """The one line said when the work died of ``sig`` during ``last_step``."""
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    cause = CAUSES.get(sig, "stopped by a signal")
    return (f"error: probebench was stopped by {name} during: {last_step or 'start-up'} ({cause}); what it had "
            "finished is kept: rerun the same command to go on (`--debug` shows where it was)\n")


def supervised(main) -> None:
    """Run ``main`` (which exits through ``sys.exit``) in a forked child and exit with its status; a child killed
    by a signal is reported as one message and exit status 128 + signal. Without ``fork``, under torchrun (its
    agent watches each rank) or with ``PROBEBENCH_NO_SUPERVISOR=1``, ``main`` runs in this process."""
    if (not hasattr(os, "fork") or os.environ.get(STEP_FD) or "LOCAL_RANK" in os.environ
            or os.environ.get("PROBEBENCH_NO_SUPERVISOR", "") not in ("", "0")):
        main()
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child does the work
        os.close(read)
        os.environ[STEP_FD] = f"{write}:{os.getpid()}"
        main()
        return
    os.close(write)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child too, which says "interrupted"
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _frame: os.kill(pid, s))
    last, buffer, status = "", b"", None
    while status is None:
        try:
            ready, _, _ = select.select([read], [], [], 0.5)
        except InterruptedError:
            ready = []
        if ready:
            chunk = os.read(read, 65536)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            last = next((x.decode("utf-8", "replace") for x in reversed(lines) if x.strip()), last)
        try:
            done, code = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            status = code
    os.close(read)
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        sys.stderr.write(message(sig, last))
        sys.exit(128 + sig)
    sys.exit(os.waitstatus_to_exitcode(status) if status is not None else 1)
