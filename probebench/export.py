"""``export``: cached features out, as HDF5 (the layout pathology tools read), NumPy or PyTorch files.

The zarr cache stays the source of truth; an export is a copy with the same arrays and the
attributes that say what produced them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probebench.cache import read_features
from probebench.errors import ProbebenchError
from probebench.fit import complete_cache

FORMATS = {".h5": "h5", ".hdf5": "h5", ".npz": "npz", ".pt": "pt"}


def export_features(model: str, dataset: str, out: str | Path, *, fmt: str | None = None, **cache_options) -> Path:
    """Write the cache of ``model`` x ``dataset`` (same options as ``fit``) to ``out``; returns ``out``."""
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix)
    if fmt not in ("h5", "npz", "pt"):
        raise ProbebenchError(f"export format {fmt or out.suffix!r}: use --format h5, npz or pt (or a .h5/.npz/.pt name)")
    feats = read_features(complete_cache(model, dataset, **cache_options))
    meta = {k: feats.attrs[k] for k in ("dataset", "model", "tap", "weights", "preprocessing", "precision",
                                        "store_dtype", "manifest_hash", "key", "classes", "versions")}
    meta.update({k: feats.attrs[k] for k in ("pixels", "group_scope", "shipped_overlap") if k in feats.attrs})
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "h5":
        import h5py

        with h5py.File(out, "w") as fh:
            fh.create_dataset("features", data=feats.features, chunks=True)
            fh.create_dataset("labels", data=feats.labels)
            for name in ("sample_ids", "groups", "split"):
                fh.create_dataset(name, data=np.array(getattr(feats, name), dtype=object), dtype=h5py.string_dtype())
            for key, value in meta.items():
                fh.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    elif fmt == "npz":
        np.savez(out, features=feats.features, labels=feats.labels, sample_ids=feats.sample_ids, groups=feats.groups,
                 split=feats.split, meta=np.array(json.dumps(meta)))
    else:
        import torch

        torch.save({"features": torch.from_numpy(feats.features), "labels": torch.from_numpy(feats.labels),
                    "sample_ids": feats.sample_ids.tolist(), "groups": feats.groups.tolist(),
                    "split": feats.split.tolist(), "meta": meta}, out)
    return out
