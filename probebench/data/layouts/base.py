"""What a dataset layout is: the named ``Row`` every layout returns and the ``Layout`` contract.

A layout reads one way releases store images (class folders, tables naming files, one HDF5 array) into rows;
``datasets.load_manifest`` does the rest (ids, groups, splits, hashes) the same way for all. A layout states the
keys of its spec table (``[folder]``, ``[csv]``, ``[hdf5]``) with their types, so the spec is checked before any
file is read, and a layout whose images are not files decodes them itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from probebench.errors import ProbebenchError
from probebench.validate import outside

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


class Row(NamedTuple):
    """One sample as a layout reads it: ``split`` is the release's own split (None when it ships none)."""

    sample_id: str
    path: str  # a file, or a URI the layout decodes (``owns``)
    label: int
    group: str
    split: str | None


class Layout:
    """The contract of a dataset layout. ``keys``: its spec table's key -> (test, what is allowed); ``files``:
    its rows' paths are files (hashed one by one and kept inside the dataset folder)."""

    name = ""
    keys: dict = {}
    files = True

    def check(self, table: dict, fail) -> None:
        """Checks beyond one key's type (``fail(key, message, section=None)`` raises with the spec's line)."""

    def rows(self, spec, root: Path, junk: list[str], notes: list[str]) -> tuple[list[Row], dict]:
        """The rows of ``spec``'s dataset under ``root`` and what the manifest records of the source; files that
        are release clutter go to ``junk``, facts the user should know to ``notes``."""
        raise NotImplementedError

    def labels_named(self, table: dict) -> list:
        """The class names its spec table maps raw labels to (each must be one of the spec's classes)."""
        return []

    def owns(self, path: str) -> bool:
        """Is ``path`` one of this layout's image URIs (decoded by ``decode``, not by an image library)?"""
        return False

    def decode(self, path: str, rules):
        """The image at one of this layout's URIs, as an 8-bit PIL image (layouts whose ``files`` is False)."""
        raise NotImplementedError


def label_index(spec, raw, where: str, label_map: dict | None = None) -> int:
    """A raw label (mapped by ``label_map``) as the index of one of the spec's classes."""
    mapped = (label_map or {}).get(raw, raw)
    if mapped not in spec.classes:
        raise ProbebenchError(f"{where}: label {raw!r} is not one of the classes {spec.classes}")
    return spec.classes.index(mapped)


def split_name(raw, where: str) -> str | None:
    """A release's split name (train, validation, testing, ...) as train / val / test; None when empty."""
    if raw is None or raw == "":
        return None
    if str(raw).lower() not in SPLIT_ALIASES:
        raise ProbebenchError(f"{where}: split {raw!r} is not one of train, val, test")
    return SPLIT_ALIASES[str(raw).lower()]


def check_contained(spec, root: Path, paths: list, what: str) -> None:
    """Refuse files that resolve outside the dataset folder (``../`` in a table, a symlink to elsewhere) unless
    the spec says ``allow_outside_root = true``: a spec must not read the rest of the machine by accident."""
    if spec.allow_outside_root:
        return
    bad = outside(paths, root)
    if bad:
        shown = "; ".join(f"{p} -> {real}" for p, real in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise ProbebenchError(f"dataset {spec.name!r}: {len(bad)} {what} file(s) resolve outside the dataset folder "
                              f"{root}: {shown}. Move them inside, or set allow_outside_root = true in {spec.source} "
                              "if that is intended")


def is_str(v) -> bool:
    return isinstance(v, str) and v != ""


def str_or_alternatives(v) -> bool:
    return is_str(v) or (isinstance(v, list) and len(v) > 0 and all(is_str(x) for x in v))


def relative(v) -> bool:
    """A path inside the dataset folder: relative, no ``..`` part."""
    return is_str(v) and not Path(v).is_absolute() and ".." not in Path(v).parts and "\\" not in v
