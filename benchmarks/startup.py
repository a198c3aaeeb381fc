"""Time from typing a command to its first answer: a misspelt option, `--help`, `fit --help`, `datasets`.

Each command runs as a new process (as a user's shell starts it), `--repeat` times; the median and the range are
printed. Goal (issue 30): under 1 s to a misspelt-option error and to `--help` on an idle 2-core machine.

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "misspelt option (fit --modle)": ["fit", "--modle", "resnet50"],
    "--help": ["--help"],
    "fit --help": ["fit", "--help"],
    "unknown model (extract -m resnet5)": ["extract", "-m", "resnet5", "-d", "chest_xray"],
    "unknown dataset (fit -d chest_xra)": ["fit", "-m", "resnet50", "-d", "chest_xra"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        for label, argv in COMMANDS.items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "probebench", *argv], cwd=cwd, capture_output=True)
                times.append(time.perf_counter() - t0)
            print(f"{label:40s} median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
