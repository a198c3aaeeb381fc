"""Beyond the study's models and layouts: timm models, Hugging Face DINOv2 snapshots, HDF5 in, features out."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from probebench.features.cache import read_features
from probebench.data.datasets import load_manifest
from probebench.models.dinov2 import hf_to_meta, meta_to_hf
from probebench.errors import ProbebenchError
from probebench.features.export import export_features
from probebench.features.extract import extract
from probebench.train.fit import fit
from probebench.features.images import make_transform, preprocess
from probebench.models.registry import create_model, get_config
from probebench.report.tables import collect_rows

from conftest import DATA, write_spec

TINY = {"embed_dim": 96, "depth": 4, "num_heads": 2}


def test_timm_model_end_to_end_with_local_weights(tiny, tmp_path):
    spec, root = tiny
    torch.manual_seed(0)
    weights = tmp_path / "test_convnext.pth"
    torch.save(timm.create_model("test_convnext", pretrained=False).state_dict(), weights)
    opts = dict(data_root=root, cache_dir=tmp_path / "cache", weights=str(weights), resize=40, crop=32)
    store = extract("timm:test_convnext", str(spec), workers=0, progress=False, **opts)
    assert store.parent.name == "timm%3Atest_convnext"  # ':' never reaches a path unquoted
    feats = read_features(store)
    reference = timm.create_model("test_convnext", pretrained=False)
    reference.load_state_dict(torch.load(weights, weights_only=True))
    cfg = get_config("timm:test_convnext").preprocessing
    assert (cfg.interpolation, cfg.mean) == ("bicubic", (0.5, 0.5, 0.5))  # from timm's pretrained config
    from dataclasses import replace

    x = torch.stack([preprocess(root / "tiny" / s, make_transform(replace(cfg, resize=40, crop=32)))
                     for s in feats.sample_ids[:2]])
    with torch.inference_mode():
        expected = reference.eval().forward_head(reference.forward_features(x), pre_logits=True)
    assert np.allclose(feats.features[:2], expected.numpy(), atol=1e-5)
    run = fit("timm:test_convnext", str(spec), runs_dir=tmp_path / "runs", epochs=2, progress=False, **opts)
    assert run.parent.parent.name == "timm%3Atest_convnext"
    rows = collect_rows(tmp_path / "runs")
    assert rows[0].model == "timm:test_convnext" and not rows[0].random_weights


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(ProbebenchError, match=r"unknown timm model 'convnxt_tiny'; did you mean: convnext_tiny"):
        get_config("timm:convnxt_tiny")


def test_timm_weights_missing_offline_is_explained():
    with pytest.raises(ProbebenchError, match=r"no weights for timm:test_vit.*Hugging Face cache.*--weights FILE"):
        create_model("timm:test_vit", "auto")


@pytest.fixture
def reference():
    return torch.load(DATA / "dinov2_tiny_official.pt", weights_only=True)


def write_hf_snapshot(folder, state_meta, depth=4, model_type="dinov2", hidden=96, heads=2):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in meta_to_hf(state_meta, depth).items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["Dinov2Model"], "hidden_size": hidden, "num_hidden_layers": depth,
        "num_attention_heads": heads, "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layerscale_value": 1.0,
        "use_swiglu_ffn": False, "layer_norm_eps": 1e-6}))
    return folder


def test_hf_and_meta_formats_round_trip_with_equal_features(reference, tmp_path):
    meta = reference["state_dict_official_format"]
    back = hf_to_meta(meta_to_hf(meta, 4), 4)
    assert set(back) == set(meta) and all(torch.equal(back[k], meta[k]) for k in meta)
    snapshot = write_hf_snapshot(tmp_path / "dinov2-tiny-hf", meta)
    torch.save(meta, tmp_path / "meta.pth")
    x = reference["input"].float()
    with torch.inference_mode():
        from_hf = create_model("dinov2_s", str(snapshot), img_size=224, arch_overrides=TINY)(x)
        from_meta = create_model("dinov2_s", str(tmp_path / "meta.pth"), img_size=224, arch_overrides=TINY)(x)
    assert torch.equal(from_hf, from_meta)
    assert (from_hf - reference["cls"].float()).abs().max() < 1e-5


def test_hf_snapshot_of_another_size_or_architecture_is_refused(reference, tmp_path):
    snapshot = write_hf_snapshot(tmp_path / "tiny", reference["state_dict_official_format"])
    with pytest.raises(ProbebenchError, match=r"holds a DINOv2 with hidden 96, 4 layers.*but dinov2_b is hidden 768"):
        create_model("dinov2_b", str(snapshot), img_size=28)
    other = write_hf_snapshot(tmp_path / "vit", reference["state_dict_official_format"], model_type="vit")
    with pytest.raises(ProbebenchError, match=r"describes a 'vit' model, not a DINOv2"):
        create_model("dinov2_s", str(other), img_size=224, arch_overrides=TINY)


HDF5_SPEC = """
kind = "hdf5"
root = "slices"
classes = ["glioma", "meningioma"]
group = "patient"
[hdf5]
file = "slices.h5"
images = "x"
labels = "y"
groups = "pid"
float_rule = "{rule}"
[split]
test_fraction = 0.3
val_fraction = 0.25
"""


def write_h5(path, n=24, dtype=np.uint8, labels=None, drop=None):
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        x = rng.random((n, 20, 20))
        fh["x"] = (x * 255).astype(dtype) if dtype == np.uint8 else x.astype(dtype)
        if drop != "y":
            fh["y"] = labels if labels is not None else np.arange(n) % 2
        fh["pid"] = np.array([f"p{i // 2}".encode() for i in range(n)])


@pytest.mark.parametrize("dtype,rule", [(np.uint8, "minmax"), (np.float32, "unit")])
def test_hdf5_dataset_through_extract_fit_report(tmp_path, dtype, rule):
    write_h5(tmp_path / "data" / "slices" / "slices.h5", dtype=dtype)
    spec = write_spec(tmp_path / "slices.toml", HDF5_SPEC.replace("{rule}", rule))
    m = load_manifest(str(spec), tmp_path / "data")
    assert len(m) == 24 and m.source["float_rule"] == rule and len(m.source["hdf5_sha256"]) == 64
    opts = dict(data_root=tmp_path / "data", cache_dir=tmp_path / "c", weights="random", resize=32, crop=28)
    extract("dinov2_s", str(spec), workers=2, progress=False, **opts)  # workers open the file themselves
    fit("dinov2_s", str(spec), runs_dir=tmp_path / "runs", epochs=2, progress=False, **opts)
    rows = collect_rows(tmp_path / "runs")
    assert rows[0].dataset == "slices" and rows[0].unit == "patient"


def test_hdf5_bad_input(tmp_path):
    spec = write_spec(tmp_path / "slices.toml", HDF5_SPEC.replace("{rule}", "minmax"))
    write_h5(tmp_path / "data" / "slices" / "slices.h5", drop="y")
    with pytest.raises(ProbebenchError, match=r"slices.h5: no dataset\(s\) \['y'\].*holds: \['pid', 'x'\]"):
        load_manifest(str(spec), tmp_path / "data")
    write_h5(tmp_path / "data" / "slices" / "slices.h5", labels=np.zeros(5, dtype=int))
    with pytest.raises(ProbebenchError, match=r"y has 5 entries but x has 24"):
        load_manifest(str(spec), tmp_path / "data")


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".pt"])
def test_export_round_trips(tiny, tmp_path, suffix):
    spec, root = tiny
    opts = dict(data_root=root, cache_dir=tmp_path / "c", weights="random", resize=40, crop=32)
    store = extract("resnet50", str(spec), workers=0, progress=False, **opts)
    feats = read_features(store)
    out = export_features("resnet50", str(spec), tmp_path / f"features{suffix}", **opts)
    if suffix == ".h5":
        with h5py.File(out, "r") as fh:
            got = {"features": fh["features"][()], "labels": fh["labels"][()],
                   "sample_ids": [s.decode() for s in fh["sample_ids"][()]],
                   "split": [s.decode() for s in fh["split"][()]], "model": fh.attrs["model"]}
    elif suffix == ".npz":
        with np.load(out) as z:
            got = {k: z[k] for k in ("features", "labels", "sample_ids", "split")}
            got["model"] = json.loads(str(z["meta"]))["model"]
    else:
        obj = torch.load(out, weights_only=True)
        got = {"features": obj["features"].numpy(), "labels": obj["labels"].numpy(), "sample_ids": obj["sample_ids"],
               "split": obj["split"], "model": obj["meta"]["model"]}
    assert np.array_equal(got["features"], feats.features) and np.array_equal(got["labels"], feats.labels)
    assert list(got["sample_ids"]) == feats.sample_ids.tolist() and list(got["split"]) == feats.split.tolist()
    assert got["model"] == "resnet50"


def test_timm_hf_hub_model_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """``timm:hf-hub:<org>/<repo>`` offline: config and weights come from the local Hugging Face cache."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--acme--med-convnext"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "test_convnext", "num_classes": 5,
        "pretrained_cfg": {"input_size": [3, 64, 64], "interpolation": "bilinear", "crop_pct": 0.9,
                           "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}))
    torch.manual_seed(3)
    reference = timm.create_model("test_convnext", pretrained=False, num_classes=5).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    model = create_model("timm:hf-hub:acme/med-convnext", "auto")
    pre = model.config.preprocessing
    assert (pre.crop, pre.resize, pre.interpolation, pre.mean) == (64, 71, "bilinear", (0.4, 0.4, 0.4))
    assert model.weights["source"].endswith("model.safetensors") and len(model.weights["sha256"]) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x), expected, atol=1e-6)
