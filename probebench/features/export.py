"""``export``: cached features out, as HDF5 (the layout pathology tools read), NumPy or PyTorch files.

The zarr cache stays the source of truth; an export is a copy with the same arrays and the
attributes that say what produced them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from probebench.atomic import atomic_path
from probebench.features.cache import read_features
from probebench.errors import ProbebenchError
from probebench.features.spec import FeatureSpec, locate_store

FORMATS = {".h5": "h5", ".hdf5": "h5", ".npz": "npz", ".pt": "pt"}


def export_features(features: FeatureSpec | str, dataset: str, out: str | Path, *, fmt: str | None = None,
                    data_root=None, cache_dir: str | Path = "cache", **options) -> Path:
    """Write the cache of a feature spec x ``dataset`` (found as ``fit`` finds it) to ``out``; returns ``out``."""
    out = Path(out)
    implied = FORMATS.get(out.suffix.lower())
    fmt = fmt or implied
    if fmt not in ("h5", "npz", "pt"):
        raise ProbebenchError(f"export format {fmt or out.suffix!r}: use --format h5, npz or pt (or a .h5/.npz/.pt name)")
    if implied is not None and implied != fmt:
        raise ProbebenchError(f"--out {out} names a .{implied} file but --format is {fmt}: the file would not be what "
                              f"its name says; name it {out.with_suffix('.' + fmt)} or drop --format")
    feats = read_features(locate_store(FeatureSpec.of(features, **options), dataset, data_root=data_root,
                                       cache_dir=cache_dir))
    meta = {k: feats.attrs[k] for k in ("dataset", "model", "tap", "weights", "preprocessing", "precision",
                                        "store_dtype", "manifest_hash", "key", "classes", "versions")}
    meta.update({k: feats.attrs[k] for k in ("pixels", "group_scope", "shipped_overlap") if k in feats.attrs})
    with atomic_path(out) as tmp:  # a failed write (full disk) leaves any previous file intact
        if fmt == "h5":
            import h5py

            buffer = io.BytesIO()  # built in memory: h5py reports a failed disk write only as noise on close
            with h5py.File(buffer, "w") as fh:
                fh.create_dataset("features", data=feats.features, chunks=True)
                fh.create_dataset("labels", data=feats.labels)
                for name in ("sample_ids", "groups", "split"):
                    fh.create_dataset(name, data=np.array(getattr(feats, name), dtype=object),
                                      dtype=h5py.string_dtype())
                for key, value in meta.items():
                    fh.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            tmp.write_bytes(buffer.getbuffer())
        elif fmt == "npz":
            with open(tmp, "wb") as fh:  # a file object: numpy appends no .npz to the name
                np.savez(fh, features=feats.features, labels=feats.labels, sample_ids=feats.sample_ids,
                         groups=feats.groups, split=feats.split, meta=np.array(json.dumps(meta)))
        else:
            import torch

            torch.save({"features": torch.from_numpy(feats.features), "labels": torch.from_numpy(feats.labels),
                        "sample_ids": feats.sample_ids.tolist(), "groups": feats.groups.tolist(),
                        "split": feats.split.tolist(), "meta": meta}, tmp)
    return out
