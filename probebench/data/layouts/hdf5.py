"""``kind = "hdf5"``: one HDF5 file holding an image array (N x H x W [x C]), labels, and optionally ids, groups and
splits. Its images are not files: the manifest names each as ``file.h5::dataset::index::float_rule`` and this
layout decodes it (floats by the spec's ``float_rule``, deeper integers by the dataset's pixel rules)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from probebench.data.filehash import content_digests
from probebench.data.layouts.base import Layout, Row, check_contained, is_str, label_index, relative, split_name
from probebench.data.pixels import PixelRules, check_finite, to_uint8
from probebench.errors import ProbebenchError

FLOAT_RULES = ("minmax", "unit")  # per-image min-max to 0-255, or values in [0, 1] times 255
HDF5_SEP = "::"


def hdf5_uri(path: Path, dataset: str, index: int, float_rule: str) -> str:
    """How a manifest names image ``index`` of an HDF5 array: ``file.h5::dataset::index::rule``."""
    return HDF5_SEP.join([str(path), dataset, str(index), float_rule])


_H5_FILES: dict = {}  # (process id, path) -> open h5py.File: each DataLoader worker opens its own


def read_image(uri: str, rules: PixelRules):
    """One image from an HDF5 array, read lazily through a per-process file handle."""
    import h5py
    from PIL import Image

    path, dataset, index, rule = uri.rsplit(HDF5_SEP, 3)
    key = (os.getpid(), path)
    if key not in _H5_FILES:
        _H5_FILES[key] = h5py.File(path, "r")
    arr = np.asarray(_H5_FILES[key][dataset][int(index)])
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating):  # the spec's recorded float rule
        check_finite(arr)
        if rule == "unit":
            arr = np.rint(np.clip(arr, 0, 1) * 255.0).astype(np.uint8)
        else:
            arr = to_uint8(arr, PixelRules(intensity="minmax"))
    elif arr.dtype != np.uint8:  # deeper integers: the dataset's intensity rule
        arr = to_uint8(arr, rules)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    img = Image.fromarray(arr)
    return img if img.mode == "L" else img.convert("RGB")


def _hdf5_rows(spec, root: Path) -> tuple[list[Row], dict]:
    """One HDF5 file: an image array (N x H x W [x C]), labels, optional ids, groups and splits."""
    import h5py

    h = spec.layout
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
            label = label_index(spec, raw, f"{path}, {names['labels']}[{i}]")
        elif 0 <= int(raw) < len(spec.classes):
            label = int(raw)
        else:
            raise ProbebenchError(f"{path}, {names['labels']}[{i}]: label {raw} is outside 0..{len(spec.classes) - 1}")
        sid = str(ids[i]) if ids is not None else f"{i:06d}"
        split = splits[i] if splits is not None else None
        if isinstance(split, int):
            split = ("train", "val", "test")[split]
        split = split_name(split, f"{path}, {names['splits']}[{i}]") if split is not None else None
        rows.append(Row(sid, hdf5_uri(path, names["images"], i, rule), label,
                        str(groups[i]) if groups is not None else sid, split))
    return rows, source


class Hdf5Layout(Layout):
    name = "hdf5"
    files = False  # one file, hashed once (``source["hdf5_sha256"]``)
    keys = {**{k: (is_str, "a name") for k in ("images", "labels", "groups", "splits", "ids")},
            "file": (relative, "a file inside the dataset folder"),
            "float_rule": (lambda v: v in FLOAT_RULES, "one of " + ", ".join(FLOAT_RULES))}

    def rows(self, spec, root, junk, notes):
        return _hdf5_rows(spec, root)

    def owns(self, path):  # file.h5::dataset::index::rule
        parts = path.rsplit(HDF5_SEP, 3)
        return len(parts) == 4 and parts[2].isdigit() and parts[3] in FLOAT_RULES

    def decode(self, path, rules):
        return read_image(path, rules)


HDF5 = Hdf5Layout()
