"""``extract``: one forward pass per image through a frozen backbone into the zarr feature cache.

Work is done chunk by chunk (batches never straddle a chunk), and each finished chunk is marked
complete in the store, so an interrupted run resumes with exactly the missing chunks and, on CPU,
ends with the same features as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from probebench import cache as fcache
from probebench.datasets import Manifest, load_manifest
from probebench.errors import ProbebenchError
from probebench.images import ImageDataset, bad_image_error, make_transform
from probebench.registry import (ModelConfig, Preprocessing, create_model, get_config, random_seed,
                                 random_weights_info)
from probebench.progress import make_progress

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
STORE_DTYPES = ("float32", "float16")


@dataclass
class FeatureJob:
    """A resolved extract/fit request: the manifest, the model entry and the cache key inputs."""

    manifest: Manifest
    config: ModelConfig
    request: fcache.FeatureRequest
    weights_arg: str  # what to pass to create_model: "random" or a checkpoint path

    def cache_path(self, cache_dir: str | Path) -> Path:
        return self.request.path(cache_dir)


def resolve_job(model: str, dataset: str, *, data_root=None, weights: str = "auto", tap: str | None = None,
                resize: int | None = None, crop: int | None = None, precision: str = "fp32",
                store_dtype: str = "float32") -> FeatureJob:
    """Resolve names, data and weights into the cache key that ``extract`` writes and ``fit`` reads."""
    from probebench import weights as wts

    config = get_config(model)
    tap = tap or config.default_tap
    if tap not in config.taps:
        raise ProbebenchError(f"model {model!r} has no feature tap {tap!r}; taps: {', '.join(config.taps)}")
    if precision not in PRECISIONS:
        raise ProbebenchError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if store_dtype not in STORE_DTYPES:
        raise ProbebenchError(f"store dtype {store_dtype!r} is not one of {', '.join(STORE_DTYPES)}")
    pre: Preprocessing = config.preprocessing
    if resize or crop:
        crop = crop or pre.crop
        pre = replace(pre, resize=resize or max(pre.resize, crop), crop=crop)
    if pre.crop > pre.resize:
        raise ProbebenchError(f"crop {pre.crop} is larger than resize {pre.resize}")
    manifest = load_manifest(dataset, data_root)
    if random_seed(weights) is not None:
        winfo = random_weights_info(random_seed(weights))
        weights_arg = weights
    else:
        path = wts.resolve_weights(config, weights)
        winfo = {"source": str(path), "sha256": wts.sha256_file(path), "label": config.weights_label}
        weights_arg = str(path)
    request = fcache.FeatureRequest(
        dataset=manifest.dataset, model=model, tap=tap, weights=winfo, preprocessing=pre.as_dict(),
        precision=precision, store_dtype=store_dtype, manifest_hash=manifest.hash())
    return FeatureJob(manifest, replace(config, preprocessing=pre), request, weights_arg)


def auto_device(device: str = "auto") -> torch.device:
    """cuda > mps > cpu unless named."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _chunk_batches(pending: list[int], chunk: int, n: int, batch: int) -> list[list[int]]:
    """Batches of sample indices that never cross a chunk boundary (so resumed work is identical)."""
    out = []
    for c in pending:
        idx = list(range(c * chunk, min(n, (c + 1) * chunk)))
        out.extend(idx[i:i + batch] for i in range(0, len(idx), batch))
    return out


def extract(model: str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache", weights: str = "auto",
            tap: str | None = None, resize: int | None = None, crop: int | None = None, precision: str = "fp32",
            store_dtype: str = "float32", device: str = "auto", batch_size: int = 32, chunk_size: int = 256,
            workers: int | None = None, force: bool = False, skip_bad: bool = False, progress: bool = True,
            on_chunk: Callable[[int], None] | None = None) -> Path:
    """Fill the cache for ``model`` x ``dataset``; returns the store path. Resumes unless ``force``."""
    job = resolve_job(model, dataset, data_root=data_root, weights=weights, tap=tap, resize=resize, crop=crop,
                      precision=precision, store_dtype=store_dtype)
    path = job.cache_path(cache_dir)
    if force and path.exists():
        import shutil

        shutil.rmtree(path)
    root = fcache.open_store(path, job.request, mode="a")
    chunk_size = max(batch_size, (chunk_size // batch_size) * batch_size)
    if root is not None and root.attrs.get("complete"):
        return path
    dev = auto_device(device)
    net = create_model(model, job.weights_arg, tap=job.request.tap, img_size=job.config.preprocessing.crop).to(dev)
    if root is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
        root = fcache.create_store(path, job.request, job.manifest, net.feature_dim, chunk_size,
                                   {"device": dev_name, "batch_size": batch_size})
    chunk_size = root.attrs["chunk_size"]
    done = set(root.attrs["complete_chunks"])
    n = len(job.manifest)
    pending = [c for c in range(root.attrs["n_chunks"]) if c not in done]
    batches = _chunk_batches(pending, chunk_size, n, batch_size)
    n_workers = workers if workers is not None else min(8, max(1, (os.cpu_count() or 2) - 1))
    loader = DataLoader(ImageDataset(job.manifest.paths, make_transform(job.config.preprocessing),
                                     job.config.preprocessing.crop),
                        batch_sampler=batches, num_workers=n_workers, pin_memory=dev.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if n_workers else None)
    features = root["features"]
    skipped = list(root.attrs["skipped"])
    buffers: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    autocast = PRECISIONS[precision]
    todo = sum(len(b) for b in batches)
    start = time.perf_counter()
    with make_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task(f"extract {model} × {job.manifest.dataset}", total=todo,
                            info=f"{len(done)}/{root.attrs['n_chunks']} chunks cached")
        for images, idx, ok, errors in loader:
            idx = idx.tolist()
            for i, good, err in zip(idx, ok.tolist(), errors):
                if not good:
                    bad = job.manifest.paths[i]
                    if not skip_bad:
                        raise bad_image_error(bad, err)
                    skipped.append({"index": i, "sample_id": str(job.manifest.sample_ids[i]), "path": bad,
                                    "error": err})
            images = images.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
                out = net(images)
            out = out.float().cpu().numpy()
            out[~ok.numpy()] = np.nan
            c = idx[0] // chunk_size
            if c not in buffers:
                rows = min(n, (c + 1) * chunk_size) - c * chunk_size
                buffers[c], filled[c] = np.empty((rows, net.feature_dim), dtype=np.float32), 0
            buffers[c][idx[0] - c * chunk_size: idx[-1] + 1 - c * chunk_size] = out
            filled[c] += len(idx)
            if filled[c] == len(buffers[c]):
                block = buffers.pop(c)
                features[c * chunk_size: c * chunk_size + len(block)] = block.astype(job.request.store_dtype)
                done.add(c)
                root.attrs.update({"complete_chunks": sorted(done), "skipped": skipped})
                if on_chunk is not None:
                    on_chunk(c)
            bar.update(task, advance=len(idx), info=f"{len(done)}/{root.attrs['n_chunks']} chunks cached")
    root.attrs.update({"complete": len(done) == root.attrs["n_chunks"], "skipped": skipped,
                       "extract_seconds": round(time.perf_counter() - start, 3)})
    return path
