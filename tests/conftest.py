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
    monkeypatch.chdir(tmp_path)


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
    """Kaggle layout with patient-style names and release clutter."""
    base = root / "chest_xray"
    for split, n in (("train", 6), ("val", 1), ("test", 3)):
        for cls in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                pid = {"train": 100, "val": 200, "test": 300}[split] + i
                if cls == "NORMAL":
                    names = [f"IM-{pid:04d}-0001.jpeg", f"NORMAL2-IM-{pid:04d}-0001.jpeg"]
                else:
                    names = [f"person{pid}_bacteria_{pid * 3}.jpeg", f"person{pid}_virus_{pid * 3 + 1}.jpeg"]
                for k, name in enumerate(names):
                    write_image(base / split / cls / name, seed=pid * 10 + k + (cls == "PNEUMONIA"), mode="RGB")
    (base / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (base / "train" / "PNEUMONIA" / "Thumbs.db").write_bytes(b"junk")
    (base / "train" / "__MACOSX" / "NORMAL").mkdir(parents=True)
    (base / "train" / "__MACOSX" / "NORMAL" / "._IM-0100-0001.jpeg").write_bytes(b"junk")
    (base / "test" / "notes.xlsx").write_bytes(b"junk")
    return base
