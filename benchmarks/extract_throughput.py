"""Extraction throughput: (a) bare forward pass, (b) the real ``extract`` from JPEG files, (c) the study's
batch-size-1 PIL loop, (d) decoding alone; ratios b/a, b/c and b / limit, and the cosine similarity of faster
options to fp32 features. The same command as ``probebench bench extract`` (and ``bench memory``).

    python benchmarks/extract_throughput.py --model resnet50 --images 96 --image-size 1024
    python benchmarks/extract_throughput.py --model resnet50 --image-size 2000 --color --draft
    python benchmarks/extract_throughput.py --model dinov2_s --precision bf16
    python benchmarks/extract_throughput.py --memory          # peak RSS, 1,000 vs 4,000 images
"""

import sys

from probebench.cli import app

if __name__ == "__main__":
    args = sys.argv[1:]
    command = ["bench", "memory", *(a for a in args if a != "--memory")] if "--memory" in args else \
        ["bench", "extract", *args]
    app(command, prog_name="extract_throughput.py")
