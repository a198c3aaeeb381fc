"""The GPU measurements in one command, ready for the day a GPU is available (random weights throughout):

1. extraction (a) forward only, (b) real extract, (c) the study's loop, (d) decoding alone, and b / limit, for
   resnet50, dinov2_b and dinov2_l in fp32 and bf16, on 2,000 chest-X-ray-sized (1024 px) grayscale JPEGs;
2. ViT-L/14 fine-tuning at effective batch 32: peak memory and step time, with and without gradient
   checkpointing;
3. the headline: all six study backbones, frozen, on an 11,500-image HAM10000-sized synthetic set (600 x 450
   colour JPEGs, 7 classes): extract + fit + report wall time.

    python benchmarks/gpu_suite.py --out gpu-suite/          # about 8 minutes on one data-centre GPU
    python benchmarks/gpu_suite.py --tiny --out /tmp/suite   # the same code on a CPU in a minute (the tests)

Writes ``suite.json`` and ``suite.md`` (a table to paste into benchmarks/RESULTS.md) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

FULL = {"extract_models": ("resnet50", "dinov2_b", "dinov2_l"), "extract_images": 2000, "extract_size": 1024,
        "study_images": 64, "finetune_model": "dinov2_l", "finetune_batch": 32, "finetune_crop": 224,
        "headline_models": ("vgg16", "resnet50", "densenet121", "dinov2_s", "dinov2_b", "dinov2_l"),
        "headline_images": 11_500, "headline_size": (600, 450), "epochs": 100}
TINY = {"extract_models": ("resnet50", "dinov2_s"), "extract_images": 8, "extract_size": 64, "study_images": 4,
        "finetune_model": "dinov2_s", "finetune_batch": 4, "finetune_crop": 56,
        "headline_models": ("resnet50", "dinov2_s"), "headline_images": 28, "headline_size": (64, 48),
        "epochs": 2}


def extraction(cfg: dict, device: str) -> list[dict]:
    from probebench.bench import throughput

    rows = []
    for model in cfg["extract_models"]:
        for precision in ("fp32", "bf16"):
            rows.append(throughput(model, cfg["extract_images"], cfg["extract_size"], True, None, precision, device,
                                   None, None, False, study_images=cfg["study_images"], compare=False))
    return rows


def finetune_step(cfg: dict, device: str) -> list[dict]:
    """Peak memory (CUDA) and seconds per optimiser step of full fine-tuning, bf16 autocast on CUDA."""
    from torch import nn

    from probebench.features.extract import auto_device
    from probebench.models.registry import create_model
    from probebench.train.finetune import Classifier

    dev = auto_device(device)
    rows = []
    for checkpointing in (False, True):
        extractor = create_model(cfg["finetune_model"], "random", img_size=cfg["finetune_crop"])
        if checkpointing and hasattr(extractor.backbone, "grad_checkpointing"):
            extractor.backbone.grad_checkpointing = True
        net = Classifier(extractor, 7, seed=0, freeze_backbone=False).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.randn(cfg["finetune_batch"], 3, cfg["finetune_crop"], cfg["finetune_crop"], device=dev)
        y = torch.randint(0, 7, (cfg["finetune_batch"],), device=dev)
        dtype = torch.bfloat16 if dev.type == "cuda" else None
        times = []
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(3):  # the first step includes allocation; the median of three is reported
            start = time.perf_counter()
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - start)
        rows.append({"model": cfg["finetune_model"], "batch": cfg["finetune_batch"], "crop": cfg["finetune_crop"],
                     "grad_checkpointing": checkpointing, "precision": "bf16" if dtype else "fp32",
                     "step_seconds": round(sorted(times)[1], 3),
                     "peak_gib": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda"
                                  else "not measured (CPU)")})
        del net, opt
    return rows


def headline(cfg: dict, device: str) -> dict:
    """Six backbones, frozen, on a HAM10000-sized synthetic set: extract + fit + report, wall time."""
    import numpy as np
    from PIL import Image

    from probebench.features.extract import extract
    from probebench.report.publish import write_report
    from probebench.train.fit import fit

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
        w, h = cfg["headline_size"]
        for i in range(cfg["headline_images"]):
            folder = tmp / "data" / "ham" / classes[i % 7]
            folder.mkdir(parents=True, exist_ok=True)
            small = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
        spec = tmp / "ham.toml"
        spec.write_text(f'kind = "folder"\nroot = "ham"\nclasses = {json.dumps(classes)}\n[split]\n'
                        'test_fraction = 0.2\n')
        per_model = {}
        start = time.perf_counter()
        for model in cfg["headline_models"]:
            t0 = time.perf_counter()
            common = dict(data_root=tmp / "data", cache_dir=tmp / "cache", weights="random",
                          **({"resize": 64, "crop": 56} if cfg is TINY else {}))
            extract(model, str(spec), device=device, progress=False, **common)
            t1 = time.perf_counter()
            fit(model, str(spec), runs_dir=tmp / "runs", epochs=cfg["epochs"], progress=False, **common)
            per_model[model] = {"extract_s": round(t1 - t0, 1), "fit_s": round(time.perf_counter() - t1, 1)}
        t2 = time.perf_counter()
        write_report(tmp / "runs", tmp / "report")
        report_s = time.perf_counter() - t2
        return {"images": cfg["headline_images"], "image_size": list(cfg["headline_size"]),
                "models": per_model, "report_s": round(report_s, 1),
                "total_s": round(time.perf_counter() - start, 1)}


def markdown(result: dict) -> str:
    lines = [f"GPU suite on {result['device']} ({result['torch']}), {'tiny' if result['tiny'] else 'full'} mode",
             "", "| extraction | precision | (a) forward | (b) extract | (c) study loop | (d) decode | b / limit |",
             "|---|---|---|---|---|---|---|"]
    for r in result["extraction"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['a_forward_img_s']} | {r['b_extract_img_s']} | "
                     f"{r['c_study_loop_img_s']} | {r['d_decode_img_s']} | {r['b_over_limit']} |")
    lines += ["", "| fine-tuning | batch | checkpointing | step s | peak GiB |", "|---|---|---|---|---|"]
    for r in result["finetune"]:
        lines.append(f"| {r['model']} {r['precision']} | {r['batch']} | {r['grad_checkpointing']} | "
                     f"{r['step_seconds']} | {r['peak_gib']} |")
    h = result["headline"]
    lines += ["", f"Headline: {len(h['models'])} backbones, frozen, {h['images']:,} images: extract + fit + report "
                  f"{h['total_s']} s (report {h['report_s']} s)", "", "| model | extract s | fit s |", "|---|---|---|"]
    lines += [f"| {m} | {v['extract_s']} | {v['fit_s']} |" for m, v in h["models"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on any device (the test suite runs this)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("gpu-suite"))
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    start = time.perf_counter()
    result = {"tiny": args.tiny, "device": device_name, "torch": torch.__version__,
              "extraction": extraction(cfg, args.device), "finetune": finetune_step(cfg, args.device),
              "headline": headline(cfg, args.device)}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "suite.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
