"""``kind = "csv"``: one or more tables (``[csv]`` or ``[[csv.sources]]``) naming images by path or by id in image
folders, labels as a column or one-hot columns, and optionally groups (a column or a separate group table, as
ISIC's lesion groupings) and the release's splits."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from probebench.data.layouts.base import (SPLIT_ALIASES, Layout, Row, check_contained, is_str, label_index,
                                          relative, split_name, str_or_alternatives)
from probebench.data.pixels import is_junk
from probebench.errors import ProbebenchError

GROUP_TABLE_KEYS = {"file", "id_column", "group_column"}


def _str_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and is_str(x) for k, x in v.items())


SOURCE_TYPES = {  # a table's keys, in [csv] and in each [[csv.sources]]
    "file": (lambda v: str_or_alternatives(v) and all(relative(x) for x in ([v] if isinstance(v, str) else v)),
             "a table file inside the dataset folder, or a list of alternative names"),
    "image_dirs": (lambda v: isinstance(v, list) and len(v) > 0 and all(
        str_or_alternatives(x) and all(relative(y) for y in ([x] if isinstance(x, str) else x)) for x in v),
        "a list of image folders inside the dataset folder"),
    "id_column": (is_str, "a column name"), "path_column": (is_str, "a column name"),
    "label_column": (is_str, "a column name"), "group_column": (is_str, "a column name"),
    "split_column": (is_str, "a column name"),
    "split": (lambda v: isinstance(v, str) and v.lower() in SPLIT_ALIASES, "train, val or test"),
    "onehot_columns": (lambda v: _str_map(v) and len(v) >= 2, "a table of column -> class"),
    "group_table": (lambda v: isinstance(v, dict) and "file" in v and all(
        str_or_alternatives(x) for x in v.values()), "a table with file, id_column, group_column"),
}


def first_present(root: Path, names: str | list[str], is_dir: bool = False) -> Path:
    """``root / name`` for the first of the alternative ``names`` that exists (releases differ in naming:
    the ISIC site's ``ISIC2018_Task3_Test_Input`` is Dataverse's ``ISIC2018_Task3_Test_Images``); the first
    name when none does, so that errors name the expected one."""
    options = [names] if isinstance(names, str) else list(names)
    for name in options:
        if ((root / name).is_dir() if is_dir else (root / name).is_file()):
            return root / name
    return root / options[0]


def describe(root: Path, names: str | list[str]) -> str:
    options = [names] if isinstance(names, str) else list(names)
    return str(root / options[0]) + (f" (or {', '.join(options[1:])})" if len(options) > 1 else "")


def _image_index(root: Path, dirs: list, junk: list[str]) -> dict[str, Path]:
    """File stem -> image path over the source's image folders; a stem found twice is an error naming both."""
    index: dict[str, Path] = {}
    for d in dirs:
        base = first_present(root, d, is_dir=True)
        if not base.is_dir():
            raise ProbebenchError(f"image folder {describe(root, d)} is missing")
        for p in sorted(base.rglob("*")):
            if p.is_file():
                if is_junk(p.relative_to(root)):
                    junk.append(str(p))
                elif p.stem in index:
                    raise ProbebenchError(f"image id {p.stem!r} is found twice: {index[p.stem]} and {p}; the table "
                                          "names images by id, so only one file may carry it (remove the copy)")
                else:
                    index[p.stem] = p
    return index


def _read_table(table: Path, needed: dict[str, str], spec) -> list[dict]:
    """Rows of a CSV (a UTF-8 byte-order mark, as Excel writes, is fine); ``needed`` maps each column the spec
    names to the spec key that names it, so a missing column is reported with both."""
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            found = [c for c in (reader.fieldnames or [])]
            missing = [c for c in needed if c not in found]
            if missing:
                keys = ", ".join(f"{c!r} ({needed[c]})" for c in missing)
                raise ProbebenchError(f"{table}: missing column(s) {keys} named by spec {spec.source}; the file has "
                                      f"columns {found}")
            return list(reader)
    except UnicodeDecodeError as exc:
        raise ProbebenchError(f"{table}: not UTF-8 text ({exc}); save it as UTF-8 CSV") from exc


def _group_table(src: dict, root: Path, spec, notes: list[str], images_of: str) -> dict[str, str] | None:
    """Image id -> group id from a separate table (ISIC's lesion groupings), or None when the file is absent."""
    g = src.get("group_table")
    if not g:
        return None
    table = first_present(root, g["file"])
    check_contained(spec, root, [table], "group table")
    if not table.is_file():
        notes.append(f"{table.name} not found in {root}: each image of {images_of} is its own {spec.group}, "
                     f"so a {spec.group} shared with another split cannot be detected (put the file there to use it)")
        return None
    id_col, group_col = g.get("id_column", "image"), g.get("group_column", "lesion_id")
    rows = _read_table(table, {id_col: "group_table.id_column", group_col: "group_table.group_column"}, spec)
    return {r[id_col]: r[group_col].strip() for r in rows if r[group_col] and r[group_col].strip()}


def _csv_rows(spec, root: Path, junk: list[str], notes: list[str]) -> list[Row]:
    """Rows of one or more CSV tables: path or image id, label or one-hot columns, group, split."""
    rows = []
    for src in spec.layout.get("sources") or [spec.layout]:
        table = first_present(root, src.get("file", "manifest.csv"))
        if not table.is_file():
            raise ProbebenchError(f"dataset {spec.name!r}: table {describe(root, src.get('file', 'manifest.csv'))} "
                                  "is missing")
        check_contained(spec, root, [table], "table")
        index = _image_index(root, src["image_dirs"], junk) if "image_dirs" in src else None
        id_col = src.get("id_column", "image_id") if index is not None else src.get("path_column", "path")
        needed = {id_col: "id_column" if index is not None else "path_column"}
        if "onehot_columns" in src:
            needed.update({c: "onehot_columns" for c in src["onehot_columns"]})
        else:
            needed[src.get("label_column", "label")] = "label_column"
        if src.get("group_column"):
            needed[src["group_column"]] = "group_column"
        if "split_column" in src and not src.get("split"):
            needed[src["split_column"]] = "split_column"
        lesions = _group_table(src, root, spec, notes, table.name)
        ungrouped = 0
        listed = set()
        for line, rec in enumerate(_read_table(table, needed, spec), start=2):
            where = f"{table}, line {line}"
            if index is not None:
                key = rec[id_col]
                if key not in index:
                    raise ProbebenchError(f"{where}: no image named {key!r} in {src['image_dirs']}")
                path = index[key]
                listed.add(key)
            else:
                key = rec[id_col]
                path = root / key
                if not path.is_file():
                    raise ProbebenchError(f"{where}: image {path} does not exist")
            if "onehot_columns" in src:
                try:
                    hot = [c for c in src["onehot_columns"] if float(rec[c] or 0) == 1.0]
                except ValueError as exc:
                    raise ProbebenchError(f"{where}: one-hot columns must hold numbers ({exc})") from exc
                if len(hot) != 1:
                    raise ProbebenchError(f"{where}: expected exactly one 1 among the one-hot columns "
                                          f"{list(src['onehot_columns'])}, found {hot}")
                raw = src["onehot_columns"][hot[0]]
            else:
                raw = rec[src.get("label_column", "label")]
            label = label_index(spec, raw, where, spec.layout.get("label_map"))
            sid = Path(os.path.relpath(path, root)).as_posix()  # lexical: outside files are refused below
            group = rec[src["group_column"]] if src.get("group_column") else sid
            if lesions is not None:
                if key in lesions:
                    group = lesions[key]
                else:
                    ungrouped += 1
            split = split_name(src.get("split") or (rec.get(src.get("split_column", "split")) or None), where)
            rows.append(Row(sid, str(path), label, group, split))
        if ungrouped:
            notes.append(f"{ungrouped} image(s) of {table.name} have no {spec.group} in the group table; each is "
                         f"its own {spec.group}")
        if index is not None:  # images the table does not label: skipped and counted, never guessed
            junk.extend(f"{index[k]} (no row in {table.name})" for k in sorted(set(index) - listed))
    return rows


class CsvLayout(Layout):
    name = "csv"
    keys = {**SOURCE_TYPES, "label_map": (_str_map, "a table of raw label -> class"),
            "sources": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v),
                        "a list of [[csv.sources]] tables")}

    def check(self, table, fail):
        for i, src in enumerate(table.get("sources", [])):
            extra = sorted(set(src) - set(SOURCE_TYPES))
            if extra:
                fail(extra[0], f"unknown keys {extra} in [csv.sources[{i}]]; allowed: {sorted(SOURCE_TYPES)}",
                     section="csv.sources")
            for key, value in src.items():
                if not SOURCE_TYPES[key][0](value):
                    fail(key, f"[csv.sources[{i}]] {key} must be {SOURCE_TYPES[key][1]}, not {value!r}",
                         section="csv.sources")
        for where, src in [("csv", table), *((f"csv.sources[{i}]", s) for i, s in enumerate(table.get("sources", [])))]:
            if isinstance(src.get("group_table"), dict) and set(src["group_table"]) - GROUP_TABLE_KEYS:
                extra = sorted(set(src["group_table"]) - GROUP_TABLE_KEYS)
                fail("group_table", f"unknown keys {extra} in [{where}.group_table]; allowed: "
                                    f"{sorted(GROUP_TABLE_KEYS)}", section=where.split("[")[0])

    def labels_named(self, table: dict) -> list:
        """The class names the table maps raw labels to (each must be one of the spec's classes)."""
        return [*table.get("label_map", {}).values(), *table.get("onehot_columns", {}).values(),
                *(c for s in table.get("sources", []) for c in s.get("onehot_columns", {}).values())]

    def rows(self, spec, root, junk, notes):
        return _csv_rows(spec, root, junk, notes), {}


CSV = CsvLayout()
