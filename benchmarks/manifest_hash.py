"""Cost of content-hashed manifests: the first ``load_manifest`` reads every file, the second only stats
them (the digest memo). A folder dataset of N random files of a given size, in a temporary folder.

    python benchmarks/manifest_hash.py --files 10000 --kb 100
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--kb", type=int, default=100, help="size of each file (a JPEG chest X-ray is ~100-300 KB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["PROBEBENCH_HASH_CACHE"] = str(tmp / "digests.sqlite")
        from probebench.data.datasets import load_manifest

        for c in ("a", "b"):
            (tmp / "data" / "bench" / c).mkdir(parents=True)
        for i in range(args.files):
            (tmp / "data" / "bench" / "ab"[i % 2] / f"p{i}_0.png").write_bytes(os.urandom(args.kb * 1024))
        spec = tmp / "bench.toml"
        spec.write_text('kind = "folder"\nroot = "bench"\nclasses = ["a", "b"]\n[folder]\n'
                        "group_regex = '^(?P<group>p\\d+)_'\n[split]\ntest_fraction = 0.3\n")
        times = []
        for _ in range(2):
            t = time.perf_counter()
            load_manifest(str(spec), tmp / "data", quiet=True)
            times.append(time.perf_counter() - t)
        mb = args.files * args.kb / 1024
        print(f"{args.files} files x {args.kb} KB ({mb:.0f} MB): first load_manifest {times[0]:.2f} s "
              f"(reads and hashes every file), second {times[1]:.2f} s (stat per file)")


if __name__ == "__main__":
    main()
