"""CONTRIBUTING's four recipes, each followed once here exactly as written: a new metric, head, dataset layout and
model family, each added by what the recipe names alone (one entry, one class), then used end to end and checked
against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def clean_metrics():
    """``register_metric`` changes the metric tables for the process: put them back after the test."""
    from probebench.stats import metrics

    saved = (dict(metrics.FROM_CONFUSION), list(metrics.ALL_METRICS), dict(metrics.LABELS),
             set(metrics.LOWER_IS_BETTER))
    yield metrics
    metrics.FROM_CONFUSION.clear()
    metrics.FROM_CONFUSION.update(saved[0])
    metrics.ALL_METRICS[:] = saved[1]
    metrics.LABELS.clear()
    metrics.LABELS.update(saved[2])
    metrics.LOWER_IS_BETTER.clear()
    metrics.LOWER_IS_BETTER.update(saved[3])


def test_recipe_a_metric(clean_metrics, tmp_path):
    """Matthews' correlation from the confusion counts: equal to scikit-learn on the whole set and per replicate,
    and reported with an interval like any built-in metric."""
    from sklearn.metrics import matthews_corrcoef

    from conftest import fake_run
    from probebench.report.tables import ReportOptions, collect_rows
    from probebench.validate import problem

    def mcc(cm):  # (R, K, K) counts [true, predicted]: Gorodkin's K-class form, as scikit-learn computes it
        s, c = cm.sum(axis=(1, 2)), np.trace(cm, axis1=1, axis2=2)
        t, p = cm.sum(axis=2), cm.sum(axis=1)
        den = np.sqrt((s ** 2 - (p ** 2).sum(1)) * (s ** 2 - (t ** 2).sum(1)))
        return np.divide(c * s - (t * p).sum(1), den, out=np.zeros_like(s), where=den > 0)

    clean_metrics.register_metric("mcc", "MCC", mcc)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80)
    pred = np.where(rng.random(80) < 0.7, y, rng.integers(0, 3, 80))
    assert clean_metrics.point_metrics(y, pred, 3)["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    w = rng.multinomial(80, np.full(80, 1 / 80), size=5)  # five bootstrap replicates as weights
    got = clean_metrics.replicate_metrics(y, pred, 3, weights=w)["mcc"]
    want = [matthews_corrcoef(np.repeat(y, r), np.repeat(pred, r)) for r in w]
    assert np.allclose(got, want, atol=1e-12)
    assert problem("metrics", ["mcc"]) is None
    fake_run(tmp_path / "runs", y, np.eye(3)[pred] * 0.8 + 0.2 / 3)
    (row,) = collect_rows(tmp_path / "runs", opts=ReportOptions.of(metrics="mcc", resamples=200))
    assert row.values["mcc"].value == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    assert row.values["mcc"].low < row.values["mcc"].value < row.values["mcc"].high


def test_recipe_a_head(monkeypatch, tiny, tmp_path):
    """A nearest-centroid head: one class with the Head contract, one HEADS entry; fit trains it on a store and
    its test predictions are scikit-learn's NearestCentroid's."""
    from sklearn.neighbors import NearestCentroid

    from probebench import extract, fit
    from probebench.features.cache import read_features
    from probebench.runs import read_run
    from probebench.train import heads

    class CentroidHead(heads.Head):
        name = "centroid"
        takes = ("seed",)

        def __init__(self, seed: int = 0):
            self.seed = seed

        def params(self):
            return {"metric": "euclidean"}

        def describe(self):
            return "centroid"

        def _fit(self, x, y, x_val, y_val, n_classes, on_epoch):
            self.centroids_ = np.stack([x[y == c].mean(0) for c in range(n_classes)])
            self.history_, self.best_epoch_, self.selection_ = [], None, None

        def _proba(self, x):
            d = ((x[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
            return np.eye(len(self.centroids_))[d.argmin(1)]

    monkeypatch.setitem(heads.HEADS, "centroid", CentroidHead)
    spec, root = tiny
    opts = dict(data_root=root, weights="random", resize=32, crop=32)
    store = extract("resnet50", str(spec), workers=0, progress=False, **opts)
    run = read_run(fit("resnet50", str(spec), head="centroid", runs_dir=tmp_path / "runs", progress=False, **opts))
    f = read_features(store)
    train, test = f.split == "train", f.split == "test"
    want = NearestCentroid().fit(f.features[train], f.labels[train]).predict(f.features[test])
    order = {s: i for i, s in enumerate(f.sample_ids[test])}
    assert run.record.head == "centroid"
    assert np.array_equal(run.y_pred, want[[order[s] for s in run.sample_ids]])


class NpyLayout:
    """``kind = "npy"``: one (N, H, W) uint8 stack and a labels file, as some challenge releases ship them."""

    name = "npy"
    files = False
    keys = {"images": (lambda v: isinstance(v, str) and v.endswith(".npy"), "a .npy file"),
            "labels": (lambda v: isinstance(v, str), "a text file of one class name per line")}

    def check(self, table, fail):
        pass

    def labels_named(self, table):
        return []

    def rows(self, spec, root, junk, notes):
        from probebench.data.layouts import Row

        labels = (root / spec.layout["labels"]).read_text().split()
        stack = root / spec.layout["images"]
        return [Row(f"{i:04d}", f"{stack}::npy::{i}", spec.classes.index(c), f"{i:04d}", None)
                for i, c in enumerate(labels)], {"npy": str(stack)}

    def owns(self, path):
        return "::npy::" in path

    def decode(self, path, rules):
        file, _, i = path.split("::")
        return Image.fromarray(np.load(file, mmap_mode="r")[int(i)])


def test_recipe_a_layout(monkeypatch, tmp_path):
    """A layout for a .npy stack: one class, one LAYOUTS entry; specs of its kind are checked with its keys, its
    manifest has the file's labels, and its images decode to the stored pixels."""
    from probebench.data.datasets import load_manifest
    from probebench.data.layouts import LAYOUTS
    from probebench.errors import ProbebenchError
    from probebench.features.images import load_image

    monkeypatch.setitem(LAYOUTS, "npy", NpyLayout())
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 256, (12, 10, 10), dtype=np.uint8)
    (tmp_path / "data" / "st").mkdir(parents=True)
    np.save(tmp_path / "data" / "st" / "x.npy", stack)
    names = ["no", "yes"] * 6
    (tmp_path / "data" / "st" / "y.txt").write_text("\n".join(names))
    spec = tmp_path / "st.toml"
    spec.write_text('kind = "npy"\nroot = "st"\nclasses = ["no", "yes"]\n[npy]\nimages = "x.npy"\nlabels = "y.txt"\n'
                    "[split]\ntest_fraction = 0.34\nval_fraction = 0.25\n")
    m = load_manifest(str(spec), tmp_path / "data")
    assert [m.classes[k] for k in m.labels] == names and set(m.splits) == {"train", "val", "test"}
    assert np.array_equal(np.asarray(load_image(m.paths[5])), stack[5])
    spec.write_text(spec.read_text().replace('labels = "y.txt"', 'labels = "y.txt"\nlabelz = 1'))
    with pytest.raises(ProbebenchError, match=r"st.toml, line 7: unknown keys \['labelz'\] in \[npy\]"):
        load_manifest(str(spec), tmp_path / "data")


def test_recipe_a_model_family(monkeypatch, tiny, tmp_path):
    """A family whose feature is each channel's mean: one module's class, one FAMILIES entry; ``extract`` caches
    it under its own name and the stored features are the images' mean brightness, computed here with PIL."""
    from torch import nn

    from probebench import extract, fit
    from probebench.features.cache import read_features
    from probebench.models.config import Family, ModelConfig, Preprocessing
    from probebench.models.registry import FAMILIES

    class MeanFamily(Family):
        name, prefix = "mean", "mean:"

        def config_for(self, name):
            return ModelConfig(name, self, {}, {"channel_mean": 3}, "channel_mean", "", "", "none",
                               Preprocessing(resize=24, crop=24, mean=(0.0,) * 3, std=(1.0,) * 3))

        def build(self, config, img_size):
            return nn.Identity()

        def features(self, backbone, config, tap, images):
            return backbone(images).mean(dim=(2, 3))

    monkeypatch.setitem(FAMILIES, "mean", MeanFamily())
    spec, root = tiny
    store = extract("mean:pixels", str(spec), data_root=root, weights="random", workers=0, progress=False)
    f = read_features(store)
    assert store.parent.name == "mean%3Apixels"
    want = [np.asarray(Image.open(root / "tiny" / sid), dtype=np.float64).mean() / 255
            for sid in f.sample_ids]
    assert np.allclose(f.features, np.repeat(np.array(want)[:, None], 3, axis=1), atol=1e-6)
    run = fit("mean:pixels", str(spec), data_root=root, weights="random", runs_dir=tmp_path / "runs", epochs=2,
              progress=False)
    from probebench.runs import read_run

    assert read_run(run).record.model == "mean:pixels" and read_run(run).record.tap == "channel_mean"
