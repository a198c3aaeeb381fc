"""Shared fixtures: offline, an empty torch hub, and small synthetic datasets in the release layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No downloads, and a private $TORCH_HOME so a developer's own weights never leak into tests."""
    monkeypatch.setenv("PROBEBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("PROBEBENCH_DATA", raising=False)
    monkeypatch.setenv("PROBEBENCH_HASH_CACHE", str(tmp_path / "file-digests.sqlite"))
    monkeypatch.chdir(tmp_path)
    from probebench.data import datasets

    datasets._SAID.clear()  # notes are said once per process; each test starts afresh


def write_image(path: Path, seed: int, size: int = 24, mode: str = "L") -> Path:
    """A small random image whose brightness depends on the seed's parity (so classes differ a little)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 128, (size, size)).astype(np.uint8) + (seed % 2) * 100
    img = Image.fromarray(arr, mode="L")
    if mode != "L":
        img = img.convert(mode)
    img.save(path)
    return path


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_SPEC = """
name = "tiny"
kind = "folder"
root = "tiny"
classes = ["a", "b"]
group = "patient"
[folder]
group_regex = '^(?P<group>p\\d+)_'
[split]
test_fraction = 0.3
val_fraction = 0.25
seed = 0
"""


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, Path]:
    """(spec path, data root) of a 2-class folder dataset: 10 patients per class, 2 images each."""
    root = tmp_path / "data"
    i = 0
    for c, name in enumerate(["a", "b"]):
        for p in range(10):
            for k in range(2):
                write_image(root / "tiny" / name / f"p{c}{p:02d}_{k}.png", seed=2 * i + c)
                i += 1
    return write_spec(tmp_path / "tiny.toml", TINY_SPEC), root


def make_chest_xray(root: Path) -> Path:
    """Kaggle layout as released: patients numbered afresh in each shipped split (``person1`` and ``IM-0001``
    exist in train and in test, and the val folder reuses train's names), plus release clutter and the
    zip's nested ``chest_xray/chest_xray`` copy."""
    base = root / "chest_xray"
    for split, pids in (("train", range(1, 7)), ("val", (1,)), ("test", range(1, 4))):
        for cls in ("NORMAL", "PNEUMONIA"):
            for pid in pids:
                if cls == "NORMAL":
                    names = [f"IM-{pid:04d}-000{1 + (split == 'val')}.jpeg", f"NORMAL2-IM-{pid:04d}-0001.jpeg"]
                else:
                    kind = "virus" if split == "test" else "bacteria"
                    names = [f"person{pid}_{kind}_{pid * 3 + (split == 'val')}.jpeg",
                             f"person{pid}_{kind}_{pid * 3 + 1 + (split == 'val')}.jpeg"]
                seed = {"train": 100, "val": 200, "test": 300}[split] + pid
                for k, name in enumerate(names):
                    write_image(base / split / cls / name, seed=seed * 10 + k + (cls == "PNEUMONIA"), mode="RGB")
    (base / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (base / "train" / "PNEUMONIA" / "Thumbs.db").write_bytes(b"junk")
    (base / "train" / "__MACOSX" / "NORMAL").mkdir(parents=True)
    (base / "train" / "__MACOSX" / "NORMAL" / "._IM-0100-0001.jpeg").write_bytes(b"junk")
    (base / "test" / "notes.xlsx").write_bytes(b"junk")
    write_image(base / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg", seed=1, mode="RGB")  # zip's copy
    return base


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                slope: float | None = None, intercept: float | None = None, center=None, width=None,
                voi_function: str | None = None, frames: int = 1, syntax=None, **elements) -> Path:
    """A single-frame (or multi-frame) DICOM file written with pydicom, as a scanner or PACS export would."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:] if pixels.ndim == 2 or frames > 1 else pixels.shape[:2]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if voi_function:
        ds.VOILUTFunction = voi_function
    for key, value in elements.items():
        setattr(ds, key, value)
    if meta.TransferSyntaxUID.is_compressed:  # a stand-in frame: enough to need (and fail in) a decoder
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixels.tobytes()])
    else:
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def fake_run(runs_dir: Path, y_true, proba, *, dataset="d", model="m", mode="frozen", head="linear", groups=None,
             val_accuracy: float | None = 0.5, random_weights=False, seed=0, **config_extra) -> Path:
    """A run folder written by probebench's own writer from given predictions: report tests need no model."""
    from probebench.runs import write_run

    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=float)
    k = proba.shape[1]
    ids = [f"s{i:03d}" for i in range(len(y_true))]
    config = {"mode": mode, "path": "test", "dataset": dataset, "model": model, "head": head,
              "classes": [f"c{i}" for i in range(k)], "group_kind": "patient", "seed": seed,
              "weights": {"sha256": "random" if random_weights else "0" * 64,
                          "label": "random weights" if random_weights else "test weights"},
              "counts": {s: [10] * k for s in ("train", "val", "test")}, "versions": {"probebench": "test"},
              **config_extra}
    metrics = {"val_accuracy": val_accuracy} if val_accuracy is not None else {}
    return write_run(runs_dir, config, sample_ids=ids, groups=groups if groups is not None else ids, y_true=y_true,
                     proba=proba, history=[], metrics=metrics)


def watch_chunks(monkeypatch, callback) -> None:
    """Have ``extract`` call ``callback(chunk)`` after each chunk it writes (the chunk is on disk by then)."""
    import probebench.features.extract as ex

    monkeypatch.setattr(ex, "chunk_written", callback)
