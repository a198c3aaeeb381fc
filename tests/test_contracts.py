"""Every entry of a plug-in table keeps its contract: the model families (``registry.FAMILIES``), the heads
(``heads.HEADS``) and the dataset layouts (``layouts.LAYOUTS``). A new entry without a case here fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from probebench.models.registry import FAMILIES, REGISTRY, create_model, get_config

def _hf_snapshot(tmp_path) -> str:
    """A tiny Hugging Face DINOv2 snapshot in the official format (config.json + model.safetensors)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                               intermediate_size=64, image_size=28, patch_size=14))
    model.save_pretrained(tmp_path / "hf-snapshot")
    return f"hf:{tmp_path / 'hf-snapshot'}"


def _open_clip_folder(tmp_path) -> str:
    """A tiny open_clip model folder as the hub holds them (open_clip_config.json + weights)."""
    open_clip = pytest.importorskip("open_clip")
    import json

    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}}))
    torch.save(open_clip.create_model(f"local-dir:{folder}").state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"open_clip:{folder}"


# family -> (a model of it, or a function of tmp_path that makes one; architecture changes that make it tiny; crop)
FAMILY_CASES = {
    "torchvision": ("resnet50", None, 32),
    "dinov2": ("dinov2_s", {"embed_dim": 32, "depth": 4, "num_heads": 2}, 28),
    "timm": ("timm:test_vit", None, 32),
    "hf": (_hf_snapshot, None, 28),
    "open_clip": (_open_clip_folder, None, 32),
}


def test_every_family_has_a_contract_case():
    assert set(FAMILY_CASES) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_contract(family, tmp_path):
    name, arch, crop = FAMILY_CASES[family]
    name = name(tmp_path) if callable(name) else name
    config = get_config(name)
    assert config.family is FAMILIES[family] and config.default_tap in config.taps
    assert (FAMILIES[family].prefix is not None) == (name not in REGISTRY)  # prefixed names are not table entries
    for tap in config.taps if family != "dinov2" else ("cls", "cls_patchmean", "cls4_patchmean"):
        model = create_model(name, "random:3", tap=tap, img_size=crop, arch_overrides=arch)
        assert model.feature_dim == (model.config.taps[tap] or model.feature_dim)  # timm states its dimension on build
        x = torch.rand(2, 3, crop, crop)
        with torch.no_grad():
            a, b = model(x), model(x)
        assert a.shape == (2, model.feature_dim) and torch.isfinite(a).all() and torch.equal(a, b)
        again = create_model(name, "random:3", tap=tap, img_size=crop, arch_overrides=arch)
        with torch.no_grad():  # a seeded random backbone is the same backbone
            assert torch.equal(again(x), a)
    layer = FAMILIES[family].finetune_layer(model.config)
    if layer is not None:  # the replaced layer's input is the feature tap
        assert model.backbone.get_submodule(layer).in_features == model.feature_dim
    assert isinstance(FAMILIES[family].channels_last, bool)


def test_names_are_resolved_by_prefix_or_table():
    from probebench.models.registry import name_problem

    assert name_problem("resnet50") is None and name_problem("timm:hf-hub:org/repo") is None
    assert "expected timm:hf-hub:<org>/<repo>" in name_problem("timm:hf-hub:nothing")
    assert "did you mean" in name_problem("resnet5") and "timm:<name>" in name_problem("resnet5")
    assert np.all([get_config(n).name == n for n in REGISTRY])


# ---------------------------------------------------------------- heads

def _blobs(n=60, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = (rng.normal(size=(n, d)) + 3 * np.eye(k, d)[y]).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", ["linear", "mlp", "study_mlp", "logreg", "knn"])
def test_head_contract(name):
    from sklearn.base import clone

    from probebench.train.heads import HEADS

    assert set(HEADS) == {"linear", "mlp", "study_mlp", "logreg", "knn"}  # a new head needs a case here
    options = {"epochs": 20, "lr": 0.05} if "lr" in HEADS[name].takes else {}
    head = HEADS[name](seed=1, **options, **({"hidden": 8} if name == "mlp" else {}))
    twin = clone(head)  # scikit-learn's own rule: every parameter is an __init__ argument stored as is
    assert type(twin) is type(head) and twin.get_params() == head.get_params() and twin is not head
    assert set(head.takes) <= set(head.get_params())
    before = set(vars(head))
    x, y = _blobs()
    assert head.fit(x[:40], y[:40], x[40:], y[40:], 3) is head
    learned = set(vars(head)) - before
    assert learned >= {"history_", "best_epoch_", "selection_"} and all(a.endswith("_") for a in learned)
    proba = head.predict_proba(x[40:])
    assert proba.shape == (20, 3) and np.allclose(proba.sum(1), 1) and (proba >= 0).all()
    assert (proba.argmax(1) == y[40:]).mean() > 0.6  # separable blobs are learned
    again = clone(head).fit(x[:40], y[:40], x[40:], y[40:], 3)
    assert np.array_equal(again.predict_proba(x[40:]), proba)  # seeded: the same head twice


# ---------------------------------------------------------------- dataset layouts

TRUTH = [("p0", "a"), ("p0", "b"), ("p1", "a"), ("p1", "b"), ("p2", "a"), ("p2", "b")]  # (group, class) per image


def _folder_case(root):
    from conftest import write_image

    for i, (g, c) in enumerate(TRUTH):
        write_image(root / c / f"{g}_{i}.png", i, size=12)
    return {"group_regex": "^(?P<group>p\\d)_"}


def _csv_case(root):
    from conftest import write_image

    lines = ["path,label,patient"]
    for i, (g, c) in enumerate(TRUTH):
        write_image(root / "img" / f"{i}.png", i, size=12)
        lines.append(f"img/{i}.png,{c},{g}")
    (root / "t.csv").write_text("\n".join(lines) + "\n")
    return {"file": "t.csv", "group_column": "patient"}


def _hdf5_case(root):
    import h5py

    root.mkdir(parents=True)
    with h5py.File(root / "d.h5", "w") as fh:
        fh["x"] = np.stack([np.full((12, 12), 40 * i, np.uint8) for i in range(len(TRUTH))])
        fh["y"] = np.array(["ab".index(c) for _, c in TRUTH])
        fh["g"] = np.array([g.encode() for g, _ in TRUTH])
    return {"file": "d.h5", "images": "x", "labels": "y", "groups": "g"}


LAYOUT_CASES = {"folder": _folder_case, "csv": _csv_case, "hdf5": _hdf5_case}


def test_every_layout_has_a_contract_case():
    from probebench.data.layouts import LAYOUTS

    assert set(LAYOUT_CASES) == set(LAYOUTS)


@pytest.mark.parametrize("kind", sorted(LAYOUT_CASES))
def test_layout_contract(kind, tmp_path):
    from probebench.data.datasets import load_spec
    from probebench.data.layouts import LAYOUTS, Row
    from probebench.features.images import load_image

    table = LAYOUT_CASES[kind](tmp_path / "data" / "ds")
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n"
                    for k, v in table.items())
    spec_file = tmp_path / "ds.toml"
    spec_file.write_text(f'kind = "{kind}"\nclasses = ["a", "b"]\n[{kind}]\n{lines}')
    spec = load_spec(str(spec_file))
    junk, notes = [], []
    rows, source = LAYOUTS[kind].rows(spec, tmp_path / "data" / "ds", junk, notes)
    assert all(isinstance(r, Row) for r in rows) and len(rows) == len(TRUTH) and junk == []
    got = sorted((r.group, spec.classes[r.label]) for r in rows)
    assert got == sorted(TRUTH) and all(r.split is None for r in rows)
    assert len({r.sample_id for r in rows}) == len(rows)
    for r in rows:
        assert Path(r.path).is_file() == LAYOUTS[kind].files
        img = load_image(r.path)
        assert img.size == (12, 12) and img.mode in ("L", "RGB")
