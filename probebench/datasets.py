"""Dataset specs (TOML) -> one manifest: sample id, path, label, group, split; its hash is the version.

Kinds: ``folder`` (one subfolder per class, optionally under split folders) and ``csv`` (one or more
tables naming images, labels as a column or one-hot columns, groups, splits). Release clutter is
skipped and counted; anything else unexpected is an error naming the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from probebench.errors import ProbebenchError
from probebench.images import is_junk
from probebench.splits import SPLITS, check_disjoint, stratified_group_holdout

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
SPEC_KEYS = {"name", "description", "kind", "root", "classes", "group", "folder", "csv", "split", "mri", "hdf5"}
KINDS = ("folder", "csv", "hdf5")
SOURCE_KEYS = {"file", "image_dirs", "id_column", "path_column", "label_column", "onehot_columns", "group_column",
               "split", "split_column"}
TABLE_KEYS = {"folder": {"split_dirs", "group_regex"},
              "split": {"seed", "val_fraction", "test_fraction", "test_count"},
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
    folder: dict = field(default_factory=dict)
    csv: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    mri: dict = field(default_factory=dict)  # prepare-mri settings (read by probebench.mri)
    hdf5: dict = field(default_factory=dict)


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
    sizes: np.ndarray  # file sizes in bytes, part of the hash so a replaced image changes the version
    junk: list[str] = field(default_factory=list)
    group_kind: str = "group"  # what a group is: patient, lesion, image ...
    source: dict = field(default_factory=dict)  # kind-specific facts that change the pixels (HDF5 checksum, rule)

    def __len__(self) -> int:
        return len(self.paths)

    def hash(self) -> str:
        """sha256 over classes and every sample's id, label, group, split and file size."""
        digest = hashlib.sha256(json.dumps([self.classes, self.source], sort_keys=True).encode())
        for row in zip(self.sample_ids.tolist(), self.labels.tolist(), self.groups.tolist(),
                       self.splits.tolist(), self.sizes.tolist()):
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
        raise ProbebenchError(f"unknown dataset {name_or_path!r}; known datasets: {', '.join(known)} "
                              "(or give the path to a spec .toml)")
    return known[str(name_or_path)]


def load_spec(name_or_path: str | Path) -> DatasetSpec:
    """Parse and check a spec; unknown keys are errors so a typo never silently changes a dataset."""
    path = find_spec(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProbebenchError(f"{path}: invalid TOML: {exc}") from exc
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ProbebenchError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    tables = [(t, raw.get(t, {})) for t in TABLE_KEYS] + [
        (f"csv.sources[{i}]", src) for i, src in enumerate(raw.get("csv", {}).get("sources", []))]
    for table, content in tables:
        allowed = TABLE_KEYS.get(table, SOURCE_KEYS)
        if set(content) - allowed:
            raise ProbebenchError(f"{path}: unknown keys {sorted(set(content) - allowed)} in [{table}]; "
                                  f"allowed: {sorted(allowed)}")
    for key in ("kind", "classes"):
        if key not in raw:
            raise ProbebenchError(f"{path}: missing required key {key!r}")
    if raw["kind"] not in KINDS:
        raise ProbebenchError(f"{path}: kind {raw['kind']!r} is not one of: {', '.join(KINDS)}")
    name = raw.get("name", path.stem)
    return DatasetSpec(name=name, kind=raw["kind"], root=raw.get("root", name), classes=list(raw["classes"]),
                       source=path, description=raw.get("description", ""), group=raw.get("group", "group"),
                       folder=raw.get("folder", {}), csv=raw.get("csv", {}), split=raw.get("split", {}),
                       mri=raw.get("mri", {}), hdf5=raw.get("hdf5", {}))


def data_root(explicit: str | Path | None = None) -> Path:
    """``--data-root``, else ``$PROBEBENCH_DATA``, else ``./data``."""
    return Path(explicit or os.environ.get("PROBEBENCH_DATA") or "data")


# ---------------------------------------------------------------- resolving

def load_manifest(dataset: str | Path | DatasetSpec, data_root_dir: str | Path | None = None) -> Manifest:
    """Resolve a dataset (name, spec path or spec) under the data root into its manifest, splits made."""
    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset)
    root_base = data_root(data_root_dir)
    root = root_base / spec.root
    if not root.is_dir():
        where = "--data-root" if data_root_dir else ("$PROBEBENCH_DATA" if os.environ.get("PROBEBENCH_DATA")
                                                      else "the default ./data (set --data-root or $PROBEBENCH_DATA)")
        raise ProbebenchError(f"data for dataset {spec.name!r} not found: {root} does not exist "
                              f"(data root {root_base} from {where}; spec {spec.source})")
    junk: list[str] = []
    source: dict = {}
    if spec.kind == "hdf5":
        rows, source = _hdf5_rows(spec, root)
    else:
        rows = _folder_rows(spec, root, junk) if spec.kind == "folder" else _csv_rows(spec, root, junk)
    if not rows:
        raise ProbebenchError(f"dataset {spec.name!r}: no images found under {root}")
    rows.sort(key=lambda r: r[0])
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, k in Counter(ids).items() if k > 1)[:5]
        raise ProbebenchError(f"dataset {spec.name!r}: duplicate sample ids {dup}")
    manifest = Manifest(
        dataset=spec.name, classes=spec.classes, root=root,
        sample_ids=np.array(ids, dtype=str), paths=[r[1] for r in rows],
        labels=np.array([r[2] for r in rows], dtype=np.int64), groups=np.array([r[3] for r in rows], dtype=str),
        splits=np.array([r[4] or "" for r in rows], dtype=object), sizes=np.array([r[5] for r in rows]),
        junk=sorted(junk), group_kind=spec.group, source=source)
    _assign_splits(manifest, spec)
    manifest.splits = manifest.splits.astype(str)
    check_disjoint(manifest.groups, manifest.splits, where=f"dataset {spec.name!r}: ")
    for s in ("train", "val", "test"):
        if not (manifest.splits == s).any():
            raise ProbebenchError(f"dataset {spec.name!r}: the {s} split is empty")
    return manifest


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
                                 SPLIT_ALIASES.get(split, None) if split else None, p.stat().st_size))
                if len(rows) == n_before:
                    raise ProbebenchError(f"dataset {spec.name!r}: class folder {folder} holds no images")
    return rows


def _csv_sources(spec: DatasetSpec) -> list[dict]:
    return spec.csv.get("sources") or [spec.csv]


def _image_index(root: Path, dirs: list[str], junk: list[str]) -> dict[str, Path]:
    """File stem -> image path over the source's image folders."""
    index: dict[str, Path] = {}
    for d in dirs:
        base = root / d
        if not base.is_dir():
            raise ProbebenchError(f"image folder {base} is missing")
        for p in sorted(base.rglob("*")):
            if p.is_file():
                if is_junk(p.relative_to(root)):
                    junk.append(str(p))
                else:
                    index[p.stem] = p
    return index


def _csv_rows(spec: DatasetSpec, root: Path, junk: list[str]) -> list[tuple]:
    """Rows of one or more CSV tables: path or image id, label or one-hot columns, group, split."""
    rows = []
    for src in _csv_sources(spec):
        table = root / src.get("file", "manifest.csv")
        if not table.is_file():
            raise ProbebenchError(f"dataset {spec.name!r}: table {table} is missing")
        index = _image_index(root, src["image_dirs"], junk) if "image_dirs" in src else None
        listed = set()
        with table.open(newline="") as fh:
            reader = csv.DictReader(fh)
            for line, rec in enumerate(reader, start=2):
                where = f"{table}, line {line}"
                if index is not None:
                    key = rec[src.get("id_column", "image_id")]
                    if key not in index:
                        raise ProbebenchError(f"{where}: no image named {key!r} in {src['image_dirs']}")
                    path = index[key]
                    listed.add(key)
                else:
                    path = root / rec[src.get("path_column", "path")]
                    if not path.is_file():
                        raise ProbebenchError(f"{where}: image {path} does not exist")
                if "onehot_columns" in src:
                    hot = [c for c in src["onehot_columns"] if float(rec[c] or 0) == 1.0]
                    if len(hot) != 1:
                        raise ProbebenchError(f"{where}: expected exactly one 1 among the one-hot columns "
                                              f"{list(src['onehot_columns'])}, found {hot}")
                    raw = src["onehot_columns"][hot[0]]
                else:
                    raw = rec[src.get("label_column", "label")]
                label = _label_index(spec, raw, where)
                sid = path.relative_to(root).as_posix()
                group = rec[src["group_column"]] if src.get("group_column") else sid
                split = src.get("split") or (rec.get(src.get("split_column", "split")) or None)
                if split is not None and split.lower() not in SPLIT_ALIASES:
                    raise ProbebenchError(f"{where}: split {split!r} is not one of train, val, test")
                rows.append((sid, str(path), label, group, SPLIT_ALIASES[split.lower()] if split else None,
                             path.stat().st_size))
        if index is not None:  # images the table does not label: skipped and counted, never guessed
            junk.extend(f"{index[k]} (no row in {table.name})" for k in sorted(set(index) - listed))
    return rows


def _hdf5_rows(spec: DatasetSpec, root: Path) -> tuple[list[tuple], dict]:
    """One HDF5 file: an image array (N x H x W [x C]), labels, optional ids, groups and splits."""
    import h5py

    from probebench.images import hdf5_uri
    from probebench.weights import sha256_file

    h = spec.hdf5
    path = root / h.get("file", "data.h5")
    if not path.is_file():
        raise ProbebenchError(f"dataset {spec.name!r}: HDF5 file {path} is missing")
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
        source = {"hdf5_sha256": sha256_file(path), "images": names["images"], "shape": list(images.shape),
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
                     SPLIT_ALIASES[str(split).lower()] if split is not None else None, 0))
    return rows, source


def _assign_splits(m: Manifest, spec: DatasetSpec) -> None:
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
            held = stratified_group_holdout(m.labels[idx], m.groups[idx], fraction=spec.split.get("test_fraction"),
                                            count=spec.split.get("test_count"), seed=seed)
            m.splits[idx] = np.where(held, "test", "train")
    if not (m.splits == "val").any():
        idx = np.flatnonzero(m.splits == "train")
        held = stratified_group_holdout(m.labels[idx], m.groups[idx],
                                        fraction=float(spec.split.get("val_fraction", 0.2)), seed=seed + 1)
        m.splits[idx[held]] = "val"
