"""CPU seconds of `report`'s intervals for one run of n test samples (7 classes, every metric, 1,000 replicates):
percentile and BCa (whose acceleration comes from a jackknife of 1,000 random groups above 1,000 units).

    python benchmarks/bca.py              # n = 100,000
    python benchmarks/bca.py --n 20000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from probebench.stats.bootstrap import BootstrapConfig, EvalData, bootstrap
from probebench.threads import apply_threads, thread_counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=7)
    args = ap.parse_args()
    apply_threads()
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.n)
    logits = rng.normal(size=(args.n, args.classes))
    logits[np.arange(args.n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    data = EvalData(y, proba.argmax(1), proba, None, args.classes)
    out = {"n": args.n, "classes": args.classes, "threads": thread_counts()}
    for method in ("percentile", "bca"):
        cpu = time.process_time()
        result, _ = bootstrap(data, BootstrapConfig(method=method, unit="sample"))
        out[method] = {"cpu_s": round(time.process_time() - cpu, 1),
                       "auroc_macro": [round(result["auroc_macro"].low, 4), round(result["auroc_macro"].high, 4)]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
