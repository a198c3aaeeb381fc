"""Dataset specs (TOML) -> one manifest: sample id, path, label, group, split; its hash is the version.

Kinds: ``folder`` (one subfolder per class, optionally under split folders), ``csv`` (one or more
tables naming images, labels as a column or one-hot columns, groups, splits) and ``hdf5``. Release
clutter is skipped and counted; anything else unexpected is an error naming the file.

Groups (patients, lesions) decide which samples may never be split apart. Their ids are either
global (``group_scope = "global"``: one id is one patient everywhere) or numbered afresh inside each
split the release ships (``group_scope = "split"``, as Kaggle's chest X-ray release does), in which
case ids are compared only within their shipped split and repeats across shipped splits are reported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from probebench.errors import NotOnThisMachine, ProbebenchError, did_you_mean
from probebench.data.filehash import content_digests
from probebench.data.pixels import PixelRules, hdf5_uri, is_junk
from probebench.data.splits import SPLITS, check_disjoint, shared_groups, stratified_group_holdout
from probebench.validate import VAL_UNITS, component, line_of, outside, printable, read_toml

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
SPEC_KEYS = {"name", "description", "kind", "root", "classes", "group", "group_scope", "shipped_overlap", "folder",
             "csv", "split", "mri", "hdf5", "pixels", "allow_outside_root"}
GROUP_SCOPES = ("global", "split")
SHIPPED_OVERLAP = ("error", "report")
KINDS = ("folder", "csv", "hdf5")
SOURCE_KEYS = {"file", "image_dirs", "id_column", "path_column", "label_column", "onehot_columns", "group_column",
               "split", "split_column", "group_table"}
GROUP_TABLE_KEYS = {"file", "id_column", "group_column"}
TABLE_KEYS = {"folder": {"split_dirs", "group_regex"},
              "split": {"seed", "val_fraction", "test_fraction", "test_count", "val_stratify"},
              "csv": SOURCE_KEYS | {"sources", "label_map"},
              "hdf5": {"file", "images", "labels", "groups", "splits", "ids", "float_rule"}}
FLOAT_RULES = ("minmax", "unit")  # per-image min-max to 0-255, or values in [0, 1] times 255


@dataclass
class DatasetSpec:
    """A parsed dataset spec; ``source`` is the TOML file it came from."""

    name: str
    kind: str
    root: str
    classes: list[str]
    source: Path
    description: str = ""
    group: str = "group"  # what a group is, for reports: patient, lesion, image ...
    group_scope: str = "global"  # "split": group ids are numbered afresh inside each shipped split
    shipped_overlap: str = "error"  # a global group id in two shipped splits: "error", or "report" it
    pixels: PixelRules = field(default_factory=PixelRules)
    folder: dict = field(default_factory=dict)
    csv: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    mri: dict = field(default_factory=dict)  # prepare-mri settings (read by probebench.data.mri)
    hdf5: dict = field(default_factory=dict)
    allow_outside_root: bool = False  # files (CSV paths, symlink targets) may lie outside the dataset folder


@dataclass
class Manifest:
    """Every sample of a resolved dataset, in a fixed order (sorted by sample id)."""

    dataset: str
    classes: list[str]
    root: Path
    sample_ids: np.ndarray
    paths: list[str]
    labels: np.ndarray
    groups: np.ndarray
    splits: np.ndarray
    digests: np.ndarray  # sha256 of each file's bytes (memoised by stat), so a replaced image changes the version
    junk: list[str] = field(default_factory=list)
    group_kind: str = "group"  # what a group is: patient, lesion, image ...
    source: dict = field(default_factory=dict)  # kind-specific facts that change the pixels (HDF5 checksum, rule)
    pixels: PixelRules = field(default_factory=PixelRules)  # how deep / DICOM pixels become 8 bits
    data_root: Path | None = None  # the data root the dataset was found in
    group_scope: str = "global"
    shipped_overlap: dict = field(default_factory=dict)  # ids found in more than one shipped split
    notes: list[str] = field(default_factory=list)  # facts a user should hear once (missing optional files ...)
    overlap_note: str = ""  # ``shipped_overlap`` in words, said with the notes

    def __len__(self) -> int:
        return len(self.paths)

    def hash(self) -> str:
        """sha256 over classes, pixel rules and every sample's id, label, group, split and file contents."""
        digest = hashlib.sha256(json.dumps([self.classes, self.source, self.pixels.as_dict()],
                                           sort_keys=True).encode())
        for row in zip(self.sample_ids.tolist(), self.labels.tolist(), self.groups.tolist(),
                       self.splits.tolist(), self.digests.tolist()):
            digest.update(json.dumps(row).encode())
        return digest.hexdigest()

    def counts(self) -> dict[str, list[int]]:
        """Samples per split and class (the study's Tables I/II)."""
        return {s: np.bincount(self.labels[self.splits == s], minlength=len(self.classes)).tolist()
                for s in SPLITS}


# ---------------------------------------------------------------- specs

def packaged_spec_dir() -> Path:
    return Path(str(resources.files("probebench") / "configs" / "datasets"))


def spec_dirs() -> list[Path]:
    """Where named specs are looked up: ``./configs/datasets`` first, then the ones shipped in the package."""
    return [Path.cwd() / "configs" / "datasets", packaged_spec_dir()]


INTERNAL_SPECS = ("demo_shapes",)  # shipped for `probebench demo`; usable by name, not listed


def list_specs() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(spec_dirs()):
        for p in sorted(d.glob("*.toml")) if d.is_dir() else []:
            found[p.stem] = p
    return dict(sorted(found.items()))


def find_spec(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml":
        if not p.is_file():
            raise ProbebenchError(f"dataset spec file not found: {p}")
        return p
    known = list_specs()
    if str(name_or_path) not in known:
        raise ProbebenchError(f"unknown dataset {name_or_path!r}{did_you_mean(str(name_or_path), known)}; known "
                              f"datasets: {', '.join(k for k in known if k not in INTERNAL_SPECS)} "
                              "(or give the path to a spec .toml)")
    return known[str(name_or_path)]


def _is_str(v) -> bool:
    return isinstance(v, str) and v != ""


def _str_or_alternatives(v) -> bool:
    return _is_str(v) or (isinstance(v, list) and len(v) > 0 and all(_is_str(x) for x in v))


def _str_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_str(x) for k, x in v.items())


def _fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def _relative(v) -> bool:
    """A path inside the dataset folder: relative, no ``..`` part."""
    return _is_str(v) and not Path(v).is_absolute() and ".." not in Path(v).parts and "\\" not in v


SPEC_TYPES = {  # table ("" for the top level) -> key -> (test, what is allowed)
    "": {"name": (_is_str, "a dataset name"), "description": (lambda v: isinstance(v, str), "text"),
         "kind": (_is_str, "one of " + ", ".join(KINDS)), "root": (_relative, "a folder inside the data root "
                                                                  "(relative, no ..)"),
         "classes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(_is_str(c) for c in v)
                     and len(set(v)) == len(v), "a list of at least two distinct class names"),
         "group": (_is_str, "a word such as patient or lesion"),
         "group_scope": (lambda v: v in GROUP_SCOPES, "one of " + ", ".join(GROUP_SCOPES)),
         "shipped_overlap": (lambda v: v in SHIPPED_OVERLAP, "one of " + ", ".join(SHIPPED_OVERLAP)),
         "allow_outside_root": (lambda v: isinstance(v, bool), "true or false")},
    "folder": {"split_dirs": (lambda v: isinstance(v, dict) and all(
                   isinstance(x, list) and all(isinstance(f, str) and (f == "" or _relative(f)) for f in x)
                   for x in v.values()),
                   "a table of split -> list of folders, e.g. { train = [\"train\"], test = [\"test\"] } (a key "
                   "that is not train/val/test, such as pool, is an unsplit pool)"),
               "group_regex": (_is_str, "a regular expression with a named group (?P<group>...)")},
    "split": {"seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
              "val_fraction": (_fraction, "a number between 0 and 1"),
              "test_fraction": (_fraction, "a number between 0 and 1"),
              "test_count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                             "an integer >= 1"),
              "val_stratify": (lambda v: isinstance(v, bool), "true or false")},
    "source": {"file": (lambda v: _str_or_alternatives(v) and all(_relative(x) for x in ([v] if isinstance(v, str)
                                                                                          else v)),
                        "a table file inside the dataset folder, or a list of alternative names"),
               "image_dirs": (lambda v: isinstance(v, list) and len(v) > 0 and all(
                   _str_or_alternatives(x) and all(_relative(y) for y in ([x] if isinstance(x, str) else x))
                   for x in v), "a list of image folders inside the dataset folder"),
               "id_column": (_is_str, "a column name"), "path_column": (_is_str, "a column name"),
               "label_column": (_is_str, "a column name"), "group_column": (_is_str, "a column name"),
               "split_column": (_is_str, "a column name"),
               "split": (lambda v: isinstance(v, str) and v.lower() in SPLIT_ALIASES, "train, val or test"),
               "onehot_columns": (lambda v: _str_map(v) and len(v) >= 2, "a table of column -> class"),
               "label_map": (_str_map, "a table of raw label -> class"),
               "group_table": (lambda v: isinstance(v, dict) and "file" in v and all(
                   _str_or_alternatives(x) for x in v.values()), "a table with file, id_column, group_column"),
               "sources": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v),
                           "a list of [[csv.sources]] tables")},
    "hdf5": {k: (_is_str, "a name") for k in ("images", "labels", "groups", "splits", "ids")} | {
        "file": (_relative, "a file inside the dataset folder"),
        "float_rule": (lambda v: v in FLOAT_RULES, "one of " + ", ".join(FLOAT_RULES))},
}


def _check_spec(raw: dict, path: Path, text: str) -> None:
    """Unknown keys, wrong types and impossible values, each named with the spec's line."""
    def fail(section, key, message):
        raise ProbebenchError(f"{path}, line {line_of(text, section, key)}: {message}")

    unknown = set(raw) - SPEC_KEYS
    if unknown:
        fail(None, sorted(unknown)[0], f"unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    for key in ("kind", "classes"):
        if key not in raw:
            fail(None, None, f"missing required key {key!r}")
    for key in set(TABLE_KEYS) | {"pixels", "mri"}:
        if key in raw and not isinstance(raw[key], dict):
            fail(None, key, f"{key} must be a [{key}] table, not {raw[key]!r}")
    csv_table = raw.get("csv", {})
    sources = csv_table.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(x, dict) for x in sources):
        fail("csv", "sources", "sources must be a list of [[csv.sources]] tables")
    tables = [("", None, raw, set(SPEC_TYPES[""]))] + [(t, t, raw.get(t, {}), TABLE_KEYS[t]) for t in TABLE_KEYS] + [
        (f"csv.sources[{i}]", "csv.sources", src, SOURCE_KEYS) for i, src in enumerate(sources)]
    for name, section, content, allowed in tables:
        if name and set(content) - allowed:
            extra = sorted(set(content) - allowed)
            fail(section, extra[0], f"unknown keys {extra} in [{name}]; allowed: {sorted(allowed)}")
        types = SPEC_TYPES["source" if name == "csv" or name.startswith("csv.") else name]
        for key, value in content.items():
            if key in types and not types[key][0](value):
                where = f"[{name}] " if name else ""
                fail(section, key, f"{where}{key} must be {types[key][1]}, not {value!r}")
        if isinstance(content.get("group_table"), dict) and set(content["group_table"]) - GROUP_TABLE_KEYS:
            fail(section, "group_table", f"unknown keys {sorted(set(content['group_table']) - GROUP_TABLE_KEYS)} in "
                                         f"[{name}.group_table]; allowed: {sorted(GROUP_TABLE_KEYS)}")
    if raw["kind"] not in KINDS:
        fail(None, "kind", f"kind {raw['kind']!r} is not one of: {', '.join(KINDS)}")
    regex = raw.get("folder", {}).get("group_regex")
    if regex is not None:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            fail("folder", "group_regex", f"group_regex {regex!r} is not a valid regular expression ({exc})")
        if "group" not in compiled.groupindex:
            fail("folder", "group_regex", f"group_regex {regex!r} has no named group (?P<group>...) to take the "
                                          "group id from")
    labels = set(raw["classes"])
    for name, _, content, _ in tables[1:]:
        mapped = list(content.get("label_map", {}).values()) + list(content.get("onehot_columns", {}).values())
        if set(mapped) - labels:
            fail(name.split("[")[0], "label_map" if "label_map" in content else "onehot_columns",
                 f"[{name}] maps to {sorted(set(mapped) - labels)}, which are not among the classes {raw['classes']}")


def load_spec(name_or_path: str | Path) -> DatasetSpec:
    """Parse and check a spec; unknown keys and wrong types are errors naming the line, so a typo never
    silently changes a dataset; names and paths are checked to stay in their folders."""
    path = find_spec(name_or_path)
    raw, text = read_toml(path, "dataset spec")
    _check_spec(raw, path, text)
    name = raw.get("name", path.stem)
    component(name, "dataset name", f"{path}: ")
    return DatasetSpec(name=name, kind=raw["kind"], root=raw.get("root", name), classes=list(raw["classes"]),
                       source=path, description=raw.get("description", ""), group=raw.get("group", "group"),
                       group_scope=raw.get("group_scope", "global"),
                       shipped_overlap=raw.get("shipped_overlap", "error"),
                       pixels=PixelRules.from_spec(raw.get("pixels", {}), str(path)),
                       folder=raw.get("folder", {}), csv=raw.get("csv", {}), split=raw.get("split", {}),
                       mri=raw.get("mri", {}), hdf5=raw.get("hdf5", {}),
                       allow_outside_root=raw.get("allow_outside_root", False))


def data_roots(explicit=None) -> list[Path]:
    """Where datasets are looked for, in order: every ``--data-root`` given, else ``$PROBEBENCH_DATA``
    (a path list, ``:``-separated like ``$PATH``), else ``./data``."""
    if explicit:
        items = list(explicit) if isinstance(explicit, (list, tuple)) else [explicit]
    elif os.environ.get("PROBEBENCH_DATA"):
        items = [p for p in os.environ["PROBEBENCH_DATA"].split(os.pathsep) if p]
    else:
        items = ["data"]
    return [Path(p) for p in items]


def data_root(explicit=None) -> Path:
    """The first data root (where ``prepare-mri`` and the demo write)."""
    return data_roots(explicit)[0]


def roots_origin(explicit=None) -> str:
    if explicit:
        return "--data-root"
    return "$PROBEBENCH_DATA" if os.environ.get("PROBEBENCH_DATA") else "the default ./data"


def find_dataset_root(spec: DatasetSpec, explicit=None) -> Path | None:
    """The first data root that holds ``spec.root``, or None."""
    for base in data_roots(explicit):
        if (base / spec.root).is_dir():
            return base
    return None


_SAID: set = set()


def say_notes(manifest: "Manifest") -> None:
    """Print each of a manifest's notes to stderr once per process (a study loads a dataset many times)."""
    for note in manifest.notes + ([manifest.overlap_note] if manifest.overlap_note else []):
        if (manifest.dataset, note) not in _SAID:
            _SAID.add((manifest.dataset, note))
            sys.stderr.write(f"note: dataset {manifest.dataset!r}: {note}\n")


# ---------------------------------------------------------------- resolving

def load_manifest(dataset: str | Path | DatasetSpec, data_root_dir=None, *, quiet: bool = False,
                  val_unit: str = "group") -> Manifest:
    """Resolve a dataset (name, spec path or spec) under the data roots into its manifest, splits made.

    ``val_unit="sample"`` carves validation from training images rather than groups, as the study's code did
    (a patient may then sit in train and validation: validation turns optimistic); test stays group-disjoint.

    ``data_root_dir``: one folder or a list (the first that holds the dataset wins). Notes (an optional
    release file that is absent, ids repeated across shipped splits) go to stderr once unless ``quiet``.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset)
    base = find_dataset_root(spec, data_root_dir)
    if base is None:
        tried = ", ".join(str(r / spec.root) for r in data_roots(data_root_dir))
        raise NotOnThisMachine(f"data for dataset {spec.name!r} not found: no folder {spec.root!r} in any data root "
                              f"(tried {tried}; roots from {roots_origin(data_root_dir)}; set --data-root, which may "
                              f"be given more than once, or $PROBEBENCH_DATA; spec {spec.source})")
    root = base / spec.root
    junk: list[str] = []
    source: dict = {}
    notes: list[str] = []
    if spec.kind == "hdf5":
        rows, source = _hdf5_rows(spec, root)
    else:
        rows = _folder_rows(spec, root, junk) if spec.kind == "folder" else _csv_rows(spec, root, junk, notes)
    if not rows:
        raise ProbebenchError(f"dataset {spec.name!r}: no images found under {root}")
    if spec.kind != "hdf5":
        check_contained(spec, root, [r[1] for r in rows], "image")
    # ids and groups are text in every output (zarr, CSV, JSON): a name that is not UTF-8 is carried escaped
    rows = [(printable(r[0]), r[1], r[2], printable(str(r[3])), r[4]) for r in rows]
    rows.sort(key=lambda r: r[0])
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, k in Counter(ids).items() if k > 1)
        paths = [f"{i}: {', '.join(r[1] for r in rows if r[0] == i)}" for i in dup[:3]]
        raise ProbebenchError(f"dataset {spec.name!r}: {len(dup)} sample id(s) listed more than once: "
                              + "; ".join(paths) + (" …" if len(dup) > 3 else ""))
    shipped = np.array([r[4] or "" for r in rows], dtype=object)
    groups = np.array([r[3] for r in rows], dtype=object)
    overlap, overlap_note = _shipped_overlap(spec, groups, shipped)
    if spec.group_scope == "split":  # the same id in two shipped splits is two groups
        groups = np.array([f"{s}/{g}" if s else g for g, s in zip(groups, shipped)], dtype=object)
    manifest = Manifest(
        dataset=spec.name, classes=spec.classes, root=root,
        sample_ids=np.array(ids, dtype=str), paths=[r[1] for r in rows],
        labels=np.array([r[2] for r in rows], dtype=np.int64), groups=groups.astype(str),
        splits=shipped.copy(),
        digests=np.array([""] * len(rows) if spec.kind == "hdf5"  # the HDF5 file's sha256 is in ``source``
                         else content_digests([r[1] for r in rows]), dtype=str),
        junk=sorted(junk), group_kind=spec.group, source=source, pixels=spec.pixels, data_root=base,
        group_scope=spec.group_scope, shipped_overlap=overlap, notes=notes, overlap_note=overlap_note)
    if val_unit not in VAL_UNITS:
        raise ProbebenchError(f"val_unit {val_unit!r} is not one of {', '.join(VAL_UNITS)}")
    _assign_splits(manifest, spec, val_unit)
    manifest.splits = manifest.splits.astype(str)
    for origin in sorted(set(shipped.tolist())):  # the splits probebench carves never share a group
        inside = shipped == origin
        splits = manifest.splits[inside]
        if val_unit == "sample":  # by request only train and validation may share groups; test never
            splits = np.where(splits == "val", "train", splits)
        check_disjoint(manifest.groups[inside], splits, where=f"dataset {spec.name!r}: ")
    if val_unit == "sample":
        manifest.notes.append("validation carved by image, not by " + spec.group + " (val_unit = sample, as the "
                              "study's code): the same " + spec.group + " may be in train and validation, so "
                              "validation scores are optimistic; test stays disjoint")
        manifest.source = {**manifest.source, "val_unit": "sample"}
    for s in ("train", "val", "test"):
        if not (manifest.splits == s).any():
            raise ProbebenchError(f"dataset {spec.name!r}: the {s} split is empty ({_split_hint(spec, s)}; "
                                  f"spec {spec.source})")
    if not quiet:
        say_notes(manifest)
    return manifest


def check_contained(spec: DatasetSpec, root: Path, paths: list[str], what: str) -> None:
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


def check_trainable(dataset: str, classes: list[str], counts: dict[str, list[int]]) -> None:
    """Refuse a training split that lacks a class: no head can learn it, yet it would be scored on it."""
    absent = [c for c, k in zip(classes, counts["train"]) if k == 0]
    if absent:
        table = ", ".join(f"{c}: {'/'.join(str(counts[s][i]) for s in SPLITS)}" for i, c in enumerate(classes))
        raise ProbebenchError(f"dataset {dataset!r}: class(es) {absent} have no training images, so no head can "
                              f"learn them (train/val/test images per class: {table}); check the data root holds "
                              "the whole release, or the spec's classes and split")


def _shipped_overlap(spec: DatasetSpec, groups: np.ndarray, shipped: np.ndarray) -> tuple[dict, str]:
    """Group ids found in more than one shipped split: an error for global ids unless the spec says to report
    them (a leak the release itself ships); expected, and reported, for split-scoped ids."""
    shared = shared_groups(groups, np.where(shipped == "", "unsplit", shipped))
    if not shared:
        return {}, ""
    examples = [f"{g} ({'/'.join(s)})" for g, s in list(shared.items())[:5]]
    info = {"scope": spec.group_scope, "count": len(shared), "examples": examples}
    if spec.group_scope == "split":
        note = (f"{len(shared)} {spec.group} id(s) repeat across the shipped splits, e.g. "
                f"{', '.join(examples[:3])}; "
                f"the spec says ids are numbered per shipped split (group_scope = \"split\"), so they are "
                "treated as different groups")
    elif spec.shipped_overlap == "report":
        note = (f"{len(shared)} {spec.group}(s) appear in more than one shipped split, e.g. "
                f"{', '.join(examples[:3])}: the release's own split shares them (kept as shipped; "
                "shipped_overlap = \"report\")")
    else:
        raise ProbebenchError(
            f"dataset {spec.name!r}: {len(shared)} {spec.group}(s) sit in more than one shipped split, which would "
            f"leak between train and evaluation: {', '.join(examples)}{' …' if len(shared) > 5 else ''}. If the "
            f"release numbers {spec.group}s afresh in each split, set group_scope = \"split\" in {spec.source}; "
            "if the release really shares them, shipped_overlap = \"report\" keeps its split and reports them")
    return info, note


def _split_hint(spec: DatasetSpec, split: str) -> str:
    if split == "val":
        return f"split.val_fraction = {spec.split.get('val_fraction', 0.2)} of the training groups held none; " \
               "a class needs at least 2 groups to give one to validation"
    if split == "test":
        return "no test folder or rows, and neither split.test_fraction nor split.test_count carved one"
    return "every group went to validation or test"


def _label_index(spec: DatasetSpec, raw: str, where: str) -> int:
    mapped = spec.csv.get("label_map", {}).get(raw, raw)
    if mapped not in spec.classes:
        raise ProbebenchError(f"{where}: label {raw!r} is not one of the classes {spec.classes}")
    return spec.classes.index(mapped)


def _group_of(spec: DatasetSpec, regex: re.Pattern | None, path: Path, default: str) -> str:
    if regex is None:
        return default
    m = regex.search(path.stem)
    if not m:
        raise ProbebenchError(f"{path}: file name does not match the group pattern {regex.pattern!r} "
                              f"of spec {spec.source}")
    return m.group("group")


def _folder_rows(spec: DatasetSpec, root: Path, junk: list[str]) -> list[tuple]:
    """One subfolder per class, optionally under split folders (``folder.split_dirs``)."""
    regex = re.compile(spec.folder["group_regex"]) if "group_regex" in spec.folder else None
    split_dirs = spec.folder.get("split_dirs") or {"": [""]}
    rows = []
    for split, dirs in split_dirs.items():
        for d in dirs:
            base = root / d
            if not base.is_dir():
                raise ProbebenchError(f"dataset {spec.name!r}: split folder {base} is missing")
            for sub in sorted(p for p in base.iterdir()):
                if sub.is_dir() and sub.name not in spec.classes:
                    if sub.name == "__MACOSX" or sub.name.startswith("."):
                        junk.extend(str(p) for p in sub.rglob("*") if p.is_file())
                        continue
                    raise ProbebenchError(f"{sub}: folder {sub.name!r} is not one of the classes {spec.classes}")
                if sub.is_file():
                    junk.append(str(sub))
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
                    rows.append((sid, str(p), label, _group_of(spec, regex, p, sid),
                                 SPLIT_ALIASES.get(split.lower()) if split else None))
                if len(rows) == n_before:
                    raise ProbebenchError(f"dataset {spec.name!r}: class folder {folder} holds no images")
    return rows


def _csv_sources(spec: DatasetSpec) -> list[dict]:
    return spec.csv.get("sources") or [spec.csv]


def _first_present(root: Path, names: str | list[str], is_dir: bool = False) -> Path:
    """``root / name`` for the first of the alternative ``names`` that exists (releases differ in naming:
    the ISIC site's ``ISIC2018_Task3_Test_Input`` is Dataverse's ``ISIC2018_Task3_Test_Images``); the first
    name when none does, so that errors name the expected one."""
    options = [names] if isinstance(names, str) else list(names)
    for name in options:
        if ((root / name).is_dir() if is_dir else (root / name).is_file()):
            return root / name
    return root / options[0]


def _describe(root: Path, names: str | list[str]) -> str:
    options = [names] if isinstance(names, str) else list(names)
    return str(root / options[0]) + (f" (or {', '.join(options[1:])})" if len(options) > 1 else "")


def _image_index(root: Path, dirs: list, junk: list[str]) -> dict[str, Path]:
    """File stem -> image path over the source's image folders; a stem found twice is an error naming both."""
    index: dict[str, Path] = {}
    for d in dirs:
        base = _first_present(root, d, is_dir=True)
        if not base.is_dir():
            raise ProbebenchError(f"image folder {_describe(root, d)} is missing")
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


def _read_table(table: Path, needed: dict[str, str], spec: DatasetSpec) -> list[dict]:
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


def _group_table(src: dict, root: Path, spec: DatasetSpec, notes: list[str], images_of: str) -> dict[str, str] | None:
    """Image id -> group id from a separate table (ISIC's lesion groupings), or None when the file is absent."""
    g = src.get("group_table")
    if not g:
        return None
    table = _first_present(root, g["file"])
    check_contained(spec, root, [table], "group table")
    if not table.is_file():
        notes.append(f"{table.name} not found in {root}: each image of {images_of} is its own {spec.group}, "
                     f"so a {spec.group} shared with another split cannot be detected (put the file there to use it)")
        return None
    id_col, group_col = g.get("id_column", "image"), g.get("group_column", "lesion_id")
    rows = _read_table(table, {id_col: "group_table.id_column", group_col: "group_table.group_column"}, spec)
    return {r[id_col]: r[group_col].strip() for r in rows if r[group_col] and r[group_col].strip()}


def _csv_rows(spec: DatasetSpec, root: Path, junk: list[str], notes: list[str]) -> list[tuple]:
    """Rows of one or more CSV tables: path or image id, label or one-hot columns, group, split."""
    rows = []
    for src in _csv_sources(spec):
        table = _first_present(root, src.get("file", "manifest.csv"))
        if not table.is_file():
            raise ProbebenchError(f"dataset {spec.name!r}: table {_describe(root, src.get('file', 'manifest.csv'))} "
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
            label = _label_index(spec, raw, where)
            sid = Path(os.path.relpath(path, root)).as_posix()  # lexical: outside files are refused below
            group = rec[src["group_column"]] if src.get("group_column") else sid
            if lesions is not None:
                if key in lesions:
                    group = lesions[key]
                else:
                    ungrouped += 1
            split = src.get("split") or (rec.get(src.get("split_column", "split")) or None)
            if split is not None and split.lower() not in SPLIT_ALIASES:
                raise ProbebenchError(f"{where}: split {split!r} is not one of train, val, test")
            rows.append((sid, str(path), label, group, SPLIT_ALIASES.get(split.lower()) if split else None))
        if ungrouped:
            notes.append(f"{ungrouped} image(s) of {table.name} have no {spec.group} in the group table; each is "
                         f"its own {spec.group}")
        if index is not None:  # images the table does not label: skipped and counted, never guessed
            junk.extend(f"{index[k]} (no row in {table.name})" for k in sorted(set(index) - listed))
    return rows


def _hdf5_rows(spec: DatasetSpec, root: Path) -> tuple[list[tuple], dict]:
    """One HDF5 file: an image array (N x H x W [x C]), labels, optional ids, groups and splits."""
    import h5py

    h = spec.hdf5
    path = root / h.get("file", "data.h5")
    if not path.is_file():
        raise ProbebenchError(f"dataset {spec.name!r}: HDF5 file {path} is missing")
    check_contained(spec, root, [path], "HDF5")
    rule = h.get("float_rule", "minmax")
    if rule not in FLOAT_RULES:
        raise ProbebenchError(f"{spec.source}: float_rule {rule!r} is not one of {', '.join(FLOAT_RULES)}")
    names = {k: h.get(k, d) for k, d in (("images", "images"), ("labels", "labels"), ("groups", None),
                                          ("splits", None), ("ids", None))}
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ProbebenchError(f"cannot open HDF5 file {path}: {exc}") from exc
    with fh:
        missing = [v for v in names.values() if v is not None and v not in fh]
        if missing:
            raise ProbebenchError(f"{path}: no dataset(s) {missing} (the spec names them); the file holds: "
                                  f"{sorted(fh.keys())}")
        images = fh[names["images"]]
        if images.ndim not in (3, 4):
            raise ProbebenchError(f"{path}: {names['images']} has shape {images.shape}; expected N x H x W [x C]")
        n = images.shape[0]

        def column(key):
            if names[key] is None:
                return None
            values = fh[names[key]][()]
            if len(values) != n:
                raise ProbebenchError(f"{path}: {names[key]} has {len(values)} entries but {names['images']} has {n}")
            return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]

        labels, groups, splits, ids = (column(k) for k in ("labels", "groups", "splits", "ids"))
        source = {"hdf5_sha256": content_digests([str(path.resolve())])[0], "images": names["images"], "shape": list(images.shape),
                  "dtype": str(images.dtype), "float_rule": rule}
    rows = []
    for i in range(n):
        raw = labels[i]
        if isinstance(raw, str):
            label = _label_index(spec, raw, f"{path}, {names['labels']}[{i}]")
        elif 0 <= int(raw) < len(spec.classes):
            label = int(raw)
        else:
            raise ProbebenchError(f"{path}, {names['labels']}[{i}]: label {raw} is outside 0..{len(spec.classes) - 1}")
        sid = str(ids[i]) if ids is not None else f"{i:06d}"
        split = splits[i] if splits is not None else None
        if isinstance(split, int):
            split = ("train", "val", "test")[split]
        if split is not None and str(split).lower() not in SPLIT_ALIASES:
            raise ProbebenchError(f"{path}, {names['splits']}[{i}]: split {split!r} is not one of train, val, test")
        rows.append((sid, hdf5_uri(path, names["images"], i, rule), label,
                     str(groups[i]) if groups is not None else sid,
                     SPLIT_ALIASES[str(split).lower()] if split is not None else None))
    return rows, source


def _assign_splits(m: Manifest, spec: DatasetSpec, val_unit: str = "group") -> None:
    """Carve test from the unsplit pool (``test_fraction`` / ``test_count``) and val from train groups."""
    seed = int(spec.split.get("seed", 0))
    pool = m.splits == ""
    if pool.any():
        if not ("test_fraction" in spec.split or "test_count" in spec.split):
            if (m.splits == "test").any():
                m.splits[pool] = "train"
            else:
                raise ProbebenchError(f"dataset {spec.name!r} has no test split; set split.test_fraction "
                                      f"or split.test_count in {spec.source}")
        else:
            idx = np.flatnonzero(pool)
            key = "test_count" if "test_count" in spec.split else "test_fraction"
            held = _holdout(m, spec, idx, key, fraction=spec.split.get("test_fraction"),
                            count=spec.split.get("test_count"), seed=seed)
            m.splits[idx] = np.where(held, "test", "train")
    if not (m.splits == "val").any():
        idx = np.flatnonzero(m.splits == "train")
        held = _holdout(m, spec, idx, "val_fraction", fraction=float(spec.split.get("val_fraction", 0.2)),
                        seed=seed + 1, by_sample=val_unit == "sample",
                        stratify=spec.split.get("val_stratify", True))
        m.splits[idx[held]] = "val"


def _holdout(m: Manifest, spec: DatasetSpec, idx: np.ndarray, key: str, by_sample: bool = False,
             **kwargs) -> np.ndarray:
    """``stratified_group_holdout`` whose errors name the dataset, the spec key and the counts; ``by_sample``
    treats every sample as its own group."""
    try:
        groups = m.sample_ids[idx] if by_sample else m.groups[idx]
        return stratified_group_holdout(m.labels[idx], groups, **kwargs)
    except ProbebenchError as exc:
        per_class = np.bincount(m.labels[idx], minlength=len(m.classes)).tolist()
        raise ProbebenchError(
            f"dataset {spec.name!r} is too small for split.{key} = {spec.split.get(key)} in {spec.source}: {exc} "
            f"({len(idx)} images, {len(set(m.groups[idx].tolist()))} groups by {spec.group}; images per class "
            f"{dict(zip(m.classes, per_class))}); lower split.{key} or check that the data root holds the "
            "whole release") from None
