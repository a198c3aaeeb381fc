"""Extraction into the zarr cache: contents, resume after an interrupt, key invalidation, bad images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from probebench.features.cache import read_features
from probebench.errors import ProbebenchError
from probebench.features.extract import extract

from conftest import watch_chunks, write_image

OPTS = dict(weights="random", resize=40, crop=32, batch_size=4, chunk_size=8, workers=0, progress=False)


def test_extract_writes_a_complete_store(tiny, tmp_path):
    spec, root = tiny
    path = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "cache", **OPTS)
    assert path.parent == tmp_path / "cache" / "tiny" / "resnet50" and path.suffix == ".zarr"
    store = zarr.open_group(str(path), mode="r")
    attrs = dict(store.attrs)
    assert attrs["complete"] and attrs["complete_chunks"] == list(range(5))
    assert store["features"].shape == (40, 2048) and store["features"].chunks == (8, 2048)
    for key in ("model", "weights", "tap", "preprocessing", "precision", "manifest_hash", "versions", "device"):
        assert key in attrs
    assert attrs["weights"]["sha256"] == "random" and attrs["preprocessing"]["crop"] == 32
    feats = read_features(path)
    assert np.isfinite(feats.features).all()
    assert set(feats.split) == {"train", "val", "test"}
    assert feats.sample_ids[0] == "a/p000_0.png" and feats.groups[0] == "p000"


def test_features_equal_a_direct_forward_pass(tiny, tmp_path):
    from probebench.features.images import make_transform, preprocess
    from probebench.models.config import Preprocessing
    from probebench.models.registry import create_model

    spec, root = tiny
    feats = read_features(extract("dinov2_s", str(spec), data_root=root, cache_dir=tmp_path / "c",
                                  **{**OPTS, "crop": 28}))
    model = create_model("dinov2_s", "random", img_size=28)
    tf = make_transform(Preprocessing(resize=40, crop=28, interpolation="bicubic"))
    x = torch.stack([preprocess(root / "tiny" / sid, tf) for sid in feats.sample_ids[:3]])
    with torch.inference_mode():
        assert np.allclose(model(x).numpy(), feats.features[:3], atol=1e-5)


def interrupted_extract(spec, root, cache_dir, monkeypatch, after: int = 2) -> list[int]:
    """An extraction interrupted (KeyboardInterrupt) once ``after`` chunks are on disk; returns those chunks."""
    seen: list[int] = []

    def interrupt(chunk):
        seen.append(chunk)
        if len(seen) == after:
            raise KeyboardInterrupt

    watch_chunks(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract("resnet50", str(spec), data_root=root, cache_dir=cache_dir, **OPTS)
    return seen


def test_resume_after_interrupt_computes_only_missing_chunks(tiny, tmp_path, monkeypatch):
    spec, root = tiny
    full = read_features(extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "a", **OPTS)).features

    first = interrupted_extract(spec, root, tmp_path / "b", monkeypatch)
    seen = []
    watch_chunks(monkeypatch, seen.append)
    path = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "b", **OPTS)
    assert sorted(first + seen) == list(range(5)) and len(seen) == 3  # only the missing chunks
    assert np.array_equal(read_features(path).features, full)  # identical to an uninterrupted run
    seen.clear()
    watch_chunks(monkeypatch, seen.append)
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "b", **OPTS)
    assert seen == []  # complete: nothing recomputed
    watch_chunks(monkeypatch, seen.append)
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "b", force=True, **OPTS)
    assert len(seen) == 5


def test_cache_key_changes_with_everything_that_changes_numbers(tiny, tmp_path):
    spec, root = tiny
    cache = tmp_path / "cache"
    base = extract("resnet50", str(spec), data_root=root, cache_dir=cache, **OPTS)
    variants = [
        extract("resnet50", str(spec), data_root=root, cache_dir=cache, **{**OPTS, "crop": 24}),
        extract("resnet50", str(spec), data_root=root, cache_dir=cache, **{**OPTS, "weights": "random:1"}),
        extract("resnet50", str(spec), data_root=root, cache_dir=cache, store_dtype="float16", **OPTS),
    ]
    write_image(root / "tiny" / "a" / "p000_0.png", seed=999, size=30)  # the data changed
    variants.append(extract("resnet50", str(spec), data_root=root, cache_dir=cache, **OPTS))
    assert len({base, *variants}) == 5
    assert zarr.open_group(str(variants[2]), mode="r")["features"].dtype == np.float16


def test_weights_file_checksum_is_part_of_the_key(tiny, tmp_path):
    import torchvision

    spec, root = tiny
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        w = tmp_path / f"w{seed}.pth"
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), w)
        paths.append(extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c",
                             **{**OPTS, "weights": str(w)}))
    assert paths[0] != paths[1]
    attrs = dict(zarr.open_group(str(paths[0]), mode="r").attrs)
    assert len(attrs["weights"]["sha256"]) == 64 and attrs["weights"]["label"] == "IMAGENET1K_V1"


def test_corrupt_image_is_named_or_skipped_and_recorded(tiny, tmp_path, capsys):
    spec, root = tiny
    bad = root / "tiny" / "b" / "p105_1.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ProbebenchError, match=r"cannot read image .*p105_1.png.*--skip-bad"):
        extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    capsys.readouterr()
    path = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", skip_bad=True, **OPTS)
    said = capsys.readouterr().err  # said, not only recorded
    assert "note: 1 of 40 image(s) (2%) could not be read and were skipped (--skip-bad)" in said
    assert "UnidentifiedImageError" in said and str(bad) in said
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    assert [s["sample_id"] for s in attrs["skipped"]] == ["b/p105_1.png"] and attrs["complete"]
    (record,) = attrs["skipped"]
    assert record["path"] == str(bad) and "UnidentifiedImageError" in record["error"]
    feats = read_features(path)
    assert len(feats.labels) == 39 and "b/p105_1.png" not in feats.sample_ids and np.isfinite(feats.features).all()


def test_fsspec_url_cache_root(tiny, tmp_path):
    spec, root = tiny
    url = f"file://{tmp_path}/url-cache"
    store = extract("resnet50", str(spec), data_root=root, cache_dir=url, **OPTS)
    assert isinstance(store, str) and store.startswith("file://") and store.endswith(".zarr")
    local = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "local", **OPTS)
    assert np.array_equal(read_features(store).features, read_features(local).features)
    from probebench.train.fit import fit

    run = fit("resnet50", str(spec), data_root=root, cache_dir=url, runs_dir=tmp_path / "runs", epochs=2,
              weights="random", resize=40, crop=32, progress=False)
    assert (run / "predictions.csv").is_file()


def test_draft_decoding_is_a_recorded_option_with_nearly_equal_features(tmp_path):
    from PIL import Image

    from conftest import write_spec

    rng = np.random.default_rng(0)
    for i in range(6):
        folder = tmp_path / "data" / "big" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        small = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((800, 800), Image.BICUBIC).save(folder / f"{i}.jpg", quality=92)
    spec = write_spec(tmp_path / "big.toml", 'kind = "folder"\nroot = "big"\nclasses = ["a", "b"]\n'
                                              '[split]\ntest_fraction = 0.34\n')
    opts = dict(data_root=tmp_path / "data", cache_dir=tmp_path / "c", **{**OPTS, "resize": 64, "crop": 56})
    full = extract("resnet50", str(spec), **opts)
    fast = extract("resnet50", str(spec), draft=True, **opts)
    assert full != fast and zarr.open_group(str(fast), mode="r").attrs["preprocessing"]["draft"] is True
    a, b = read_features(full).features, read_features(fast).features
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98 and not np.array_equal(a, b)


def _torchrun_extract(spec, root, cache_dir):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "probebench", "extract", "--model", "resnet50", "--dataset", str(spec),
         "--data-root", str(root), "--cache-dir", str(cache_dir), "--weights", "random", "--resize", "40",
         "--crop", "32", "--batch-size", "4", "--chunk-size", "8", "--workers", "0"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_ranks_fill_one_store_like_one_process(tiny, tmp_path):
    spec, root = tiny
    single = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "one", **OPTS)
    res = _torchrun_extract(spec, root, tmp_path / "two")
    assert res.returncode == 0, res.stderr[-3000:]
    two = tmp_path / "two" / single.relative_to(tmp_path / "one")
    attrs = dict(zarr.open_group(str(two), mode="r").attrs)
    assert attrs["complete"] and attrs["world_size"] == 2 and attrs["complete_chunks"] == list(range(5))
    a, b = read_features(two).features, read_features(single).features
    assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()  # equal up to float rounding (1 vs 2 threads per process)


@pytest.mark.slow
def test_torchrun_resumes_an_interrupted_extraction_computing_only_the_missing_chunks(tiny, tmp_path, monkeypatch):
    """Two chunks done by an interrupted run; two ranks then compute the other three and leave those two alone."""
    spec, root = tiny
    single = read_features(extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "one", **OPTS))

    seen = interrupted_extract(spec, root, tmp_path / "two", monkeypatch)
    path = next((tmp_path / "two").rglob("*.zarr"))
    store = zarr.open_group(str(path), mode="r+")
    assert not store.attrs["complete"] and sorted(np.flatnonzero(store["chunk_done"][:])) == sorted(seen)
    sentinel = 7.0  # a finite mark: a rank that recomputed a done chunk would overwrite it
    for c in seen:
        store["features"][c * 8:(c + 1) * 8] = np.full((8, 2048), sentinel, np.float32)
    res = _torchrun_extract(spec, root, tmp_path / "two")
    assert res.returncode == 0, res.stderr[-3000:]
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    assert attrs["complete"] and attrs["world_size"] == 2 and attrs["complete_chunks"] == list(range(5))
    feats = zarr.open_group(str(path), mode="r")["features"][:]
    for c in range(5):
        rows = slice(c * 8, (c + 1) * 8)
        if c in seen:
            assert (feats[rows] == sentinel).all(), f"chunk {c} was done before the resume but was recomputed"
        else:
            b = single.features[rows]
            assert np.abs(feats[rows] - b).max() < 1e-4 * np.abs(b).max(), f"chunk {c} differs from one process"


def test_the_imagenet_logits_layer_is_part_of_the_cache_key(tiny, tmp_path):
    """Two different linear4 heads on the same backbone are two different features."""
    import torch

    from probebench.features.spec import resolve_job

    spec, root = tiny
    torch.save({"w": torch.zeros(1)}, tmp_path / "backbone.pth")  # only hashed here, never loaded
    keys = []
    for i in range(2):
        torch.save({"weight": torch.full((1000, 1920), float(i)), "bias": torch.zeros(1000)}, tmp_path / f"h{i}.pth")
        job = resolve_job("dinov2_s", str(spec), data_root=root, weights=str(tmp_path / "backbone.pth"),
                          tap="imagenet_logits", head_weights=str(tmp_path / f"h{i}.pth"))
        keys.append(job.request.key)
        assert job.request.key_material()["head_sha256"] == job.request.weights["head_sha256"]
    cls = resolve_job("dinov2_s", str(spec), data_root=root, weights=str(tmp_path / "backbone.pth"))
    assert keys[0] != keys[1] and cls.request.key not in keys and "head_sha256" not in cls.request.key_material()


def test_interpolation_is_an_option_and_part_of_the_key(tiny):
    """The study resized every model bilinearly; DINOv2's default is bicubic. --interpolation bilinear gives a
    DINOv2 transform equal to torchvision's own bilinear pipeline, and another cache key."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from probebench.errors import ProbebenchError
    from probebench.features.spec import resolve_job
    from probebench.features.images import make_transform

    spec, root = tiny
    default = resolve_job("dinov2_s", str(spec), data_root=root, weights="random")
    bilinear = resolve_job("dinov2_s", str(spec), data_root=root, weights="random", interpolation="bilinear")
    assert default.config.preprocessing.interpolation == "bicubic"
    assert bilinear.config.preprocessing.interpolation == "bilinear" and bilinear.request.key != default.request.key
    pre = bilinear.config.preprocessing
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize(pre.resize, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(pre.crop),
                           T.ToTensor(), T.Normalize(pre.mean, pre.std)])(img)
    assert torch.allclose(make_transform(pre)(img), reference, atol=1e-5)
    with pytest.raises(ProbebenchError, match="--interpolation must be one of bilinear, bicubic, not 'nearest'"):
        resolve_job("dinov2_s", str(spec), data_root=root, weights="random", interpolation="nearest")
