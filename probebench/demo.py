"""``demo``: a synthetic 2D dataset, then extract -> fit -> report for a CNN and a DINOv2, offline.

The images are simple class-dependent textures (grayscale PNG and RGB JPEG, two per "patient") and
the backbones use random weights, so the table is flagged: it shows the pipeline, not a result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from probebench.train.config import PROTOCOL

DEMO_CLASSES = ("rings", "bars", "blobs")  # the order of the shipped spec demo_shapes.toml


def synthetic_image(cls: int, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A noisy texture whose structure depends on the class: rings, bars or Gaussian blobs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    freq = rng.uniform(6, 10)
    if cls == 0:
        base = np.sin(2 * np.pi * freq * np.hypot(yy - cy, xx - cx))
    elif cls == 1:
        angle = rng.uniform(0, np.pi)
        base = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    else:
        base = np.zeros_like(xx)
        for _ in range(6):
            by, bx = rng.uniform(0, 1, 2)
            base += np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / 0.004)
        base = 2 * base / base.max() - 1
    img = 0.5 + 0.35 * base + rng.normal(0, 0.15, base.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_demo_dataset(data_root: str | Path, patients_per_class: int = 12, images_per_patient: int = 2,
                      size: int = 96, seed: int = 0) -> Path:
    """Write the demo images under ``<data_root>/demo_shapes`` (the shipped spec ``demo_shapes`` reads them)."""
    rng = np.random.default_rng(seed)
    root = Path(data_root) / "demo_shapes"
    pid = 0
    for c, name in enumerate(DEMO_CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(patients_per_class):
            for k in range(images_per_patient):
                arr = synthetic_image(c, rng, size)
                if k % 2:  # some RGB JPEGs beside grayscale PNGs, as real releases mix them
                    Image.fromarray(np.stack([arr] * 3, -1)).save(folder / f"p{pid:03d}_{k}.jpg", quality=95)
                else:
                    Image.fromarray(arr, mode="L").save(folder / f"p{pid:03d}_{k}.png")
            pid += 1
    (root / ".DS_Store").write_bytes(b"\0junk")  # release clutter: skipped and counted
    return root


def run_demo(out: str | Path = "demo-output", models: tuple[str, ...] = ("resnet50", "dinov2_s"),
             epochs: int = PROTOCOL.epochs, resize: int | None = None, crop: int | None = None, progress: bool = True,
             fmt: str = "table") -> str:
    """Generate data, extract and fit each model with random weights, and return the rendered report."""
    from probebench.features.extract import extract
    from probebench.train.fit import fit
    from probebench.report.tables import ReportOptions, collect_rows, comparisons, render

    out = Path(out)
    make_demo_dataset(out / "data")
    spec = "demo_shapes"
    common = dict(data_root=out / "data", cache_dir=out / "cache", weights="random", resize=resize, crop=crop)
    for model in models:
        extract(model, str(spec), progress=progress, **common)
        fit(model, str(spec), runs_dir=out / "runs", epochs=epochs, progress=progress, **common)
    rows = collect_rows(out / "runs")
    return render(rows, fmt, ReportOptions(), comparisons(rows, ReportOptions()))
