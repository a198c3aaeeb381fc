"""Cost of the lr x weight-decay grid (20 heads trained together) relative to one head, on cached features.

    python benchmarks/heads.py                   # 10,000 x 1,024 features, linear heads, 5 epochs
    python benchmarks/heads.py --kind mlp --epochs 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from probebench.train.heads import GridHead, LinearHead, MLPHead
from probebench.threads import thread_counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--kind", default="linear", choices=["linear", "mlp"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    y = rng.integers(0, args.classes, args.n)
    xv, yv = x[: args.n // 5], y[: args.n // 5]
    single = (LinearHead if args.kind == "linear" else MLPHead)(epochs=args.epochs)
    start = time.perf_counter()
    single.fit(x, y, xv, yv, args.classes)
    one = time.perf_counter() - start
    grid = GridHead(args.kind, epochs=args.epochs)
    start = time.perf_counter()
    grid.fit(x, y, xv, yv, args.classes)
    many = time.perf_counter() - start
    print(json.dumps({"kind": args.kind, "n": args.n, "dim": args.dim, "classes": args.classes,
                      "epochs": args.epochs, "heads_in_grid": len(grid.cells), "one_head_seconds": round(one, 2),
                      "grid_seconds": round(many, 2), "grid_over_one": round(many / one, 2),
                      "threads": thread_counts()}))


if __name__ == "__main__":
    main()
