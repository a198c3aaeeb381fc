"""Time the study's head training on cached features: 100 epochs, batch 32, Adam, on N x D features.

    python benchmarks/fit_speed.py                 # 10,000 x 1,024, 2 classes
    python benchmarks/fit_speed.py --n 5000 --dim 768 --classes 7
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from probebench.train.heads import LinearHead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="training samples")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    y = rng.integers(0, args.classes, args.n)
    xv, yv = x[: args.n // 5], y[: args.n // 5]
    start = time.perf_counter()
    LinearHead(epochs=args.epochs).fit(x, y, xv, yv, args.classes)
    seconds = time.perf_counter() - start
    print(json.dumps({"n": args.n, "dim": args.dim, "classes": args.classes, "epochs": args.epochs,
                      "batch_size": 32, "seconds": round(seconds, 2), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
