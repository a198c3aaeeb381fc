"""Pixel rules for medical images: deeper-than-8-bit intensities to 8 bits, and DICOM decoding.

Pure functions of arrays (plus one DICOM reader). A dataset spec chooses the rules in ``[pixels]``;
they travel in the manifest, so they are part of the manifest hash and hence of the cache key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

INTENSITY_RULES = ("minmax", "percentile", "bits", "full16")
PIXEL_KEYS = {"intensity", "percentiles", "bits", "dicom_window", "dicom_frame"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"} | DICOM_SUFFIXES
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


def is_junk(path: Path) -> bool:
    """Release clutter that is never an image: macOS/Windows metadata, spreadsheets, notes, hidden files."""
    return (path.name.lower() in JUNK_NAMES or path.name.startswith("._") or path.name.startswith(".")
            or "__MACOSX" in path.parts or path.suffix.lower() not in IMAGE_SUFFIXES)


DICOM_DECODERS_HINT = ('pip install "probebench[dicom]" (pylibjpeg with its libjpeg, openjpeg and rle plugins: '
                       "JPEG lossless, JPEG-LS, JPEG 2000, RLE; or pip install python-gdcm)")


@dataclass(frozen=True)
class PixelRules:
    """How pixel values deeper than 8 bits become 0-255, and whether a DICOM window is applied.

    ``intensity``: ``minmax`` (per image, the default), ``percentile`` (per image, clipped to
    ``percentiles``), ``bits`` (divide by 2^bits - 1, ``bits`` given) or ``full16`` (divide by 65535).
    8-bit images never pass through these rules.
    """

    intensity: str = "minmax"
    percentiles: tuple[float, float] = (0.5, 99.5)
    bits: int | None = None
    dicom_window: bool = True  # apply the file's VOI LUT / WindowCenter+Width when present
    dicom_frame: str | int | None = None  # multi-frame DICOM: "first", "middle" or a 0-based index; None refuses

    def as_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        if self.dicom_frame is None:  # absent unless set: manifests (and cache keys) made before it stay the same
            del d["dicom_frame"]
        return d

    @classmethod
    def from_spec(cls, table: dict, where: str) -> "PixelRules":
        """The ``[pixels]`` table of a dataset spec, checked; ``where`` names the spec in errors."""
        from probebench.errors import ProbebenchError

        unknown = set(table) - PIXEL_KEYS
        if unknown:
            raise ProbebenchError(f"{where}: unknown keys {sorted(unknown)} in [pixels]; allowed: {sorted(PIXEL_KEYS)}")
        rule = table.get("intensity", "minmax")
        if rule not in INTENSITY_RULES:
            raise ProbebenchError(f"{where}: [pixels] intensity {rule!r} is not one of {', '.join(INTENSITY_RULES)}")
        raw = table.get("percentiles", (0.5, 99.5))
        ok = isinstance(raw, (list, tuple)) and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                     for p in raw)
        pct = tuple(float(p) for p in raw) if ok else ()
        if len(pct) != 2 or not 0 <= pct[0] < pct[1] <= 100:
            raise ProbebenchError(f"{where}: [pixels] percentiles must be two numbers 0 <= low < high <= 100, "
                                  f"not {raw!r}")
        bits = table.get("bits")
        if rule == "bits" and not (isinstance(bits, int) and 1 <= bits <= 32):
            raise ProbebenchError(f"{where}: [pixels] intensity = \"bits\" needs bits = N (1-32), e.g. bits = 12 "
                                  "for 12-bit data stored in 16-bit files")
        window = table.get("dicom_window", True)
        if not isinstance(window, bool):
            raise ProbebenchError(f"{where}: [pixels] dicom_window must be true or false, not {window!r}")
        frame = table.get("dicom_frame")
        if frame is not None and frame not in ("first", "middle") and not (
                isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0):
            raise ProbebenchError(f"{where}: [pixels] dicom_frame must be \"first\", \"middle\" or a frame index "
                                  f">= 0, not {frame!r}")
        return cls(intensity=rule, percentiles=pct, bits=bits, dicom_window=window, dicom_frame=frame)


def check_finite(arr: np.ndarray) -> None:
    """Refuse NaN / inf pixels: they would silently become black or white after scaling."""
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{int(bad.sum())} non-finite pixel value(s) (NaN or inf), the first at {first}")


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:  # a constant image: all black, as no contrast exists to keep
        return np.zeros(arr.shape, np.uint8)
    out = (np.clip(arr, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


def to_uint8(arr: np.ndarray, rules: PixelRules) -> np.ndarray:
    """Map a deep (>8-bit integer or float) intensity array to uint8 by ``rules.intensity``."""
    check_finite(arr)
    a = np.asarray(arr, dtype=np.float64)
    if rules.intensity == "minmax":
        return _scale(a, float(a.min()), float(a.max()))
    if rules.intensity == "percentile":
        lo, hi = np.percentile(a, rules.percentiles)
        return _scale(a, float(lo), float(hi))
    if rules.intensity == "bits":
        return _scale(a, 0.0, float(2 ** int(rules.bits) - 1))
    if rules.intensity == "full16":
        return _scale(a, 0.0, 65535.0)
    raise ValueError(f"unknown intensity rule {rules.intensity!r}")


def window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) to uint8: LINEAR, LINEAR_EXACT or SIGMOID."""
    x = np.asarray(arr, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"WindowWidth {width} < 1 is not allowed for a LINEAR window")
        y = (x - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"WindowWidth {width} <= 0 is not allowed for a LINEAR_EXACT window")
        y = (x - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"WindowWidth {width} <= 0 is not allowed for a SIGMOID window")
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise ValueError(f"VOILUTFunction {function!r} is not one of LINEAR, LINEAR_EXACT, SIGMOID")
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _first(value) -> float:
    """WindowCenter/Width may be multi-valued (several presets): the first is the default view."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _count(ds, key: str, default: int) -> int:
    value = getattr(ds, key, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise ValueError(f"{key} {value!r} is not a number (a damaged or non-conformant header)") from None


def _frame(ds, arr: np.ndarray, rules: PixelRules) -> np.ndarray:
    """One frame of a multi-frame file, as the spec's ``[pixels] dicom_frame`` chooses (refused when unset)."""
    frames = _count(ds, "NumberOfFrames", 1)
    if frames <= 1:
        return arr
    if rules.dicom_frame is None:
        raise ValueError(f"multi-frame DICOM ({frames} frames): a sample is one 2D image; choose the frame with "
                         '[pixels] dicom_frame = "middle" (or "first", or an index) in the spec, or export the frames '
                         "as separate files")
    i = {"first": 0, "middle": frames // 2}.get(rules.dicom_frame, rules.dicom_frame)
    if not 0 <= i < frames:
        raise ValueError(f"[pixels] dicom_frame {i} is outside this file's {frames} frames")
    return arr[i]


def _palette(ds, arr: np.ndarray) -> np.ndarray:
    """PALETTE COLOR through the file's own lookup tables (pydicom's ``apply_color_lut``), as 8-bit RGB."""
    from pydicom.pixels import apply_color_lut

    rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # 8 or 16: the entries' depth
    return np.rint(rgb * (255.0 / (2 ** bits - 1))).astype(np.uint8)


def warning_kind(message: str) -> str:
    """A warning's kind: its text without quoted values, numbers and links, so that one kind is said once."""
    import re

    text = re.sub(r"<https?://[^>]*>|https?://\S+", "", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    return " ".join(re.sub(r"\d+", "N", text).split())[:160]


def read_dicom(path, rules: PixelRules = PixelRules(), warned: list | None = None) -> np.ndarray:
    """One DICOM image as uint8, (H, W) for grayscale or (H, W, 3) for colour.

    Grayscale: modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence), then the VOI LUT
    Sequence or WindowCenter/WindowWidth when present and ``rules.dicom_window``, else the spec's
    intensity rule (8-bit data with no rescale is kept as stored); ``MONOCHROME1`` is inverted so that
    high values are always bright. PALETTE COLOR through its lookup tables; RGB and YBR as RGB; a multi-frame
    file by ``rules.dicom_frame``. pydicom's warnings about non-conformant files are not printed: their kinds go
    to ``warned`` (``extract`` says each kind once, with a count), and a value that matters and cannot be read is
    an error naming it.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read_dicom(path, rules)
        finally:
            if warned is not None:
                warned.extend(dict.fromkeys(warning_kind(str(w.message)) for w in caught))


def _read_dicom(path, rules: PixelRules) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise ValueError(f"not a DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ValueError("DICOM file without pixel data (PixelData element missing)")
    _count(ds, "NumberOfFrames", 1)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # compressed transfer syntax without a decoder, truncated data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name, reason = getattr(syntax, "name", str(syntax)), " ".join(str(exc).split())
        if syntax is not None and getattr(syntax, "is_compressed", False):
            import importlib.util

            if any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm")):  # a decoder is here and failed
                raise ValueError(f"cannot decode pixel data compressed as {name}: the installed decoders failed "
                                 f"on it ({reason[:200]})") from exc
            raise ValueError(f"cannot decode pixel data compressed as {name}; install a decoder: "
                             f"{DICOM_DECODERS_HINT} ({reason[:200]})") from exc
        raise ValueError(f"cannot decode pixel data (transfer syntax {name}): {reason}") from exc
    arr = _frame(ds, arr, rules)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if _count(ds, "SamplesPerPixel", 1) == 3:  # RGB (pydicom converts YBR to RGB)
        return arr if arr.dtype == np.uint8 else to_uint8(arr, rules)
    if photometric == "PALETTE COLOR":
        return _palette(ds, arr)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"PhotometricInterpretation {photometric} is not supported (MONOCHROME1/2, RGB, YBR, "
                         "PALETTE COLOR)")
    rescaled = "ModalityLUTSequence" in ds or float(getattr(ds, "RescaleSlope", 1) or 1) != 1 \
        or float(getattr(ds, "RescaleIntercept", 0) or 0) != 0
    values = apply_modality_lut(arr, ds)
    if rules.dicom_window and "VOILUTSequence" in ds:
        out = apply_voi(values, ds)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        img = _scale(np.asarray(out, np.float64), 0.0, float(2 ** bits - 1))
    elif rules.dicom_window and "WindowCenter" in ds and "WindowWidth" in ds:
        img = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                     str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR"))
    elif arr.dtype == np.uint8 and not rescaled:
        img = arr
    else:
        img = to_uint8(values, rules)
    return 255 - img if photometric == "MONOCHROME1" else img
