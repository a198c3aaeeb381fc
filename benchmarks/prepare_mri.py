"""Wall time of ``prepare-mri`` on a synthetic cohort of realistic size (default 100 patients x 3
modalities of 240 x 240 x 160 voxels at 1 mm, tumour masks), written to a temporary folder first.

    python benchmarks/prepare_mri.py --patients 100
    python benchmarks/prepare_mri.py --patients 10 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from probebench.data.mri import prepare_mri


def write_cohort(root: Path, patients: int, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    brain = (((grid - centre) / (np.array(shape)[:, None, None, None] * 0.42)) ** 2).sum(0) < 1
    lines = ["patient_id,grade"]
    for p in range(patients):
        pid = f"P{p:03d}"
        lines.append(f"{pid},{2 + p % 3}")
        c = centre[:, 0, 0, 0] + rng.uniform(-20, 20, 3)
        tumour = (((grid - c[:, None, None, None]) / np.array([15, 15, 10])[:, None, None, None]) ** 2).sum(0) < 1
        for m in ("t1", "t2", "flair"):
            data = (brain * 400 + tumour * 300 + rng.normal(0, 20, shape)).astype(np.int16)
            folder = root / pid
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(folder / f"{m}.nii.gz"))
            nib.save(nib.Nifti1Image(tumour.astype(np.uint8), np.diag([1.0, 1.0, 1.0, 1.0])),
                     str(folder / f"{m}_mask.nii.gz"))
    labels = root.parent / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return root, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--shape", type=int, nargs=3, default=(240, 240, 160))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        cohort, labels = write_cohort(tmp / "cohort", args.patients, tuple(args.shape))
        generate = time.perf_counter() - start
        start = time.perf_counter()
        summary = prepare_mri(cohort, labels, tmp / "out", workers=args.workers, progress=False)
        wall = time.perf_counter() - start
    print(json.dumps({"patients": args.patients, "shape": args.shape, "volumes": 3 * args.patients,
                      "workers": args.workers or min(8, os.cpu_count() or 2), "cpus": os.cpu_count(),
                      "generate_seconds": round(generate, 1), "prepare_mri_seconds": round(wall, 1),
                      "slices": {m: sum(v["slices"] for v in s["splits"].values())
                                 for m, s in summary["modalities"].items()}}))


if __name__ == "__main__":
    main()
