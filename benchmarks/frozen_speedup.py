"""The frozen protocol two ways on the same data: every image through the frozen backbone every epoch
(``finetune --freeze-backbone``, the study's way) versus one ``extract`` plus ``fit`` on cached features.

    python benchmarks/frozen_speedup.py --epochs 100 --images 48 --crop 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from probebench.bench import make_jpegs
from probebench.features.extract import extract
from probebench.train.finetune import finetune
from probebench.train.fit import fit
from probebench.runs import read_run
from probebench.threads import thread_counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = str(make_jpegs(tmp / "data", args.images, 256))
        opts = dict(data_root=tmp / "data", weights="random", resize=args.crop + args.crop // 7, crop=args.crop)
        start = time.perf_counter()
        extract(args.model, spec, cache_dir=tmp / "c", progress=False, channels_last=False, **opts)
        extract_s = time.perf_counter() - start
        fast = read_run(fit(args.model, spec, cache_dir=tmp / "c", runs_dir=tmp / "a", epochs=args.epochs,
                            batch_size=args.batch_size, channels_last=False, progress=False, **opts))
        fit_s = time.perf_counter() - start - extract_s
        start = time.perf_counter()
        slow = read_run(finetune(args.model, spec, runs_dir=tmp / "b", freeze_backbone=True, epochs=args.epochs,
                                 batch_size=args.batch_size, progress=False, **opts))
        slow_s = time.perf_counter() - start
    print(json.dumps({"threads": thread_counts(), "model": args.model, "images": args.images, "epochs": args.epochs, "crop": args.crop,
                      "extract_seconds": round(extract_s, 2), "fit_seconds": round(fit_s, 2),
                      "frozen_end_to_end_seconds": round(slow_s, 2),
                      "speedup": round(slow_s / (extract_s + fit_s), 1),
                      "max_probability_difference": float(np.abs(fast.proba - slow.proba).max())}))


if __name__ == "__main__":
    main()
