"""The Hugging Face family against transformers itself: tiny random models saved in the official snapshot format
(config.json + model.safetensors + preprocessor_config.json), loaded through probebench, features equal to the
library's own forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _snapshot(folder, model, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    model.save_pretrained(folder)  # the official format: config.json + model.safetensors
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": size}, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_normalize": True, "image_mean": list(mean),
        "image_std": list(std), "resample": 3}))
    return folder


def _models(tmp_path):
    """(kind, snapshot folder, the library's own model read back from it, its features by tap)."""
    t = transformers
    torch.manual_seed(0)
    cases = {
        "dinov2": (t.Dinov2Model(t.Dinov2Config(**SMALL, image_size=28, patch_size=14)), 28, 0),
        "dinov2_with_registers": (t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(
            **SMALL, image_size=28, patch_size=14, num_register_tokens=4)), 28, 4),
        "dinov3_vit": (t.DINOv3ViTModel(t.DINOv3ViTConfig(**SMALL, image_size=32, patch_size=16,
                                                           num_register_tokens=4)), 32, 4),
        "vit": (t.ViTModel(t.ViTConfig(**SMALL, image_size=32, patch_size=16), add_pooling_layer=False), 32, 0),
        "siglip": (t.SiglipModel(t.SiglipConfig(text_config=dict(SMALL), vision_config=dict(
            **SMALL, image_size=32, patch_size=16))), 32, 0),
        "clip": (t.CLIPModel(t.CLIPConfig(text_config=dict(SMALL, projection_dim=24), vision_config=dict(
            **SMALL, image_size=32, patch_size=16, projection_dim=24), projection_dim=24)), 32, 0),
    }
    for kind, (model, size, registers) in cases.items():
        yield kind, _snapshot(tmp_path / kind, model.eval(), size), size, registers


def _reference(kind, folder, x, registers):
    """The library's own features, read back from the snapshot by transformers."""
    t = transformers
    if kind == "clip":
        m = t.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
        pooled = m.vision_model(pixel_values=x).pooler_output
        return {"embedding": m(pixel_values=x).image_embeds, "pooled": pooled}
    if kind == "siglip":
        out = t.SiglipVisionModel.from_pretrained(folder).eval()(pixel_values=x)
        return {"pooled": out.pooler_output, "patchmean": out.last_hidden_state.mean(1)}
    out = t.AutoModel.from_pretrained(folder).eval()(pixel_values=x)
    tokens = out.last_hidden_state
    patches = tokens[:, 1 + registers:]
    return {"cls": tokens[:, 0], "patchmean": patches.mean(1), "cls_patchmean": torch.cat([tokens[:, 0],
                                                                                          patches.mean(1)], -1)}


def test_every_kind_equals_the_librarys_own_forward(tmp_path):
    from probebench.models.registry import create_model, get_config

    seen = set()
    for kind, folder, size, registers in _models(tmp_path):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            want = _reference(kind, folder, x, registers)
            config = get_config(f"hf:{folder}")
            assert set(config.taps) == set(want), kind
            for tap, ref in want.items():
                got = create_model(f"hf:{folder}", tap=tap)(x)
                assert got.shape == ref.shape and config.taps[tap] == ref.shape[1], (kind, tap)
                assert torch.allclose(got, ref, atol=1e-5), (kind, tap, (got - ref).abs().max())
        assert config.preprocessing.mean == (0.5, 0.5, 0.5) and config.preprocessing.crop == size
        seen.add(kind)
    assert len(seen) == 6


def test_extract_and_fit_on_a_snapshot_and_the_offline_message(tiny, tmp_path):
    from probebench import extract, fit
    from probebench.errors import ProbebenchError
    from probebench.features.cache import read_features
    from probebench.models.registry import create_model
    from probebench.runs import read_run

    spec, root = tiny
    torch.manual_seed(1)
    folder = _snapshot(tmp_path / "snap", transformers.Dinov2Model(transformers.Dinov2Config(
        **SMALL, image_size=28, patch_size=14)).eval(), 28)
    store = extract(f"hf:{folder}", str(spec), data_root=root, cache_dir=tmp_path / "c", workers=0, progress=False)
    f = read_features(store)
    assert f.features.shape == (40, 32) and f.attrs["weights"]["sha256"] != "random"
    run = read_run(fit(f"hf:{folder}", str(spec), data_root=root, cache_dir=tmp_path / "c",
                       runs_dir=tmp_path / "r", epochs=2, progress=False))
    assert run.record.tap == "cls" and run.record.preprocessing["mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(ProbebenchError, match=r"hf:nobody/nothing: not in the local Hugging Face cache .*downloads "
                                              r"are off; download it once with network"):
        create_model("hf:nobody/nothing")
