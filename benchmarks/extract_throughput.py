"""Extraction throughput: (a) bare forward pass on ready tensors vs (b) the real ``extract`` from JPEG files.

b/a near 1 means decoding, resizing and cache writes hide behind the forward pass.
Random weights (speed does not depend on the values). Prints one JSON line.

    python benchmarks/extract_throughput.py --model resnet50 --images 96 --image-size 1024
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from PIL import Image

from probebench.extract import auto_device, extract
from probebench.registry import create_model

SPEC = """kind = "folder"
root = "bench"
classes = ["a", "b"]
[split]
test_fraction = 0.3
"""


def make_jpegs(root: Path, n: int, size: int) -> Path:
    """``n`` grayscale JPEGs of ``size`` px (chest-X-ray-like), half per class, and their spec."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "bench" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((size // 8, size // 8)) * 255).astype(np.uint8)
        Image.fromarray(arr, "L").resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.jpeg", quality=90)
    spec = root / "bench.toml"
    spec.write_text(SPEC)
    return spec


def forward_only(model: str, n: int, batch: int, crop: int, device: torch.device) -> float:
    net = create_model(model, "random", img_size=crop).to(device)
    x = torch.randn(batch, 3, crop, crop, device=device)
    with torch.inference_mode():
        net(x)  # warm-up
        start, done = time.perf_counter(), 0
        while done < n:
            net(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=1024, help="side of the synthetic JPEGs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = auto_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = make_jpegs(tmp / "data", args.images, args.image_size)
        a = forward_only(args.model, args.images, args.batch_size, 224, device)
        start = time.perf_counter()
        store = extract(args.model, str(spec), data_root=tmp / "data", cache_dir=tmp / "cache", weights="random",
                        batch_size=args.batch_size, workers=args.workers, device=args.device, progress=False)
        wall = time.perf_counter() - start
        loop = zarr.open_group(str(store), mode="r").attrs["extract_seconds"]
        b = args.images / loop  # the image loop: decode, resize, forward, cache writes
    print(json.dumps({"model": args.model, "device": str(device), "images": args.images,
                      "image_size": args.image_size, "batch_size": args.batch_size,
                      "a_forward_img_s": round(a, 2), "b_extract_img_s": round(b, 2), "b_over_a": round(b / a, 3),
                      "extract_wall_s_incl_model_build": round(wall, 2),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
