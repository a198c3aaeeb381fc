"""A damaged cache is never served: fit refuses it naming the rows, extract recomputes exactly the damage."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import watch_chunks, write_image

from probebench.features.cache import read_features
from probebench.errors import ProbebenchError
from probebench.features.extract import extract
from probebench.train.fit import fit
from probebench.runs import read_run

OPTS = dict(weights="random", resize=40, crop=32, batch_size=4, chunk_size=8, workers=0, progress=False)


def chunk_file(store, c):
    """Where zarr v3 keeps chunk (c, 0) of ``features``: its default ``c/<i>/<j>`` key encoding."""
    path = store / "features" / "c" / str(c) / "0"
    assert path.is_file()
    return path


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_damaged_chunk_is_refused_then_recomputed_alone(tiny, tmp_path, damage, monkeypatch):
    spec, root = tiny
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    good = read_features(store).features.copy()
    target = chunk_file(store, 2)
    if damage == "deleted":
        target.unlink()
    else:
        target.write_bytes(b"\x00garbage" * 7)
    assert zarr.open_group(str(store), mode="r").attrs["complete"]  # the flag still says complete
    with pytest.raises(ProbebenchError, match=rf"feature cache {store}.*(8 row\(s\) hold non-finite features .*rows 16 "
                                              r"\(a/p008_0.png\)|unreadable chunk).*rerun the same `probebench extract`"):
        fit("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "runs", epochs=1,
            progress=False, **{k: OPTS[k] for k in ("weights", "resize", "crop")})
    recomputed = []
    watch_chunks(monkeypatch, recomputed.append)
    again = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    assert again == store and recomputed == [2]  # exactly the damaged chunk, nothing else
    repaired = read_features(store)
    assert np.array_equal(repaired.features, good)
    assert repaired.attrs["complete"] and repaired.attrs["repaired_chunks"] == [2]


def test_skipped_bad_images_are_not_damage(tiny, tmp_path, monkeypatch):
    spec, root = tiny
    (root / "tiny" / "a" / "p000_0.png").write_bytes(b"not an image")
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", skip_bad=True, **OPTS)
    recomputed = []
    watch_chunks(monkeypatch, recomputed.append)
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", skip_bad=True, **OPTS)
    assert recomputed == [] and len(read_features(store).features) == 39


def test_an_image_replaced_by_one_of_the_same_size_changes_the_key(tiny, tmp_path):
    """Uncompressed images of equal dimensions always have equal sizes: only the bytes tell them apart."""
    from PIL import Image

    from probebench.data.datasets import load_manifest

    spec, root = tiny
    folder = root / "tiny" / "b"
    for p in folder.glob("*.png"):
        p.unlink()
    for i, p in enumerate(sorted((root / "tiny" / "a").glob("*.png"))):
        Image.open(p).save(folder / f"p9{i:02d}_0.bmp")
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    target = folder / "p900_0.bmp"
    size = target.stat().st_size
    Image.fromarray(np.full((24, 24), 200, np.uint8)).save(target)
    assert target.stat().st_size == size  # the same byte size, another picture
    assert load_manifest(str(spec), root).hash() != read_features(store).attrs["manifest_hash"]
    fresh = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    assert fresh != store


def test_unchanged_files_are_not_read_twice(tiny, monkeypatch):
    from probebench.data import filehash
    from probebench.data.datasets import load_manifest

    monkeypatch.setattr(filehash, "RACY_NS", 0)  # files written a moment ago count as settled
    spec, root = tiny
    first = load_manifest(str(spec), root).hash()
    reads = []
    real = filehash.digest_file
    monkeypatch.setattr(filehash, "digest_file", lambda p: reads.append(p) or real(p))
    assert load_manifest(str(spec), root).hash() == first and reads == []  # a stat per file, no read
    (root / "tiny" / "a" / "p000_0.png").write_bytes((root / "tiny" / "a" / "p000_1.png").read_bytes())
    load_manifest(str(spec), root)
    assert [p.rsplit("/", 1)[-1] for p in reads] == ["p000_0.png"]  # only the changed file is read again


def test_a_weights_file_is_hashed_once_across_commands(tmp_path, monkeypatch):
    """The checksum is memoised on disk (a new process finds it), and a changed file is read again."""
    import hashlib

    from probebench.data import filehash
    from probebench.models.weights import sha256_file

    monkeypatch.setattr(filehash, "RACY_NS", 0)  # files written a moment ago count as settled
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x00" * 1000 + b"first")
    reads = []
    real = filehash.digest_file
    monkeypatch.setattr(filehash, "digest_file", lambda p: reads.append(p) or real(p))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() and len(reads) == 1
    assert filehash.memo_path().exists()  # on disk, so the next command's process finds it too
    (tmp_path / "new.pth").write_bytes(b"\x00" * 1000 + b"other")  # same size, a new file (a new download)
    (tmp_path / "new.pth").replace(path)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() and len(reads) == 2


def test_a_replaced_image_recomputes_only_its_chunk_and_equals_a_fresh_extraction(tiny, tmp_path, monkeypatch):
    """The changed image gets a new cache key (content hash); the new store copies every chunk whose images are
    unchanged from the old one and computes only the chunk holding the replacement, bit for bit as a fresh
    extraction; fit on it gives the same run as on the fresh cache."""
    spec, root = tiny
    first = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    sample = "b/p105_1.png"  # row 30 of 40 (sorted ids): chunk 3 of 5
    write_image(root / "tiny" / sample, seed=999)
    computed = []
    watch_chunks(monkeypatch, computed.append)
    second = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", **OPTS)
    assert second != first and computed == [3]
    fresh = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "fresh", **OPTS)
    a, b = read_features(second), read_features(fresh)
    assert np.array_equal(a.features, b.features) and list(a.sample_ids).index(sample) // 8 == 3
    assert not np.array_equal(read_features(first).features, a.features)
    assert zarr.open_group(str(second), mode="r").attrs["reused"] == {"from": str(first), "chunks": [0, 1, 2, 4]}
    fit_opts = dict(epochs=3, progress=False, **{k: OPTS[k] for k in ("weights", "resize", "crop")})
    runs = [read_run(fit("resnet50", str(spec), data_root=root, cache_dir=tmp_path / c, runs_dir=tmp_path / f"r{c}",
                         **fit_opts)) for c in ("c", "fresh")]
    assert np.array_equal(runs[0].proba, runs[1].proba)
