"""A damaged cache is never served: fit refuses it naming the rows, extract recomputes exactly the damage."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from probebench.cache import read_features
from probebench.errors import ProbebenchError
from probebench.extract import extract
from probebench.fit import fit

OPTS = dict(weights="random", resize=40, crop=32, batch_size=4, chunk_size=8, workers=0, progress=False)


def chunk_file(store, c):
    """Where zarr v3 keeps chunk (c, 0) of ``features``: its default ``c/<i>/<j>`` key encoding."""
    path = store / "features" / "c" / str(c) / "0"
    assert path.is_file()
    return path


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_damaged_chunk_is_refused_then_recomputed_alone(tiny, tmp_path, damage):
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
    again = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", on_chunk=recomputed.append,
                    **OPTS)
    assert again == store and recomputed == [2]  # exactly the damaged chunk, nothing else
    repaired = read_features(store)
    assert np.array_equal(repaired.features, good)
    assert repaired.attrs["complete"] and repaired.attrs["repaired_chunks"] == [2]


def test_skipped_bad_images_are_not_damage(tiny, tmp_path):
    spec, root = tiny
    (root / "tiny" / "a" / "p000_0.png").write_bytes(b"not an image")
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", skip_bad=True, **OPTS)
    recomputed = []
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", skip_bad=True,
            on_chunk=recomputed.append, **OPTS)
    assert recomputed == [] and len(read_features(store).features) == 39
