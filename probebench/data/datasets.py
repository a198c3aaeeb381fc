"""Dataset specs (TOML) -> one manifest: sample id, path, label, group, split; its hash is the version.

A spec's ``kind`` names its layout (``data/layouts``: ``folder``, ``csv``, ``hdf5``), which reads the release into
rows; everything after (ids, groups, splits, hashes) is done here the same way for all. Release clutter is
skipped and counted; anything else unexpected is an error naming the file.

Groups (patients, lesions) decide which samples may never be split apart. Their ids are either
global (``group_scope = "global"``: one id is one patient everywhere) or numbered afresh inside each
split the release ships (``group_scope = "split"``, as Kaggle's chest X-ray release does), in which
case ids are compared only within their shipped split and repeats across shipped splits are reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from probebench.errors import NotOnThisMachine, ProbebenchError, did_you_mean
from probebench.data.filehash import content_digests
from probebench.data.layouts import LAYOUTS
from probebench.data.layouts.base import check_contained, is_str, relative
from probebench.data.pixels import PixelRules
from probebench.data.splits import SPLITS, check_disjoint, shared_groups, stratified_group_holdout
from probebench.validate import VAL_UNITS, component, line_of, printable, read_toml

SPEC_KEYS = {"name", "description", "kind", "root", "classes", "group", "group_scope", "shipped_overlap", "split",
             "mri", "pixels", "allow_outside_root"}  # and [<kind>]: each layout's own table
GROUP_SCOPES = ("global", "split")
SHIPPED_OVERLAP = ("error", "report")


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
    layout: dict = field(default_factory=dict)  # the [<kind>] table, read by the layout
    split: dict = field(default_factory=dict)
    mri: dict = field(default_factory=dict)  # prepare-mri settings (read by probebench.data.mri)
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


def _env_spec_dirs() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get("PROBEBENCH_SPECS", "").split(os.pathsep) if p]


def spec_dirs(data_root=None) -> list[Path]:
    """Where a dataset named without a path is looked up, first match wins: the folders of ``$PROBEBENCH_SPECS``
    (``:``-separated), the working folder, ``./configs/datasets``, each data root, then the specs shipped with
    probebench."""
    return [*_env_spec_dirs(), Path.cwd(), Path.cwd() / "configs" / "datasets", *data_roots(data_root),
            packaged_spec_dir()]


INTERNAL_SPECS = ("demo_shapes",)  # shipped for `probebench demo`; usable by name, not listed


def _is_spec(path: Path) -> bool:
    """A TOML file with a dataset spec's required keys: the working folder and the data roots hold other TOML
    files too (pyproject.toml, study files), which are not datasets."""
    import tomllib

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "kind" in raw and "classes" in raw


def list_specs(data_root=None) -> dict[str, Path]:
    """Dataset name -> spec file, for every spec in ``spec_dirs`` (an earlier folder's spec hides a later one's)."""
    dedicated = {Path.cwd() / "configs" / "datasets", packaged_spec_dir(), *_env_spec_dirs()}
    found: dict[str, Path] = {}
    for d in reversed(spec_dirs(data_root)):
        for p in sorted(d.glob("*.toml")) if d.is_dir() else []:
            if d in dedicated or _is_spec(p):
                found[p.stem] = p
    return dict(sorted(found.items()))


def find_spec(name_or_path: str | Path, data_root=None) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml":
        if not p.is_file():
            raise ProbebenchError(f"dataset spec file not found: {p}")
        return p
    known = list_specs(data_root)
    if str(name_or_path) not in known:
        searched = ", ".join(str(d) for d in spec_dirs(data_root))
        raise ProbebenchError(f"unknown dataset {name_or_path!r}{did_you_mean(str(name_or_path), known)}; known "
                              f"datasets: {', '.join(k for k in known if k not in INTERNAL_SPECS)} "
                              f"(or give the path to a spec .toml; specs are looked for, first match winning, in: "
                              f"{searched})")
    return known[str(name_or_path)]


def _fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


SPEC_TYPES = {  # table ("" for the top level) -> key -> (test, what is allowed); each layout states its own table's
    "": {"name": (is_str, "a dataset name"), "description": (lambda v: isinstance(v, str), "text"),
         "kind": (is_str, "one of " + ", ".join(LAYOUTS)), "root": (relative, "a folder inside the data root "
                                                                "(relative, no ..)"),
         "classes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(is_str(c) for c in v)
                     and len(set(v)) == len(v), "a list of at least two distinct class names"),
         "group": (is_str, "a word such as patient or lesion"),
         "group_scope": (lambda v: v in GROUP_SCOPES, "one of " + ", ".join(GROUP_SCOPES)),
         "shipped_overlap": (lambda v: v in SHIPPED_OVERLAP, "one of " + ", ".join(SHIPPED_OVERLAP)),
         "allow_outside_root": (lambda v: isinstance(v, bool), "true or false")},
    "split": {"seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
              "val_fraction": (_fraction, "a number between 0 and 1"),
              "test_fraction": (_fraction, "a number between 0 and 1"),
              "test_count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                             "an integer >= 1"),
              "val_stratify": (lambda v: isinstance(v, bool), "true or false")},
}


def _spec_types() -> dict:
    """The spec's tables and their keys' types: the fixed ones and each layout's own (read when a spec is)."""
    return {**SPEC_TYPES, **{name: layout.keys for name, layout in LAYOUTS.items()}}


def _check_spec(raw: dict, path: Path, text: str) -> None:
    """Unknown keys, wrong types and impossible values, each named with the spec's line."""
    def fail(section, key, message):
        raise ProbebenchError(f"{path}, line {line_of(text, section, key)}: {message}")

    tables = _spec_types()
    allowed_top = SPEC_KEYS | set(LAYOUTS)
    unknown = set(raw) - allowed_top
    if unknown:
        fail(None, sorted(unknown)[0], f"unknown keys {sorted(unknown)}; allowed: {sorted(allowed_top)}")
    for key in ("kind", "classes"):
        if key not in raw:
            fail(None, None, f"missing required key {key!r}")
    for key in set(tables) - {""} | {"pixels", "mri"}:
        if key in raw and not isinstance(raw[key], dict):
            fail(None, key, f"{key} must be a [{key}] table, not {raw[key]!r}")
    for name, types in tables.items():
        content = raw if not name else raw.get(name, {})
        if name and set(content) - set(types):
            extra = sorted(set(content) - set(types))
            fail(name, extra[0], f"unknown keys {extra} in [{name}]; allowed: {sorted(types)}")
        for key, value in content.items():
            if key in types and not types[key][0](value):
                fail(name or None, key, f"{f'[{name}] ' if name else ''}{key} must be {types[key][1]}, not {value!r}")
        if name in LAYOUTS:
            LAYOUTS[name].check(content, lambda key, message, section=None, name=name:
                                fail(section or name, key, message))
    if raw["kind"] not in LAYOUTS:
        fail(None, "kind", f"kind {raw['kind']!r} is not one of: {', '.join(LAYOUTS)}")
    for name, layout in LAYOUTS.items():
        mapped = set(layout.labels_named(raw.get(name, {})))
        if mapped - set(raw["classes"]):
            fail(name, "label_map" if "label_map" in raw.get(name, {}) else "onehot_columns",
                 f"[{name}] maps to {sorted(mapped - set(raw['classes']))}, which are not among the classes "
                 f"{raw['classes']}")


def load_spec(name_or_path: str | Path, data_root=None) -> DatasetSpec:
    """Parse and check a spec; unknown keys and wrong types are errors naming the line, so a typo never
    silently changes a dataset; names and paths are checked to stay in their folders."""
    path = find_spec(name_or_path, data_root)
    raw, text = read_toml(path, "dataset spec")
    _check_spec(raw, path, text)
    name = raw.get("name", path.stem)
    component(name, "dataset name", f"{path}: ")
    return DatasetSpec(name=name, kind=raw["kind"], root=raw.get("root", name), classes=list(raw["classes"]),
                       source=path, description=raw.get("description", ""), group=raw.get("group", "group"),
                       group_scope=raw.get("group_scope", "global"),
                       shipped_overlap=raw.get("shipped_overlap", "error"),
                       pixels=PixelRules.from_spec(raw.get("pixels", {}), str(path)),
                       layout=raw.get(raw["kind"], {}), split=raw.get("split", {}), mri=raw.get("mri", {}),
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
    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset, data_root_dir)
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
    layout = LAYOUTS[spec.kind]
    rows, source = layout.rows(spec, root, junk, notes)
    if not rows:
        raise ProbebenchError(f"dataset {spec.name!r}: no images found under {root}")
    if layout.files:
        check_contained(spec, root, [r.path for r in rows], "image")
    # ids and groups are text in every output (zarr, CSV, JSON): a name that is not UTF-8 is carried escaped
    rows = sorted((r._replace(sample_id=printable(r.sample_id), group=printable(str(r.group))) for r in rows),
                  key=lambda r: r.sample_id)
    ids = [r.sample_id for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, k in Counter(ids).items() if k > 1)
        paths = [f"{i}: {', '.join(r.path for r in rows if r.sample_id == i)}" for i in dup[:3]]
        raise ProbebenchError(f"dataset {spec.name!r}: {len(dup)} sample id(s) listed more than once: "
                              + "; ".join(paths) + (" …" if len(dup) > 3 else ""))
    shipped = np.array([r.split or "" for r in rows], dtype=object)
    groups = np.array([r.group for r in rows], dtype=object)
    overlap, overlap_note = _shipped_overlap(spec, groups, shipped)
    if spec.group_scope == "split":  # the same id in two shipped splits is two groups
        groups = np.array([f"{s}/{g}" if s else g for g, s in zip(groups, shipped)], dtype=object)
    manifest = Manifest(
        dataset=spec.name, classes=spec.classes, root=root,
        sample_ids=np.array(ids, dtype=str), paths=[r.path for r in rows],
        labels=np.array([r.label for r in rows], dtype=np.int64), groups=groups.astype(str),
        splits=shipped.copy(),
        digests=np.array(content_digests([r.path for r in rows]) if layout.files  # else the layout's ``source``
                         else [""] * len(rows), dtype=str),
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
