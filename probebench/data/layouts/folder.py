"""``kind = "folder"``: one subfolder per class, optionally under split folders (``[folder] split_dirs``), with
the group read from the file name by ``group_regex`` (else each image is its own group)."""

from __future__ import annotations

import re
from pathlib import Path

from probebench.data.layouts.base import SPLIT_ALIASES, Layout, Row, is_str, relative
from probebench.data.pixels import is_junk
from probebench.errors import ProbebenchError


def _group_of(spec, regex: re.Pattern | None, path: Path, default: str) -> str:
    if regex is None:
        return default
    m = regex.search(path.stem)
    if not m:
        raise ProbebenchError(f"{path}: file name does not match the group pattern {regex.pattern!r} "
                              f"of spec {spec.source}")
    return m.group("group")


def _unexpected(spec, base: Path, junk: list[str]) -> None:
    """Folders that are not classes are an error (clutter such as __MACOSX is skipped); loose files are junk."""
    for sub in sorted(base.iterdir()):
        if sub.is_dir() and sub.name not in spec.classes:
            if sub.name == "__MACOSX" or sub.name.startswith("."):
                junk.extend(str(p) for p in sub.rglob("*") if p.is_file())
                continue
            raise ProbebenchError(f"{sub}: folder {sub.name!r} is not one of the classes {spec.classes}")
        if sub.is_file():
            junk.append(str(sub))


class FolderLayout(Layout):
    name = "folder"
    keys = {"split_dirs": (lambda v: isinstance(v, dict) and all(
                isinstance(x, list) and all(isinstance(f, str) and (f == "" or relative(f)) for f in x)
                for x in v.values()),
                "a table of split -> list of folders, e.g. { train = [\"train\"], test = [\"test\"] } (a key that is "
                "not train/val/test, such as pool, is an unsplit pool)"),
            "group_regex": (is_str, "a regular expression with a named group (?P<group>...)")}

    def check(self, table, fail):
        regex = table.get("group_regex")
        if regex is None:
            return
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            fail("group_regex", f"group_regex {regex!r} is not a valid regular expression ({exc})")
        if "group" not in compiled.groupindex:
            fail("group_regex", f"group_regex {regex!r} has no named group (?P<group>...) to take the group id from")

    def rows(self, spec, root, junk, notes):
        regex = re.compile(spec.layout["group_regex"]) if "group_regex" in spec.layout else None
        rows = []
        for split, dirs in (spec.layout.get("split_dirs") or {"": [""]}).items():
            shipped = SPLIT_ALIASES.get(split.lower()) if split else None  # another key: an unsplit pool
            for d in dirs:
                base = root / d
                if not base.is_dir():
                    raise ProbebenchError(f"dataset {spec.name!r}: split folder {base} is missing")
                _unexpected(spec, base, junk)
                for label, cls in enumerate(spec.classes):
                    folder = base / cls
                    if not folder.is_dir():
                        raise ProbebenchError(f"dataset {spec.name!r}: class folder {folder} is missing")
                    n_before = len(rows)
                    for p in sorted(folder.rglob("*")):
                        if not p.is_file():
                            continue
                        if is_junk(p.relative_to(root)):
                            junk.append(str(p))
                            continue
                        sid = p.relative_to(root).as_posix()
                        rows.append(Row(sid, str(p), label, _group_of(spec, regex, p, sid), shipped))
                    if len(rows) == n_before:
                        raise ProbebenchError(f"dataset {spec.name!r}: class folder {folder} holds no images")
        return rows, {}


FOLDER = FolderLayout()
