"""Atomic writes: a temporary sibling, fsync, one rename. A crash, a kill or a full disk mid-write leaves
the previous file intact (or no file), never a truncated one where a good one was.

Every temporary name carries ``.probebench-`` and the writer's process id (``writer_pid`` recognises them),
so ``verify --repair`` removes only what probebench itself left behind, never a user's file, and never a
temporary that a running process is still writing."""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that add one do not); on success it is
    flushed to disk and renamed onto ``path``; on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.probebench-{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        from probebench.errors import ProbebenchError, describe_error

        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise ProbebenchError(f"cannot write {path}: {describe_error(exc)}; {kept}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def flush_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder``, so a rename that publishes it publishes complete files."""
    for entry in sorted(Path(folder).rglob("*"), reverse=True):
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb+") as fh:
                os.fsync(fh.fileno())
        elif entry.is_dir():
            _fsync_dir(entry)
    _fsync_dir(Path(folder))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange) == 0


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``path`` (``<name>.<pid>.probebench-partial``); on success its files are
    flushed and it takes the place of ``path``; on any error it is removed. A folder already at ``path`` is
    swapped out in one step where the system allows (Linux), so a kill at any moment leaves the old folder or
    the new one, never a mix and never neither; elsewhere the old one is moved aside first. Readers that skip
    ``PARTIAL`` names never see half a folder."""
    path = Path(path)
    if path.is_symlink():  # a link to the folder: the folder it names is replaced, the link stays
        path = path.resolve()
    tmp = partial_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        flush_tree(tmp)
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp)  # now the old folder
        else:
            if path.exists():
                aside = path.with_name(f"{path.name}.{os.getpid()}.probebench-old")
                path.rename(aside)
                tmp.rename(path)
                shutil.rmtree(aside)
            else:
                tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


PARTIAL = ".probebench-partial"  # the suffix of every folder being written (readers skip it)
_LEFTOVER = re.compile(r"^(\..*\.probebench-(\d+)\.tmp.*|.*\.(\d+)\.probebench-(?:partial|old))$")


def partial_name(path: Path, pid: int | None = None) -> Path:
    """Where ``path`` is written before its rename: ``<name>.<pid>.probebench-partial`` beside it."""
    return path.with_name(f"{path.name}.{os.getpid() if pid is None else pid}{PARTIAL}")


def final_path(partial: Path) -> Path:
    """The path a ``partial_name`` folder becomes when it is published."""
    return partial.with_name(re.sub(r"\.\d+" + re.escape(PARTIAL) + "$", "", partial.name))


def writer_pid(name: str) -> int | None:
    """The process that wrote a probebench temporary named ``name``; None for any other name."""
    m = _LEFTOVER.match(name)
    return int(m.group(2) or m.group(3)) if m else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (its temporaries are in use, not left over)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, **kwargs) -> Path:
    return write_text(path, json.dumps(obj, **{"indent": 1, "sort_keys": True, **kwargs}) + "\n")
