"""Decode + resize of one large colour JPEG, four ways: PIL full decode, PIL draft mode (libjpeg-turbo DCT scaling,
probebench's ``--draft``), and simplejpeg with DCT scaling (exact, and with its fast DCT/upsampling), when
simplejpeg is installed (``pip install simplejpeg``; not a probebench dependency). Prints milliseconds per image
and the largest pixel difference of each to PIL's draft decode.

    python benchmarks/decoders.py                      # 2000 x 1500 photograph-like JPEG, quality 92, to 256 px
    python benchmarks/decoders.py --width 4000 --height 3000
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image
from torchvision import transforms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--size", type=int, default=256, help="shorter side after resizing")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:args.height, 0:args.width]
    smooth = np.stack([np.sin(xx / 50 + c) * np.cos(yy / 70) for c in range(3)], -1)
    pixels = ((smooth * 0.4 + 0.5) * 255 + rng.normal(0, 8, smooth.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
    data = buf.getvalue()
    resize = transforms.Resize(args.size)

    def pil(draft: bool):
        with Image.open(io.BytesIO(data)) as im:
            if draft:
                s = args.size / min(im.size)
                im.draft(im.mode, (int(im.size[0] * s + 0.999), int(im.size[1] * s + 0.999)))
            im.load()
            return resize(im.convert("RGB"))

    ways = {"pil_full": lambda: pil(False), "pil_draft": lambda: pil(True)}
    try:
        import simplejpeg

        for name, fast in (("simplejpeg", False), ("simplejpeg_fast", True)):
            ways[name] = lambda fast=fast: resize(Image.fromarray(simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_height=args.size, min_width=args.size, fastdct=fast, fastupsample=fast)))
    except ImportError:
        pass
    reference = np.asarray(pil(True), dtype=np.int16)
    out = {"image": f"{args.width}x{args.height} JPEG q92", "shorter_side": args.size, "ms_per_image": {},
           "max_pixel_difference_to_pil_draft": {}}
    for name, fn in ways.items():
        fn()
        start = time.perf_counter()
        for _ in range(args.repeats):
            img = fn()
        out["ms_per_image"][name] = round((time.perf_counter() - start) / args.repeats * 1000, 2)
        out["max_pixel_difference_to_pil_draft"][name] = int(np.abs(np.asarray(img, np.int16) - reference).max())
    if "simplejpeg" not in ways:
        out["simplejpeg"] = "not installed (pip install simplejpeg)"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
