"""The feature cache: one zarr v3 store per dataset x model x key, keyed by everything that changes the numbers.

Layout: ``<cache-dir>/<dataset>/<model>/<key>.zarr`` with arrays ``features`` (N x D, chunked along
samples), ``labels``, ``sample_ids``, ``groups``, ``split`` and attributes recording what produced
them and which chunks are complete. The key hashes the model, weights checksum, feature tap,
preprocessing, precision, storage dtype and manifest hash, so a stale store is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from probebench import __version__
from probebench.errors import ProbebenchError

FEATURE_VERSION = 1  # bump when the code that defines a feature changes
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class FeatureRequest:
    """Everything that determines the cached numbers; ``key`` is its hash."""

    dataset: str
    model: str
    tap: str
    weights: dict  # {"sha256": ..., "label": ..., "source": ...}
    preprocessing: dict
    precision: str
    store_dtype: str
    manifest_hash: str
    channels_last: bool = False

    def key_material(self) -> dict:
        material = {"feature_version": FEATURE_VERSION, "model": self.model, "tap": self.tap,
                    "weights_sha256": self.weights["sha256"], "weights_seed": self.weights.get("seed"),
                    "preprocessing": self.preprocessing, "precision": self.precision,
                    "channels_last": self.channels_last, "store_dtype": self.store_dtype,
                    "manifest_hash": self.manifest_hash}
        if self.weights.get("head_sha256"):  # a tap's pretrained layer (imagenet_logits): its checksum too
            material["head_sha256"] = self.weights["head_sha256"]
        return material

    @property
    def key(self) -> str:
        blob = json.dumps(self.key_material(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def path(self, cache_dir: str | Path) -> Path | str:
        """``<cache-dir>/<dataset>/<model>/<key>.zarr``; a string when the cache root is a URL (fsspec)."""
        from probebench.validate import path_name

        parts = [path_name(self.dataset), path_name(self.model), f"{self.key}.zarr"]
        if is_url(cache_dir):
            return "/".join([str(cache_dir).rstrip("/"), *parts])
        return Path(cache_dir).joinpath(*parts)


def is_url(location) -> bool:
    return "://" in str(location)


def open_group(location: Path | str, mode: str, **kwargs) -> zarr.Group:
    """``zarr.open_group`` for a folder or an fsspec URL (local ``file://`` stores create their folders)."""
    if str(location).startswith("file://"):
        kwargs["storage_options"] = {"auto_mkdir": True}
    return zarr.open_group(str(location), mode=mode, **kwargs)


def store_exists(location: Path | str) -> bool:
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(location))
        return fs.exists(path)
    return Path(location).exists()


def remove_store(location: Path | str) -> None:
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(location))
        if fs.exists(path):
            fs.rm(path, recursive=True)
    elif Path(location).exists():
        import shutil

        shutil.rmtree(location)


def versions() -> dict:
    """Versions of what computes the numbers, from package metadata (nothing is imported to read them)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"probebench": __version__, "torch": installed("torch"), "torchvision": installed("torchvision"),
            "timm": installed("timm"), "zarr": installed("zarr"), "python": platform.python_version()}


def create_store(path: Path | str, request: FeatureRequest, manifest, feature_dim: int, chunk_size: int,
                 extra_attrs: dict) -> tuple[zarr.Group, bool]:
    """A new, empty store for ``manifest``'s samples; features start as NaN until their chunk is written.
    Returns the store and whether this process created it.

    The store is built whole in a ``<key>.zarr.<pid>.probebench-partial`` folder beside its final path and
    renamed into place: a kill or a full disk leaves no half-made store, and of several processes started
    together on one new store exactly one rename wins; the others drop their copy and fill the winner's.
    Progress lives in arrays, one zarr chunk per feature chunk (``chunk_done``, ``skip_reason``), so
    several processes can fill distinct chunks of one store without racing on its metadata.
    """
    if is_url(path):  # object stores have no atomic rename: created in place
        root = open_group(path, mode="w", zarr_format=3)
        _lay_out(root, request, manifest, feature_dim, chunk_size, extra_attrs)
        return root, True
    import errno
    import shutil

    from probebench.atomic import partial_name

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _lay_out(open_group(tmp, mode="w", zarr_format=3), request, manifest, feature_dim, chunk_size, extra_attrs)
        os.rename(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        root = open_store(path, request, mode="a")  # another process created it first: fill that one
        if root is None:
            raise
        return root, False
    finally:  # the rename took it, or it is not wanted: never left beside the store
        shutil.rmtree(tmp, ignore_errors=True)
    return open_group(path, mode="a"), True


def _lay_out(root: zarr.Group, request: FeatureRequest, manifest, feature_dim: int, chunk_size: int,
             extra_attrs: dict) -> None:
    """The arrays and attributes of an empty store (``create_store``)."""
    n = len(manifest)
    sample = ("sample",)  # dimension names: xarray.open_zarr reads the store as one dataset along "sample"
    root.create_array("features", shape=(n, feature_dim), chunks=(chunk_size, feature_dim),
                      dtype=request.store_dtype, fill_value=float("nan"), dimension_names=("sample", "feature"))
    n_chunks = -(-n // chunk_size)
    root.create_array("chunk_done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0,
                      dimension_names=("chunk",))
    root.create_array("skip_reason", shape=(n,), chunks=(chunk_size,), dtype=str, dimension_names=sample)
    root.create_array("labels", data=manifest.labels.astype(np.int64), dimension_names=sample)
    root.create_array("split", data=np.array([SPLIT_CODES[s] for s in manifest.splits], dtype=np.int8),
                      dimension_names=sample)
    for name, values in (("sample_ids", manifest.sample_ids), ("groups", manifest.groups),
                         ("digests", manifest.digests)):
        arr = root.create_array(name, shape=(n,), dtype=str, dimension_names=sample)
        arr[:] = np.asarray(values, dtype=str)
    root.attrs.update({
        "key": request.key, "key_material": request.key_material(), "dataset": request.dataset,
        "model": request.model, "tap": request.tap, "weights": request.weights,
        "preprocessing": request.preprocessing, "precision": request.precision,
        "store_dtype": request.store_dtype, "manifest_hash": request.manifest_hash,
        "classes": list(manifest.classes), "split_codes": SPLIT_CODES, "n_samples": n,
        "feature_dim": feature_dim, "chunk_size": chunk_size, "n_chunks": n_chunks,
        "complete_chunks": [], "complete": False, "skipped": [], "junk_files": len(manifest.junk),
        "group_kind": manifest.group_kind, "group_scope": manifest.group_scope,
        "shipped_overlap": manifest.shipped_overlap, "pixels": manifest.pixels.as_dict(),
        "data_notes": list(manifest.notes),
        "versions": versions(), **extra_attrs,
    })


def unfinished(path: Path | str) -> bool:
    """A store whose creation never finished (probebench before atomic creation wrote it in place): its
    metadata exists but its attributes were never written, so no feature was computed into it."""
    if is_url(path) or not (Path(path) / "zarr.json").is_file():
        return False
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "key_material" not in (meta.get("attributes") or {})


def open_store(path: Path | str, request: FeatureRequest, mode: str = "r") -> zarr.Group | None:
    """An existing store for ``request``, or None; a store whose recorded key differs is refused."""
    if not store_exists(path):
        return None
    if not is_url(path) and not (Path(path) / "zarr.json").is_file():  # zarr would create an empty group here
        raise ProbebenchError(f"feature cache {path} is damaged: its zarr.json (the metadata that proves what the "
                              "features are) is missing; rerun extract with --force to rebuild it")
    try:
        root = open_group(path, mode=mode)
    except Exception as exc:
        raise ProbebenchError(f"feature cache {path} is unreadable ({exc}); rerun extract with --force") from exc
    if root.attrs.get("key_material") != json.loads(json.dumps(request.key_material())):
        raise ProbebenchError(f"feature cache {path} was made for different inputs than its name says; "
                              "rerun extract with --force")
    missing = missing_arrays(root)
    if missing:
        raise ProbebenchError(f"feature cache {path} is damaged: array(s) {', '.join(missing)} cannot be opened; "
                              "rerun extract with --force to rebuild it")
    return root


STORE_ARRAYS = ("features", "chunk_done", "skip_reason", "labels", "split", "sample_ids", "groups")


def missing_arrays(root: zarr.Group) -> list[str]:
    """The arrays every store holds that this one cannot open (a deleted or corrupt ``<array>/zarr.json``)."""
    missing = []
    for name in STORE_ARRAYS:
        try:
            root[name]
        except Exception:
            missing.append(name)
    return missing


@dataclass
class CachedFeatures:
    """The arrays of a complete store, skipped samples removed, plus its attributes."""

    features: np.ndarray | None  # None: read with load=False (StoreRows reads them on demand)
    labels: np.ndarray
    split: np.ndarray  # "train" / "val" / "test"
    sample_ids: np.ndarray
    groups: np.ndarray
    attrs: dict
    path: Path | str
    rows: np.ndarray | None = None  # each row's row in the store (skipped images removed, by split when asked)


def _strings(arr) -> np.ndarray:
    """A zarr string array as a plain numpy unicode array."""
    return np.array(arr[:].tolist(), dtype=str)


def damaged_chunks(root: zarr.Group) -> list[int]:
    """Chunks of a store that cannot be served: unreadable, or holding a non-finite feature in a row that was not
    skipped as a bad image (a deleted chunk file reads back as the NaN fill value)."""
    chunk, n = int(root.attrs["chunk_size"]), int(root.attrs["n_samples"])
    skipped = _strings(root["skip_reason"]) != ""
    bad = []
    for c in range(int(root.attrs["n_chunks"])):
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        try:
            block = np.asarray(root["features"][lo:hi])
        except Exception:  # a corrupt chunk file: zarr cannot decode it
            bad.append(c)
            continue
        if not np.isfinite(block[~skipped[lo:hi]]).all():
            bad.append(c)
    return bad


REPAIR = "rerun the same `probebench extract`, which recomputes the damaged chunks"


def _chunk(array, start: int, stop: int, path) -> np.ndarray:
    """Rows ``start:stop`` of a store's features as float32, or an error naming the store and how to repair it."""
    try:
        return np.asarray(array[start:stop], dtype=np.float32)
    except Exception as exc:
        raise ProbebenchError(f"feature cache {path} has an unreadable chunk ({type(exc).__name__}: {exc}); "
                              f"{REPAIR}") from exc


def read_features(path: Path | str, by_split: bool = False, load: bool = True) -> CachedFeatures:
    """Load a complete store into memory (float32), dropping the rows of skipped bad images.

    The features are read chunk by chunk into their final array: no unfiltered copy beside the filtered one, no
    float32 copy of float32 data. ``by_split``: rows grouped train, val, test (each in store order), so that a
    split is a view of the array, not a copy (``split_rows``).

    A store with an unreadable chunk or a non-finite feature is refused, naming the store and the rows:
    NaN must never reach a head or a table. ``extract`` repairs such a store.
    """
    root = open_group(path, mode="r")
    attrs = dict(root.attrs)
    keep = _strings(root["skip_reason"]) == ""
    split = _split_names(root, attrs)
    rows = np.flatnonzero(keep)
    if by_split:  # the split codes order them train, val, test (SPLIT_CODES)
        rows = rows[np.argsort(np.asarray(root["split"][:])[rows], kind="stable")]
    sample_ids = _strings(root["sample_ids"])
    index = dict(labels=np.asarray(root["labels"][:])[rows], split=split[rows], sample_ids=sample_ids[rows],
                 groups=_strings(root["groups"])[rows], attrs=attrs, path=path, rows=rows)
    if not load:
        return CachedFeatures(features=None, **index)
    array = root["features"]
    features = np.empty((len(rows), array.shape[1]), dtype=np.float32)
    where = np.empty(array.shape[0], dtype=np.int64)  # store row -> position in ``features`` (-1: dropped)
    where.fill(-1)
    where[rows] = np.arange(len(rows))
    step = array.chunks[0]
    for start in range(0, array.shape[0], step):
        stop = min(start + step, array.shape[0])
        chunk = _chunk(array, start, stop, path)
        bad = np.flatnonzero(keep[start:stop] & ~np.isfinite(chunk).all(axis=1)) + start
        if len(bad):
            shown = ", ".join(f"{i} ({sample_ids[i]})" for i in bad[:3]) + (" …" if len(bad) > 3 else "")
            raise ProbebenchError(f"feature cache {path}: {len(bad)} row(s) hold non-finite features (a missing or "
                                  f"damaged chunk, or NaN weights): rows {shown}; {REPAIR}")
        dest = where[start:stop]
        mine = dest >= 0
        d = dest[mine]
        if len(d) and mine.all() and bool(np.all(np.diff(d) == 1)):
            features[d[0]:d[-1] + 1] = chunk  # a whole chunk in order: one copy, no gather
        elif len(d):
            features[d] = chunk[mine]
    return CachedFeatures(features=features, **index)


class StoreRows:
    """Some rows of a store's features, read on demand: the training features of a fit above its memory budget.

    ``batches`` takes an epoch's batches of positions and yields each batch's rows, gathering a window of
    consecutive batches (at most ``budget_rows`` rows) with one read of each chunk the window touches: the very rows,
    in the very order, that the in-memory array gives, so a streamed fit trains the same weights."""

    def __init__(self, path: Path | str, rows: np.ndarray, budget_rows: int):
        self.path, self.rows, self.budget_rows = path, np.asarray(rows, dtype=np.int64), max(1, int(budget_rows))
        self.array = open_group(path, mode="r")["features"]
        self.shape, self.dtype, self.ndim = (len(self.rows), int(self.array.shape[1])), np.dtype(np.float32), 2

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows ``positions`` (of these rows) as float32, in that order, each chunk read once."""
        store_rows = self.rows[positions]
        order = np.argsort(store_rows, kind="stable")
        wanted = store_rows[order]
        out = np.empty((len(positions), self.shape[1]), dtype=np.float32)
        step = self.array.chunks[0]
        chunk_of = wanted // step
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for part in np.split(np.arange(len(wanted)), bounds):
            c = int(chunk_of[part[0]])
            rows = _chunk(self.array, c * step, (c + 1) * step, self.path)[wanted[part] - c * step]
            if not np.isfinite(rows).all():
                raise ProbebenchError(f"feature cache {self.path}: non-finite features in chunk {c}; {REPAIR}")
            out[order[part]] = rows
        return out

    def batches(self, batches: list[np.ndarray]):
        """(rows, positions) of each batch, in order, read a window of batches at a time."""
        window: list[np.ndarray] = []
        size = 0
        for idx in [*batches, None]:
            if window and (idx is None or size + len(idx) > self.budget_rows):
                data, start = self.gather(np.concatenate(window)), 0
                for w in window:
                    yield data[start:start + len(w)], w
                    start += len(w)
                window, size = [], 0
            if idx is not None:
                window.append(idx)
                size += len(idx)


def split_rows(mask: np.ndarray) -> np.ndarray | slice:
    """Boolean row selection as a slice when its rows are one contiguous run (a view, no copy), else the mask."""
    idx = np.flatnonzero(mask)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return mask


def read_index(path: Path | str) -> tuple[np.ndarray, np.ndarray, dict]:
    """A store's sample ids and split names (skipped images removed, as ``read_features`` serves them) and its
    attributes, without reading the features."""
    root = open_group(path, mode="r")
    attrs = dict(root.attrs)
    keep = _strings(root["skip_reason"]) == ""
    return _strings(root["sample_ids"])[keep], _split_names(root, attrs)[keep], attrs


def _split_names(root: zarr.Group, attrs: dict) -> np.ndarray:
    """Every row's split name ("train", "val", "test") from the store's codes."""
    names = {v: k for k, v in attrs["split_codes"].items()}
    return np.array([names[int(c)] for c in np.asarray(root["split"][:])])


def _comparable(key_material: dict) -> dict:
    """Key material without the manifest hash: equal for two versions of one dataset under the same options."""
    return {k: v for k, v in json.loads(json.dumps(key_material)).items() if k != "manifest_hash"}


def donor_stores(path: Path | str, request: FeatureRequest, pixels: dict) -> list[tuple[Path, zarr.Group]]:
    """Complete stores beside ``path`` made with the same model, weights and options for an earlier version of
    the same dataset (newest first): their features can be copied for every image whose bytes are unchanged.
    A neighbour that cannot be opened is no donor (nothing is copied from it), and that is said."""
    if is_url(path):
        return []
    mine, found = _comparable(request.key_material()), []
    others = [p for p in Path(path).parent.glob("*.zarr") if p != Path(path) and (p / "zarr.json").is_file()]
    for other in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            group = open_group(other, mode="r")
            attrs = group.attrs
            if (attrs.get("complete") and _comparable(attrs.get("key_material", {})) == mine
                    and attrs.get("pixels") == pixels and not missing_arrays(group) and "digests" in group):
                found.append((other, group))
        except Exception as exc:  # correctness is kept (its chunks are computed), but the user hears of it
            sys.stderr.write(f"note: {other} cannot be read ({type(exc).__name__}: {exc}); nothing is copied from "
                             "it (`probebench verify` checks the cache)\n")
    return found


def reuse_chunks(root: zarr.Group, donor: zarr.Group, digests: np.ndarray) -> list[int]:
    """Copy into ``root`` every chunk whose samples the donor holds with the same bytes, in the same positions
    and batching (so the copy equals a fresh extraction bit for bit); returns the chunks copied."""
    chunk, n = int(root.attrs["chunk_size"]), int(root.attrs["n_samples"])
    d_chunk, d_n = int(donor.attrs["chunk_size"]), int(donor.attrs["n_samples"])
    if d_chunk != chunk or donor.attrs.get("batch_size") != root.attrs.get("batch_size"):
        return []
    where = {key: row for row, key in enumerate(zip(_strings(donor["sample_ids"]).tolist(),
                                                    _strings(donor["digests"]).tolist()))}
    rows = np.array([where.get(key, -1) for key in zip(_strings(root["sample_ids"]).tolist(), digests.tolist())])
    d_skipped = _strings(donor["skip_reason"])
    copied = []
    for c in range(int(root.attrs["n_chunks"])):
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        r = rows[lo:hi]
        start = int(r[0])
        if (start < 0 or start % chunk or not np.array_equal(r, np.arange(start, start + hi - lo))
                or min(d_n, start + chunk) - start != hi - lo):
            continue
        try:
            block = np.asarray(donor["features"][start:start + hi - lo])
        except Exception as exc:  # a damaged donor chunk: computed afresh instead, and said
            sys.stderr.write(f"note: chunk {c} of the earlier store cannot be read ({type(exc).__name__}); it is "
                             "computed afresh (`probebench verify` checks the cache)\n")
            continue
        reasons = d_skipped[start:start + hi - lo]
        if not np.isfinite(block[reasons == ""]).all():
            continue
        root["features"][lo:hi] = block
        root["skip_reason"][lo:hi] = reasons
        root["chunk_done"][c] = 1
        copied.append(c)
    return copied
