"""The named successor and medical backbones (models/cards.py) against their own libraries: for each, a tiny random
model saved in the format its hub repo uses (transformers snapshot, timm folder, open_clip folder), loaded through
probebench by the entry's name, and its features compared with the library's forward and the model card's recipe
(pooler_output, last_hidden_state[:, 0], model(x), CLS ‖ mean of tokens 5: on, encode_image). Also the image
processors' own preprocessing, the open_clip family, the extras' messages and a study with one model per family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TIMM_SMALL = dict(embed_dim=32, depth=2, num_heads=2)


def _hf_case(name, folder):
    """A tiny model of the entry's kind in transformers' format, and the card's recipe on it."""
    t = transformers
    if name.startswith("dinov3"):
        model = t.DINOv3ViTModel(t.DINOv3ViTConfig(**SMALL, image_size=32, patch_size=16, num_register_tokens=4))
        recipe = lambda m, x: m(pixel_values=x).pooler_output  # noqa: E731 - the card: outputs.pooler_output
    elif name in ("rad_dino", "phikon_v2"):
        model = t.Dinov2Model(t.Dinov2Config(**{k: v for k, v in SMALL.items() if k != "intermediate_size"},
                                             image_size=28, patch_size=14))
        recipe = (lambda m, x: m(pixel_values=x).pooler_output) if name == "rad_dino" else \
            (lambda m, x: m(pixel_values=x).last_hidden_state[:, 0, :])
    elif name == "phikon":
        model = t.ViTModel(t.ViTConfig(**SMALL, image_size=32, patch_size=16), add_pooling_layer=False)
        recipe = lambda m, x: m(pixel_values=x).last_hidden_state[:, 0, :]  # noqa: E731
    else:  # medsiglip: the whole SigLIP model, as the repo holds it
        model = t.SiglipModel(t.SiglipConfig(text_config=dict(SMALL), vision_config=dict(
            **SMALL, image_size=28, patch_size=14)))
        recipe = lambda m, x: _tensor(m.get_image_features(pixel_values=x))  # noqa: E731
    torch.manual_seed(0)
    model = type(model)(model.config).eval()
    model.save_pretrained(folder)
    size = model.config.vision_config.image_size if name == "medsiglip" else model.config.image_size
    return folder, size, lambda x: recipe(type(model).from_pretrained(folder).eval(), x)


def _tensor(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _timm_case(name, folder):
    """A tiny model of the entry's architecture saved as timm saves hub models (config.json + model.safetensors);
    the reference builds it with the card's code (its layer classes passed in code, as the cards do)."""
    from safetensors.torch import save_file

    from probebench.models.cards import ENTRIES

    entry = ENTRIES[name]
    json_args = {k: v for k, v in entry.arch["kwargs"].items() if k not in ("mlp_layer", "act_layer")}
    model_args = {**json_args, **TIMM_SMALL, "img_size": 28, "patch_size": 14}
    in_code = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU} if "mlp_layer" in \
        entry.arch["kwargs"] else {}
    torch.manual_seed(0)
    model = timm.create_model(entry.arch["architecture"], pretrained=False, num_classes=0, **model_args,
                              **in_code).eval()
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": entry.arch["architecture"], "num_classes": 0,
                                                    "model_args": model_args}))
    if name == "virchow2":  # the card: CLS ‖ mean of output[:, 5:] (1 class token + 4 registers first)
        return folder, 28, lambda x: torch.cat([model(x)[:, 0], model(x)[:, 5:].mean(1)], dim=-1)
    return folder, 28, model


def _open_clip_folder(folder, vision_cfg, embed_dim=24):
    """An open_clip model (tiny text tower) saved as the hub holds it: open_clip_config.json + weights."""
    cfg = {"model_cfg": {"embed_dim": embed_dim, "vision_cfg": vision_cfg,
                         "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711]}}
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}")  # builds from the folder's config (random weights)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return open_clip.create_model(f"local-dir:{folder}").eval()  # read back by open_clip itself


BIOMEDCLIP_VISION = {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                     "timm_proj": "linear", "image_size": 224}


def _case(name, folder):
    from probebench.models.cards import ENTRIES

    family = ENTRIES[name].family.name
    if family == "hf":
        return _hf_case(name, folder)
    if family == "timm":
        return _timm_case(name, folder)
    ref = _open_clip_folder(folder, BIOMEDCLIP_VISION)
    return folder, 224, lambda x: ref.encode_image(x)


@pytest.mark.parametrize("name", ["dinov3_s", "dinov3_b", "dinov3_l", "rad_dino", "medsiglip", "biomedclip", "uni",
                                  "uni2", "virchow2", "phikon", "phikon_v2", "h_optimus_0", "prov_gigapath"])
def test_each_named_backbone_equals_its_librarys_recipe(name, tmp_path):
    from probebench.models.registry import create_model

    folder, size, reference = _case(name, tmp_path / name)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        want = reference(x)
        got = create_model(name, weights=str(folder), img_size=size)(x)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_the_cards_table_is_complete_and_every_tap_is_the_cards_dimension():
    """Each entry states source, licence, gated, the card's feature; the default tap's dimension is the card's."""
    from probebench.models.cards import ENTRIES

    dims = {"dinov3_s": 384, "dinov3_b": 768, "dinov3_l": 1024, "rad_dino": 768, "medsiglip": 1152,
            "biomedclip": 512, "uni": 1024, "uni2": 1536, "virchow2": 2560, "phikon": 768, "phikon_v2": 1024,
            "h_optimus_0": 1536, "prov_gigapath": 1536}  # from the model cards
    assert set(ENTRIES) == set(dims)
    for name, c in ENTRIES.items():
        assert c.feature_dim() == dims[name], name
        assert c.card.source.startswith("huggingface.co/") and c.card.licence and c.card.feature, name
    gated = {n for n, c in ENTRIES.items() if c.card.gated}
    assert {"uni", "uni2", "virchow2", "dinov3_b", "medsiglip"} <= gated and "rad_dino" not in gated
    assert ENTRIES["rad_dino"].preprocessing.crop == 518 and ENTRIES["medsiglip"].preprocessing.crop == 448
    assert ENTRIES["biomedclip"].taps == {"embedding": 512, "pooled": 768}


@pytest.mark.parametrize("small_crop", [False, True])
def test_named_architectures_build_offline_with_random_weights(small_crop):
    """Random weights need no download: the entry's architecture is stated (here made tiny); a crop other than the
    card's (the study's small demo crops) works too."""
    from probebench.models.registry import create_model

    for name, overrides, crop in (
            ("rad_dino", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}, 28),
            ("virchow2", {"embed_dim": 32, "depth": 1, "num_heads": 2}, 28),
            ("biomedclip", {"embed_dim": 16, "vision_cfg": BIOMEDCLIP_VISION}, 32)):
        m = create_model(name, weights="random", arch_overrides=overrides, img_size=crop if small_crop else None)
        size = crop if small_crop else m.config.preprocessing.crop
        with torch.no_grad():
            out = m(torch.rand(1, 3, size, size))
        assert out.shape == (1, m.feature_dim) and torch.isfinite(out).all(), name


def _pil(w=61, h=47):
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("processor", ["BitImageProcessor", "SiglipImageProcessor", "ViTImageProcessor"])
def test_snapshot_preprocessing_equals_the_image_processor(processor, tmp_path):
    """A non-square image through our transform and through transformers' own processor of the snapshot (RAD-DINO
    and Phikon-v2: shortest edge + crop; MedSigLIP and Phikon: squashed to height x width)."""
    from probebench.features.images import make_transform
    from probebench.models.config import Preprocessing, hf_preprocessing

    klass = getattr(transformers, processor)
    if processor == "BitImageProcessor":
        proc = klass(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36}, resample=3,
                     image_mean=[0.5307] * 3, image_std=[0.2583] * 3, do_convert_rgb=True)
    else:
        proc = klass(size={"height": 36, "width": 36}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc.save_pretrained(tmp_path)
    pre = hf_preprocessing(tmp_path, Preprocessing())
    assert pre.resize_mode == ("shortest" if processor == "BitImageProcessor" else "squash")
    img = _pil()
    want = torch.as_tensor(np.asarray(proc(img, return_tensors="np")["pixel_values"][0]))
    got = make_transform(pre)(img)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 0.02  # PIL resampling of uint8 in both; 8-bit rounding apart
    assert (got - want).abs().mean() < 2e-3


def test_open_clip_family_equals_open_clip(tmp_path):
    """open_clip:<folder> (a native ViT tower): the embedding is encode_image, the pooled tap is the tower's own
    output without its projection; another crop resizes the position grid as open_clip does."""
    from probebench.models.registry import create_model, get_config

    vision = {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}
    ref = _open_clip_folder(tmp_path / "oc", vision)
    x = torch.rand(2, 3, 32, 32)
    name = f"open_clip:{tmp_path / 'oc'}"
    config = get_config(name)
    assert config.taps == {"embedding": 24, "pooled": 32}
    assert config.preprocessing.mean[0] == pytest.approx(0.48145466) and config.preprocessing.crop == 32
    with torch.no_grad():
        assert torch.allclose(create_model(name)(x), ref.encode_image(x), atol=1e-5)
        ref.visual.proj = None  # open_clip's tower without the projection: its pooled output
        assert torch.allclose(create_model(name, tap="pooled")(x), ref.visual(x), atol=1e-5)
        bigger = create_model(name, img_size=48)(torch.rand(1, 3, 48, 48))
    assert bigger.shape == (1, 24)


def test_open_clip_names_and_tags(monkeypatch):
    from probebench.errors import NotOnThisMachine, ProbebenchError
    from probebench.models.registry import get_config, name_problem, resolve_model

    monkeypatch.setenv("PROBEBENCH_OFFLINE", "1")
    config = get_config("open_clip:ViT-B-32@openai")
    assert config.taps == {"embedding": 512, "pooled": 768} and config.preprocessing.crop == 224
    assert config.arch["quick_gelu"] and not get_config("open_clip:ViT-B-32").arch["quick_gelu"]  # as trained
    assert config.preprocessing.interpolation == "bicubic"
    with pytest.raises(ProbebenchError, match="unknown open_clip model 'ViT-B-33'.*did you mean"):
        get_config("open_clip:ViT-B-33")
    with pytest.raises(ProbebenchError, match="has no pretrained tag 'nope'; tags: .*openai"):
        get_config("open_clip:ViT-B-32@nope")
    assert name_problem("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224") is None
    with pytest.raises(NotOnThisMachine, match="no pretrained tag|has no official weights; name one"):
        resolve_model("open_clip:ViT-B-32")


def test_missing_extra_is_named_before_any_work(tiny, tmp_path, monkeypatch):
    """Without open_clip (or transformers), naming such a model says which extra to install, before extraction."""
    import importlib.util

    from typer.testing import CliRunner

    from probebench.cli import app
    from probebench.models.registry import name_problem

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n in ("open_clip", "transformers") else real(n, *a))
    assert 'pip install "probebench[open_clip]"' in name_problem("biomedclip")
    assert 'pip install "probebench[hf]"' in name_problem("hf:org/repo")
    spec, root = tiny
    res = CliRunner().invoke(app, ["extract", "-m", "rad_dino", "-d", str(spec), "--data-root", str(root),
                                   "--cache-dir", str(tmp_path / "c"), "--weights", "random"])
    assert res.exit_code != 0 and 'pip install "probebench[hf]"' in res.output, res.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("name", ["rad_dino", "medsiglip", "biomedclip", "virchow2"])
def test_extract_a_named_backbone_from_its_folder(name, tiny, tmp_path):
    """`extract --model NAME --weights DIR` on a tiny folder of the repo's format: the stored features are the
    library's on the images as our (processor-checked) preprocessing prepares them."""
    from probebench import extract
    from probebench.features.cache import read_features
    from probebench.features.images import load_image, make_transform
    from probebench.features.spec import FeatureSpec

    folder, size, reference = _case(name, tmp_path / name)
    spec, root = tiny
    store = extract(name, str(spec), data_root=root, cache_dir=tmp_path / "c", workers=0, progress=False,
                    weights=str(folder), resize=size, crop=size)
    f = read_features(store)
    resolved = FeatureSpec(model=name, weights=str(folder), resize=size, crop=size).resolve()
    transform = make_transform(resolved.preprocessing)
    from probebench.data.datasets import load_manifest

    paths = load_manifest(str(spec), root).paths  # the store's rows are the manifest's, in order
    x = torch.stack([transform(load_image(p)) for p in paths[:4]])
    with torch.no_grad():
        want = reference(x).numpy()
    assert f.features.shape[1] == want.shape[1]
    np.testing.assert_allclose(np.asarray(f.features[:4], dtype=np.float32), want, atol=1e-4)
    assert f.attrs["weights"]["sha256"] != "random"


FAMILY_STUDY = """
[study]
name = "families"
datasets = ["demo_shapes"]
models = MODELS
modes = ["frozen", "unfrozen"]
heads = ["linear"]
weights = "random"
synthetic = true
data_root = "data"
cache_dir = "cache"
runs_dir = "runs"
report_dir = "report"

[training]
epochs = 2
batch_size = 16

[unfrozen]
epochs = 1

[extract]
resize = 28
crop = 28
workers = 0

[report]
resamples = 100
"""


@pytest.mark.slow
def test_a_study_with_one_model_per_family_runs_offline_with_random_weights(tmp_path, monkeypatch):
    """timm, open_clip (a folder) and a named Hugging Face backbone (RAD-DINO, its weights a tiny snapshot of the
    repo's format) in one study at a crop none of them was made for, frozen and fine-tuned, no network: every cell
    done; the rows with random weights marked †, the snapshot's not. (torchvision and DINOv2: the demo study.)"""
    from probebench.study import load_study, run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBEBENCH_OFFLINE", "1")
    snapshot, _, _ = _hf_case("rad_dino", tmp_path / "rad-dino")
    _open_clip_folder(tmp_path / "oc", {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                        "patch_size": 8})
    models = ["timm:vit_tiny_patch16_224", f"open_clip:{tmp_path / 'oc'}", "rad_dino"]
    text = FAMILY_STUDY.replace("MODELS", json.dumps(models)) + f'\n[weights]\nrad_dino = "{snapshot}"\n'
    (tmp_path / "s.toml").write_text(text)
    result = run_study(load_study(tmp_path / "s.toml"), progress=False, echo=lambda t: None)
    assert [c.status for c in result.cells] == ["done"] * 6, [(c.model, c.mode, c.detail) for c in result.cells
                                                             if c.status != "done"]
    md = (tmp_path / "report" / "tables.md").read_text()
    for freeze in ("Y", "N"):
        for model in models[:2]:
            assert f"| demo_shapes | {model} † | {freeze} |" in md, (model, freeze)
        assert f"| demo_shapes | rad_dino | {freeze} |" in md
