"""One exception type for problems the user can fix, and one sentence for any other failure; the CLI prints
either without a traceback (``--debug`` or ``PROBEBENCH_DEBUG=1`` shows it)."""

from __future__ import annotations

import errno


class ProbebenchError(Exception):
    """Bad input, missing weights or data, or a stale/incomplete cache: the message says what to do."""


class NotOnThisMachine(ProbebenchError):
    """A dataset's images or a weights file are not here; work that needs only the feature cache goes on."""


_OS_HINTS = {
    errno.EACCES: "no permission; check the folder's owner and mode, or choose another folder",
    errno.EPERM: "not permitted; check the folder's owner and mode, or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOSPC: "the disk is full; free space or choose another folder",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another folder",
}


def describe_error(exc: BaseException) -> str:
    """One line a user can act on: the message of a ``ProbebenchError``; for an error raised in a data-loader
    worker its cause, not the worker's traceback; for an operating-system error the file and the reason;
    otherwise the exception's type and message."""
    if isinstance(exc, ProbebenchError):
        return str(exc)
    text = str(exc)
    if "\nOriginal Traceback" in text:  # raised in a data-loader worker: torch appends the worker's traceback
        where = text.split("\n", 1)[0].removeprefix("Caught ").rstrip(".")
        cause = [line for line in text.splitlines() if line.strip()][-1].strip()
        return f"{cause} (in {where.split(' in ', 1)[-1]}; --debug shows where)"
    if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in _OS_HINTS):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        hint = _OS_HINTS.get(exc.errno)
        return f"{where}{exc.strerror or exc}" + (f" ({hint})" if hint else "")
    return f"{type(exc).__name__}: {exc}"


def did_you_mean(name, choices) -> str:
    """``" (did you mean 'resnet50'?)"`` when ``name`` is close to one of ``choices`` (case ignored), else ``""``."""
    import difflib

    if not isinstance(name, str):
        return ""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(by_lower[c]) for c in close)}?)" if close else ""
