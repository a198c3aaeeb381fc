"""Extraction throughput, measured four ways on the same synthetic JPEGs (``probebench bench extract``):

(a) the backbone's forward pass alone on ready tensors (the physical limit);
(b) the real ``extract``: files -> decode -> resize/crop -> forward -> zarr, with workers and the
    background writer;
(c) the study's way: one image at a time with PIL transforms;
(d) decoding + resize + crop alone, with the same workers (no model).

It prints b/a, b/c and b / limit, where the limit is 1 / (1/a + 1/d) when decoding and the forward pass share
the CPU and min(a, d) on a GPU (where they overlap), the cosine similarity of bf16 (and JPEG draft) features
to fp32 ones. ``memory`` reports peak RSS of whole extractions of different sizes (fresh processes). The
command line (``probebench bench``, ``benchmarks/extract_throughput.py``) prints the results as JSON.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from probebench.budget import default_workers

SPEC = """kind = "folder"
root = "bench"
classes = ["a", "b"]
[split]
test_fraction = 0.3
"""


def make_jpegs(root: Path, n: int, size: int, grayscale: bool = True) -> Path:
    """``n`` JPEGs of ``size`` px (grayscale like chest X-rays, or colour like fundus photos) and their spec."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "bench" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        shape = (size // 16, size // 16) if grayscale else (size // 16, size // 16, 3)
        img = Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        img.save(folder / f"{i:05d}.jpeg", quality=90)
    spec = root / "bench.toml"
    spec.write_text(SPEC)
    return spec


def forward_only(net, n: int, batch: int, crop: int, device: torch.device, precision: str,
                 channels_last: bool) -> float:
    from probebench.features.precision import autocast_dtype

    dtype = autocast_dtype(precision)
    x = torch.randn(batch, 3, crop, crop, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        net(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while done < n:
            net(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def study_way(net, paths: list[str], transform, device: torch.device) -> float:
    """The study's inference loop: batch size 1, PIL transforms, one forward per image."""
    from probebench.features.images import load_rgb

    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            net(transform(load_rgb(p)).unsqueeze(0).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def throughput(model: str = "resnet50", images: int = 96, image_size: int = 1024, grayscale: bool = True,
               batch_size: int | None = None, precision: str = "fp32", device: str = "auto",
               workers: int | None = None, channels_last: bool | None = None, draft: bool = False,
               study_images: int = 32, compare: bool = True) -> dict:
    """Measure (a), (b), (c) and the feature agreement of the faster options; returns the numbers."""
    import zarr

    from probebench.features.extract import auto_device, default_batch_size, extract
    from probebench.features.spec import FeatureSpec, resolve_job
    from probebench.features.images import make_transform
    from probebench.models.registry import create_model

    dev = auto_device(device)
    batch = batch_size or default_batch_size(dev)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = make_jpegs(tmp / "data", images, image_size, grayscale)
        features = FeatureSpec(model, weights="random", precision=precision, channels_last=channels_last, draft=draft)
        common = dict(data_root=tmp / "data", batch_size=batch, device=device, workers=workers, progress=False)
        job = resolve_job(features, str(spec), data_root=tmp / "data")
        cl = job.request.channels_last
        net = create_model(model, "random").to(dev).eval()
        if cl:
            net = net.to(memory_format=torch.channels_last)
        a = forward_only(net, images, batch, job.config.preprocessing.crop, dev, precision, cl)
        store = extract(features, str(spec), cache_dir=tmp / "cache", **common)
        b = images / zarr.open_group(str(store), mode="r").attrs["extract_seconds"]
        c = study_way(create_model(model, "random").to(dev).eval(), job.manifest.paths[:study_images],
                      make_transform(job.config.preprocessing), dev)
        d = decode_only(job, batch, workers)
        # the ceiling for (b): decoding and the forward pass share the CPU (1 / (1/a + 1/d)) on a CPU; on a GPU
        # they overlap, so the slower of the two
        limit = min(a, d) if dev.type == "cuda" else 1.0 / (1.0 / a + 1.0 / d)
        from probebench.threads import thread_counts

        out = {"model": model, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
               "precision": precision, "channels_last": cl, "draft": draft, "batch_size": batch,
               "images": images, "image_size": image_size, "grayscale": grayscale,
               "a_forward_img_s": round(a, 2), "b_extract_img_s": round(b, 2), "c_study_loop_img_s": round(c, 2),
               "d_decode_img_s": round(d, 2), "limit_img_s": round(limit, 2), "b_over_limit": round(b / limit, 3),
               "b_over_a": round(b / a, 3), "b_over_c": round(b / c, 2), "torch": torch.__version__,
               "threads": thread_counts()}
        if compare:
            plain = features.replace(precision="fp32", channels_last=False, draft=False)
            reference = read_store(extract(plain, str(spec), cache_dir=tmp / "ref", **common))
            out["cosine_to_fp32_full_decode"] = round(_cosine(read_store(store), reference), 6)
    return out


def decode_only(job, batch: int, workers: int | None) -> float:
    """(d): images/s of decoding + resize + crop alone, through the same dataset and loader settings as extract."""
    from torch.utils.data import DataLoader

    from probebench.features.images import ImageDataset, make_transform

    pre = job.config.preprocessing
    n_workers = workers if workers is not None else default_workers()
    loader = DataLoader(ImageDataset(job.manifest.paths, make_transform(pre), pre.crop,
                                     draft=pre.resize if pre.draft else None, rules=job.manifest.pixels),
                        batch_size=batch, num_workers=n_workers, prefetch_factor=4 if n_workers else None)
    start, done = time.perf_counter(), 0
    for images, *_ in loader:
        done += len(images)
    return done / (time.perf_counter() - start)


def read_store(store) -> np.ndarray:
    from probebench.features.cache import read_features

    return read_features(store).features


def peak_rss(model: str, images: int, image_size: int = 64, crop: int = 56) -> float:
    """Peak RSS (MiB) of a whole extraction of ``images`` images, in a fresh process."""
    code = f"""
import resource, tempfile
from pathlib import Path
from probebench.bench import make_jpegs
from probebench.features.extract import extract
with tempfile.TemporaryDirectory() as tmp:
    spec = make_jpegs(Path(tmp) / "data", {images}, {image_size})
    extract({model!r}, str(spec), data_root=Path(tmp) / "data", cache_dir=Path(tmp) / "c", weights="random",
            resize={image_size}, crop={crop}, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PROBEBENCH_OFFLINE": "1"}, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024


def memory(model: str = "resnet50", sizes: tuple[int, ...] = (1000, 4000)) -> dict:
    return {"model": model, "peak_rss_mib": {str(n): round(peak_rss(model, n), 1) for n in sizes},
            "note": "64 px JPEGs, 56 px crop: the dataset size is what varies"}
