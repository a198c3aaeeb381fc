"""Seconds per fine-tuning epoch (all weights trained) on synthetic 224-px images, through the real ``finetune``.

    python benchmarks/finetune_epoch.py --model resnet50 --images 200
    python benchmarks/finetune_epoch.py --model dinov2_s --images 200
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from probebench.train.finetune import finetune

SPEC = """kind = "folder"
root = "bench"
classes = ["a", "b"]
[folder]
split_dirs = { train = ["train"], val = ["val"], test = ["test"] }
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--images", type=int, default=200, help="training images per epoch")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for split, n in (("train", args.images), ("val", 8), ("test", 8)):
            for i in range(n):
                folder = tmp / "data" / "bench" / split / "ab"[i % 2]
                folder.mkdir(parents=True, exist_ok=True)
                arr = (rng.random((32, 32)) * 255).astype(np.uint8)
                Image.fromarray(arr, "L").resize((256, 256)).save(folder / f"{i:05d}.png")
        (tmp / "bench.toml").write_text(SPEC)
        run = finetune(args.model, str(tmp / "bench.toml"), data_root=tmp / "data", runs_dir=tmp / "runs",
                       weights="random", epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                       precision=args.precision, workers=args.workers, progress=False)
        history = list(csv.DictReader((run / "history.csv").open()))
        config = json.loads((run / "config.json").read_text())
    print(json.dumps({"model": args.model, "device": config["device"], "precision": config["precision"],
                      "train_images": args.images, "batch_size": args.batch_size,
                      "seconds_per_epoch": [float(r["train_seconds"]) for r in history],
                      "images_per_s": [float(r["train_samples_per_s"]) for r in history],
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
