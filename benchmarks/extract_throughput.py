"""Extraction throughput: (a) bare forward pass, (b) the real ``extract`` from JPEG files, (c) the study's
batch-size-1 PIL loop; ratios b/a and b/c, and the cosine similarity of faster options to fp32 features.
Same code as ``probebench bench extract``.

    python benchmarks/extract_throughput.py --model resnet50 --images 96 --image-size 1024
    python benchmarks/extract_throughput.py --model resnet50 --image-size 2000 --color --draft
    python benchmarks/extract_throughput.py --model dinov2_s --precision bf16
    python benchmarks/extract_throughput.py --memory          # peak RSS, 1,000 vs 4,000 images
"""

from probebench.bench import main

if __name__ == "__main__":
    main()
