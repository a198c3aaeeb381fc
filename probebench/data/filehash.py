"""Content digests of data files, memoised so that an unchanged file costs one ``stat``, not a read.

The memo is a small SQLite table keyed by (path, size, mtime_ns, inode): any change to a file's bytes
through normal writes changes one of these, and then the file is read and hashed again. It lives in
``$PROBEBENCH_HASH_CACHE`` or ``~/.cache/probebench/file-digests.sqlite``; deleting it only costs time.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path


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


def _open_memo() -> sqlite3.Connection | None:
    """The memo database, or None when it cannot be used (read-only home, ...): digests are then computed."""
    path = memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                    "inode INTEGER, sha256 TEXT)")
        return con
    except (OSError, sqlite3.Error):
        return None


def content_digests(paths: list[str]) -> list[str]:
    """sha256 of each file, read only when (size, mtime_ns, inode) differ from the memo's record.

    Weights files go through here too, so a multi-gigabyte checkpoint is read once, not by every command."""
    con = _open_memo()
    known: dict[str, tuple] = {}
    if con is not None:
        try:
            if len(paths) == 1:  # one weights file: look up its row only, not the whole dataset memo
                rows = con.execute("SELECT path, size, mtime_ns, inode, sha256 FROM digests WHERE path = ?",
                                   (os.path.abspath(paths[0]),))
            else:
                rows = con.execute("SELECT path, size, mtime_ns, inode, sha256 FROM digests")
            known = {r[0]: r[1:] for r in rows}
        except sqlite3.Error:
            known = {}
    out, fresh = [], []
    for p in paths:
        full = os.path.abspath(p)
        st = os.stat(full)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        rec = known.get(full)
        if rec is not None and tuple(rec[:3]) == stamp:
            out.append(rec[3])
        else:
            digest = digest_file(full)
            out.append(digest)
            fresh.append((full, *stamp, digest))
    if con is not None:
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)", fresh)
        except sqlite3.Error:
            pass
        con.close()
    return out
