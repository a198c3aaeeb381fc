"""``extract``: one forward pass per image through a frozen backbone into the zarr feature cache.

Work is done chunk by chunk (batches never straddle a chunk), and each finished chunk is marked
complete in the store, so an interrupted run resumes with exactly the missing chunks and, on CPU,
ends with the same features as an uninterrupted one.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from probebench.budget import default_workers
from probebench.features import cache as fcache
from probebench.errors import ProbebenchError
from probebench.features.spec import FeatureSpec, resolve_job
from probebench.features.images import ImageDataset, bad_image_error, make_transform
from probebench.features.precision import autocast_dtype
from probebench.progress import make_progress
from probebench.validate import check_options, printable



def auto_device(device: str = "auto") -> torch.device:
    """cuda > mps > cpu unless named."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def shard_chunks(done: np.ndarray, rank: int, world: int) -> list[int]:
    """The missing chunks this rank computes: every ``world``-th one, so the ranks' shares are disjoint and
    together cover every missing chunk (a resumed run shares out only what is still missing)."""
    return [int(c) for c in np.flatnonzero(~np.asarray(done, dtype=bool))][rank::world]


def _chunk_batches(pending: list[int], chunk: int, n: int, batch: int) -> list[list[int]]:
    """Batches of sample indices that never cross a chunk boundary (so resumed work is identical)."""
    out = []
    for c in pending:
        idx = list(range(c * chunk, min(n, (c + 1) * chunk)))
        out.extend(idx[i:i + batch] for i in range(0, len(idx), batch))
    return out


class ChunkWriter:
    """Writes finished chunks on a background thread, so zarr I/O stays off the forward-pass path."""

    def __init__(self, root, store_dtype: str):
        self.root, self.store_dtype = root, store_dtype
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="probebench-chunk-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    c, lo, block, reasons = item
                    self.root["features"][lo:lo + len(block)] = block.astype(self.store_dtype)
                    self.root["skip_reason"][lo:lo + len(block)] = np.array(reasons, dtype=str)
                    self.root["chunk_done"][c] = 1  # last: a chunk counts only once its data is written
            except BaseException as exc:  # reported by the main thread
                self.error = exc
            finally:
                self.queue.task_done()

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def flush(self) -> None:
        self.queue.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _no_hook(chunk: int) -> None:
    """Nothing: ``extract`` calls ``chunk_written`` after each chunk only when a test has replaced it."""


chunk_written = _no_hook  # tests replace it (monkeypatch) to count chunks or to interrupt after one


def default_batch_size(device: torch.device) -> int:
    """8 on a CPU (bigger batches were slower there), 64 on an accelerator."""
    return 8 if device.type == "cpu" else 64


def _open(path, job, force: bool, rank: int):
    """The store at ``path`` as ``extract`` may continue it (None when it must be created), and whether it is whole
    already; a complete store whose chunk files were damaged since has those chunks marked undone (rank 0 writes;
    every rank reads the same answer)."""
    from probebench import distributed

    if rank == 0:
        if force:
            fcache.remove_store(path)
        elif fcache.unfinished(path):  # its creation was interrupted: nothing in it was computed
            sys.stderr.write(f"note: {path} was left half-created by an interrupted extract; creating it again\n")
            fcache.remove_store(path)
        root = fcache.open_store(path, job.request, mode="a")
    distributed.barrier()
    if rank != 0:
        root = fcache.open_store(path, job.request, mode="a")
    if root is not None and root.attrs.get("complete"):
        damaged = fcache.damaged_chunks(root)
        if not damaged:
            return root, True
        if rank == 0:  # damaged after the fact (deleted or corrupt chunk files): recompute exactly those
            sys.stderr.write(f"note: {path}: {len(damaged)} damaged chunk(s) {damaged[:10]}; recomputing them\n")
            for c in damaged:
                root["chunk_done"][c] = 0
            root.attrs.update({"complete": False, "repaired_chunks": damaged})
    return root, False


def _create(path, job, feature_dim: int, chunk_size: int, info: dict):
    """A new store for the job; when an earlier version of the dataset was extracted with the same options, the
    chunks whose images did not change are copied from it."""
    root, created = fcache.create_store(path, job.request, job.manifest, feature_dim, chunk_size, info)
    donors = fcache.donor_stores(path, job.request, job.manifest.pixels.as_dict()) if created else []
    for where, donor in donors:
        copied = fcache.reuse_chunks(root, donor, job.manifest.digests)
        if copied:  # the dataset changed: only the chunks holding new or changed images are computed
            root.attrs["reused"] = {"from": str(where), "chunks": copied}
            sys.stderr.write(f"note: {len(copied)} of {root.attrs['n_chunks']} chunk(s) copied from the cache "
                             "of an earlier version of the dataset (same images, same options)\n")
            break
    return root


def _features(net, images: torch.Tensor, ok: torch.Tensor, idx: list[int], job, dev, autocast) -> np.ndarray:
    """One batch's features; NaN rows for images that failed to decode; non-finite features are an error."""
    images = images.to(dev, non_blocking=True)
    if job.request.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
        out = net(images).float().cpu().numpy()
    broken = ok.numpy() & ~np.isfinite(out).all(axis=1)
    if broken.any():  # never store them: fit would refuse the store, extract would redo it forever
        first = job.manifest.paths[idx[int(np.flatnonzero(broken)[0])]]
        precision = job.request.precision
        raise ProbebenchError(
            f"{job.request.model} gave non-finite features for {int(broken.sum())} image(s) of this batch, e.g. "
            f"{first}" + (f", in --precision {precision} (values overflow it; use bf16 or fp32)"
                          if precision == "fp16" else "; the weights or the model are broken"))
    out[~ok.numpy()] = np.nan
    return out


def _fill(root, job, net, loader, batches, dev, skip_bad: bool, progress: bool, done_chunks: int,
          warned: dict) -> None:
    """Compute the pending chunks and hand each, once whole, to the chunk writer (which writes it in a thread);
    the decoders' warnings go to ``warned`` (kind -> [count, first file])."""
    chunk_size, n = root.attrs["chunk_size"], len(job.manifest)
    buffers: dict[int, np.ndarray] = {}
    reasons: dict[int, list[str]] = {}
    filled: dict[int, int] = {}
    autocast = autocast_dtype(job.request.precision)
    writer = ChunkWriter(root, job.request.store_dtype)
    try:
        with make_progress(progress) as bar, torch.inference_mode():
            task = bar.add_task(f"extract {job.request.model} × {job.manifest.dataset}",
                                total=sum(len(b) for b in batches),
                                info=f"{done_chunks}/{root.attrs['n_chunks']} chunks cached")
            for images, idx, ok, errors in loader:
                idx = idx.tolist()
                c = idx[0] // chunk_size
                if c not in buffers:
                    rows = min(n, (c + 1) * chunk_size) - c * chunk_size
                    buffers[c], reasons[c], filled[c] = np.empty((rows, net.feature_dim), np.float32), [""] * rows, 0
                for i, good, err in zip(idx, ok.tolist(), errors):
                    if good and err:  # read, with warnings: each kind counted, said once at the end
                        for kind in err.split("; "):
                            warned.setdefault(kind, [0, job.manifest.paths[i]])[0] += 1
                    elif not good:
                        if not skip_bad:
                            raise bad_image_error(job.manifest.paths[i], err)
                        reasons[c][i - c * chunk_size] = err
                out = _features(net, images, ok, idx, job, dev, autocast)
                buffers[c][idx[0] - c * chunk_size: idx[-1] + 1 - c * chunk_size] = out
                filled[c] += len(idx)
                if filled[c] == len(buffers[c]):
                    writer.put((c, c * chunk_size, buffers.pop(c), reasons.pop(c)))
                    if chunk_written is not _no_hook:  # a test seam: the chunk is on disk before it runs
                        writer.flush()
                        chunk_written(c)
                bar.update(task, advance=len(idx))
    finally:
        writer.close()


def _finish(root, job, seconds: float, world: int, warned: dict) -> None:
    """The final metadata, once every rank's chunks are written: complete or not, the images skipped, and the
    kinds of decoder warnings (each said once, with how many files; rank 0's files under torchrun)."""
    done = np.asarray(root["chunk_done"][:], dtype=bool)
    skip = fcache._strings(root["skip_reason"])
    skipped = [{"index": int(i), "sample_id": str(job.manifest.sample_ids[i]),
                "path": printable(job.manifest.paths[i]),
                "error": str(skip[i])} for i in np.flatnonzero(skip != "")]
    root.attrs.update({"complete": bool(done.all()), "complete_chunks": np.flatnonzero(done).tolist(),
                       "skipped": skipped, "extract_seconds": round(seconds, 3), "world_size": world,
                       "decode_warnings": {k: {"files": n, "first": printable(p)} for k, (n, p) in warned.items()}})
    for kind, (n, first) in warned.items():
        sys.stderr.write(f"note: the decoder warned for {n} image(s), read nonetheless: {kind} (first: {first})\n")
    if skipped:  # said, never only recorded: a quarter of a hospital export may be files the install cannot read
        n = len(job.manifest)
        kinds = sorted({s["error"].split(" (")[0].split(";")[0][:100] for s in skipped})
        sys.stderr.write(f"note: {len(skipped)} of {n} image(s) ({100 * len(skipped) / n:.0f}%) could not be read "
                         f"and were skipped (--skip-bad); fit and report leave them out. Reasons: "
                         + "; ".join(kinds[:5]) + (" …" if len(kinds) > 5 else "")
                         + f". First: {skipped[0]['path']}\n")


def extract(features: FeatureSpec | str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache",
            device: str = "auto", batch_size: int | None = None, chunk_size: int = 256, workers: int | None = None,
            force: bool = False, skip_bad: bool = False, progress: bool = True, rehash: bool = False,
            **options) -> Path | str:
    """Fill the cache for a feature spec (or a model name plus the spec's options) x ``dataset``; returns the
    store location. Resumes unless ``force``; ``rehash`` reads every image again instead of trusting the memo.

    Under torchrun each rank fills a disjoint share of the missing chunks of the same store; rank 0
    creates the store and writes the final metadata after a barrier.
    """
    from probebench import distributed

    check_options(batch_size=batch_size, workers=workers, chunk_size=chunk_size, skip_bad=skip_bad)
    spec = FeatureSpec.of(features, **options)
    if rehash:  # the memo of file digests is dropped: every image is read and hashed again
        from probebench.data.filehash import forget

        forget()
    job = resolve_job(spec, dataset, data_root=data_root)
    path = job.cache_path(cache_dir)
    rank, world = distributed.setup()
    dev = auto_device(distributed.rank_device(device))
    batch_size = batch_size or default_batch_size(dev)
    chunk_size = max(batch_size, (chunk_size // batch_size) * batch_size)
    root, whole = _open(path, job, force, rank)
    if whole:  # complete and undamaged: nothing to do
        distributed.cleanup()
        return path
    net = job.create_model().to(dev)
    if job.request.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if root is None and rank == 0:
        dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
        root = _create(path, job, net.feature_dim, chunk_size, {"device": dev_name, "batch_size": batch_size,
                                                                "world_size": world, "val_unit": spec.val_unit})
    distributed.barrier()
    if root is None:
        root = fcache.open_store(path, job.request, mode="a")
    done = np.asarray(root["chunk_done"][:], dtype=bool)
    batches = _chunk_batches(shard_chunks(done, rank, world), root.attrs["chunk_size"], len(job.manifest), batch_size)
    n_workers = workers if workers is not None else default_workers()
    pre = job.config.preprocessing
    loader = DataLoader(ImageDataset(job.manifest.paths, make_transform(pre), pre.crop,
                                     draft=pre.resize if pre.draft else None, rules=job.manifest.pixels),
                        batch_sampler=batches, num_workers=n_workers, pin_memory=dev.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if n_workers else None)
    start = time.perf_counter()
    warned: dict = {}
    _fill(root, job, net, loader, batches, dev, skip_bad, progress and rank == 0, int(done.sum()), warned)
    seconds = time.perf_counter() - start
    distributed.barrier()
    if rank == 0:
        _finish(root, job, seconds, world, warned)
    distributed.barrier()
    distributed.cleanup()
    return path
