"""Time a label-efficiency curve on cached features: fractions x seeds x heads, each point a full ``fit`` (subset
drawn, head trained for the study's 100 epochs with the best validation epoch, test predicted, run written), then
the report that bootstraps every point and draws the curve.

The features are real cache entries: ``--n`` small synthetic images (3 classes, 2 per patient) are written once
and extracted once with random-weight ResNet50 at 32 px (2,048-d features), both kept in ``--workdir`` for reruns.

    python benchmarks/label_efficiency.py                    # 10,000 images, 5 fractions x 5 seeds x 2 heads
    python benchmarks/label_efficiency.py --n 2000 --heads linear
"""

from __future__ import annotations

import argparse
import json
from probebench.threads import thread_counts
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

SPEC = """name = "curve_bench"
kind = "folder"
root = "curve_bench"
classes = ["a", "b", "c"]
group = "patient"
[folder]
group_regex = '^(?P<group>p\\d+)_'
[split]
test_fraction = 0.3
val_fraction = 0.1
seed = 0
"""


def make_images(root: Path, n: int) -> None:
    """``n`` 32-px grayscale PNGs, 2 per patient, a class-dependent mean so the heads have something to learn."""
    rng = np.random.default_rng(0)
    for i in range(n):
        c = (i // 2) % 3
        folder = root / "curve_bench" / "abc"[c]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(rng.normal(90 + 30 * c, 40, (32, 32)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"p{i // 2:05d}_{i % 2}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images (cached features)")
    ap.add_argument("--fractions", default="0.01,0.05,0.1,0.25,1")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--heads", default="linear,mlp")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap replicates of the report")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/probebench-label-efficiency"))
    args = ap.parse_args()
    from probebench.features.extract import extract
    from probebench.report.tables import ReportOptions, collect_rows, curve_table
    from probebench.stats.bootstrap import BootstrapConfig
    from probebench.train.fit import fit

    work = args.workdir / str(args.n)
    spec = work / "curve_bench.toml"
    if not spec.exists():
        make_images(work / "data", args.n)
        spec.write_text(SPEC)
    feature = dict(weights="random", resize=32, crop=32)
    start = time.perf_counter()
    extract("resnet50", str(spec), data_root=work / "data", cache_dir=work / "cache", progress=False, **feature)
    setup_s = time.perf_counter() - start
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = args.heads.split(",")
    per_head = {}
    for head in heads:
        start = time.perf_counter()
        fit("resnet50", str(spec), data_root=work / "data", cache_dir=work / "cache", runs_dir=runs, head=head,
            epochs=args.epochs, label_fractions=fractions, seeds=seeds, progress=False, **feature)
        per_head[head] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    opts = ReportOptions(BootstrapConfig(n_resamples=args.resamples))
    rows = collect_rows(runs, opts=opts)
    _, body = curve_table(rows, "accuracy")
    report_s = time.perf_counter() - start
    points = len(fractions) * len(seeds) * len(heads)
    print(json.dumps({"threads": thread_counts(), 
        "n_images": args.n, "feature_dim": 2048, "fractions": fractions, "seeds": seeds, "heads": heads,
        "epochs": args.epochs, "runs": points, "fit_seconds_per_head": per_head,
        "fit_seconds_total": round(sum(per_head.values()), 2),
        "seconds_per_point": round(sum(per_head.values()) / points, 3),
        "report_seconds": round(report_s, 2), "report_resamples": args.resamples, "curve_lines": len(body),
        "setup_seconds": round(setup_s, 1),
        "setup_note": "writing the images and extracting them; cached in --workdir for reruns"}, indent=1))


if __name__ == "__main__":
    main()
