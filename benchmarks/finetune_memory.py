"""Peak GPU memory of one fine-tuning step (forward, backward, Adam) for a registry model.

    python benchmarks/finetune_memory.py --model dinov2_l --batch-size 32 --precision bf16
    python benchmarks/finetune_memory.py --model dinov2_l --batch-size 32 --precision bf16 --grad-checkpointing
    python benchmarks/finetune_memory.py --model dinov2_l --batch-size 32 --accumulate 4

Needs CUDA: without it the script says so and measures nothing (random weights; memory does not
depend on the values).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from probebench.train.finetune import Classifier
from probebench.models.registry import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2_l")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--crop", type=int, default=224)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"model": args.model, "peak_gib": "not measured (no CUDA device)"}))
        return
    dev = torch.device("cuda")
    extractor = create_model(args.model, "random", img_size=args.crop)
    if args.grad_checkpointing and hasattr(extractor.backbone, "grad_checkpointing"):
        extractor.backbone.grad_checkpointing = True
    net = Classifier(extractor, 2, seed=0, freeze_backbone=False).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    micro = args.batch_size // args.accumulate
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step includes Adam's state
        opt.zero_grad(set_to_none=True)
        for _ in range(args.accumulate):
            x = torch.randn(micro, 3, args.crop, args.crop, device=dev)
            y = torch.randint(0, 2, (micro,), device=dev)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(net(x).float(), y) / args.accumulate
            loss.backward()
        opt.step()
    torch.cuda.synchronize()
    print(json.dumps({"model": args.model, "device": torch.cuda.get_device_name(dev), "batch_size": args.batch_size,
                      "accumulate": args.accumulate, "precision": args.precision,
                      "grad_checkpointing": args.grad_checkpointing,
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
