"""How many of pydicom's own test files probebench reads, and why each other one is not read.

Every `*.dcm` shipped inside the pydicom package (`pydicom/data/test_files`; the ones pydicom downloads on demand
are left out: this runs offline) goes through `probebench.data.pixels.read_dicom` with a multi-frame rule of "middle". Files
without pixel data (reports, plans, structure sets) are counted apart. Run it once with the default install and
once with the decoders (`pip install "probebench[dicom]"`), and compare with what pydicom itself decodes.

    python benchmarks/dicom.py
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path


def main() -> None:
    import pydicom
    import pydicom.data

    from probebench.data.pixels import PixelRules, read_dicom

    rules = PixelRules(dicom_frame="middle")
    files = sorted(str(p) for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
    read, no_pixels, failed, pydicom_decodes = [], [], {}, 0
    for f in files:
        has_pixels = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(f, force=True)
                has_pixels = "PixelData" in ds
                if has_pixels:
                    ds.pixel_array
                    pydicom_decodes += 1
            except Exception:
                pass
        if not has_pixels:
            no_pixels.append(f)
            continue
        try:
            read_dicom(f, rules)
            read.append(f)
        except Exception as exc:
            failed[Path(f).name] = " ".join(str(exc).split())[:160]
    with_pixels = len(files) - len(no_pixels)
    print(f"{len(files)} files; {len(no_pixels)} without pixel data; {with_pixels} with pixel data")
    print(f"pydicom decodes {pydicom_decodes} of them; probebench reads {len(read)}")
    reasons = collections.Counter(r.split(" (")[0].split(";")[0][:90] for r in failed.values())
    for reason, n in reasons.most_common():
        print(f"  {n:3d} not read: {reason}")
    for name, reason in sorted(failed.items()):
        print(f"    {name}: {reason}")


if __name__ == "__main__":
    main()
