"""Content digests of data files, memoised so that an unchanged file costs one ``stat``, not a read.

The memo is a small SQLite table keyed by path, holding the file's stamp (device, inode, size, mtime_ns and
ctime_ns, as git's index does) and its sha256. Writing a file changes its ctime, and no user call (``touch``,
``utime``, ``cp -p``, ``rsync -t``) can set a ctime back, so a file rewritten in place with its old mtime
restored is read and hashed again. A stamp whose ctime lies within ``RACY_NS`` of the moment it was hashed is
not trusted either (a rewrite in the same clock tick would keep the ctime). It lives in
``$PROBEBENCH_HASH_CACHE`` or ``~/.cache/probebench/file-digests.sqlite``; deleting it (or ``forget``, which
``--rehash`` calls) only costs time. What it cannot see: a ctime forged by root (changing the system clock
or writing the disk directly) — ``--rehash`` reads every file again.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

RACY_NS = 2_000_000_000  # ctime this close to the hashing moment: hash again (clock ticks, NFS clock skew)
TABLE = "digests_v2"  # v1 (path, size, mtime_ns, inode) trusted a restored mtime; its rows are never read


def memo_path() -> Path:
    explicit = os.environ.get("PROBEBENCH_HASH_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "probebench" / "file-digests.sqlite"


def digest_file(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What the memo compares: (device, inode, size, mtime_ns, ctime_ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _key(path: str) -> str:
    """The memo's key for a path; a name that is not valid UTF-8 keeps its bytes (escaped), never an error."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _open_memo() -> sqlite3.Connection | None:
    """The memo database, or None when it cannot be used (read-only home, ...): digests are then computed."""
    path = memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), timeout=30)
        con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (path TEXT PRIMARY KEY, dev INTEGER, inode INTEGER, "
                    "size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, hashed_ns INTEGER, sha256 TEXT)")
        return con
    except (OSError, sqlite3.Error):
        return None


def forget() -> None:
    """Drop every record of the memo (``--rehash``): the next digest of each file reads it."""
    con = _open_memo()
    if con is None:
        return
    try:
        with con:
            con.execute(f"DELETE FROM {TABLE}")
    except sqlite3.Error:
        pass
    finally:
        con.close()


def content_digests(paths: list[str]) -> list[str]:
    """sha256 of each file, read only when its stamp differs from the memo's record (or is too recent to trust).

    Weights files go through here too, so a multi-gigabyte checkpoint is read once, not by every command."""
    con = _open_memo()
    known: dict[str, tuple] = {}
    cols = "path, dev, inode, size, mtime_ns, ctime_ns, hashed_ns, sha256"
    if con is not None:
        try:
            if len(paths) == 1:  # one weights file: look up its row only, not the whole dataset memo
                rows = con.execute(f"SELECT {cols} FROM {TABLE} WHERE path = ?", (_key(os.path.abspath(paths[0])),))
            else:
                rows = con.execute(f"SELECT {cols} FROM {TABLE}")
            known = {r[0]: r[1:] for r in rows}
        except sqlite3.Error:
            known = {}
    out, fresh = [], []
    for p in paths:
        full = os.path.abspath(p)
        st = os.stat(full)
        now = stamp(st)
        rec = known.get(_key(full))
        if rec is not None and tuple(rec[:5]) == now and now[4] < rec[5] - RACY_NS:
            out.append(rec[6])
        else:
            hashed_ns = time.time_ns()
            digest = digest_file(full)
            out.append(digest)
            fresh.append((_key(full), *now, hashed_ns, digest))
    if con is not None:
        try:
            with con:
                con.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", fresh)
        except sqlite3.Error:
            pass
        con.close()
    return out
