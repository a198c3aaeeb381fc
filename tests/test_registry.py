"""Model registry: feature shapes, official checkpoint formats, weight resolution, DINOv2 parity."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from probebench.models.dinov2 import resize_pos_embed_meta
from probebench.errors import ProbebenchError
from probebench.models.registry import REGISTRY, create_model
from probebench.models.hub import hub_checkpoint_dir

from conftest import DATA

TINY_DINO = {"embed_dim": 96, "depth": 4, "num_heads": 2}


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "densenet121", "dinov2_s", "dinov2_b", "dinov2_l"])
def test_feature_shape(name):
    crop = 28 if name.startswith("dinov2") else 32
    model = create_model(name, "random", img_size=crop)
    with torch.inference_mode():
        feats = model(torch.randn(2, 3, crop, crop))
    assert feats.shape == (2, REGISTRY[name].feature_dim())
    assert torch.isfinite(feats).all()
    assert model.weights["sha256"] == "random"


@pytest.mark.parametrize("tap,mult", [("cls", 1), ("cls_patchmean", 2), ("cls4_patchmean", 5)])
def test_dinov2_taps_and_swiglu_variant(tap, mult):
    model = create_model("dinov2_g", "random", tap=tap, img_size=28, arch_overrides=TINY_DINO)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 96 * mult)


def test_vgg_tap_is_fc7_after_relu():
    model = create_model("vgg16", "random", img_size=32)
    x = torch.randn(2, 3, 32, 32)
    net = model.backbone
    with torch.inference_mode():
        expected = net.classifier[4](net.classifier[3](net.classifier[1](net.classifier[0](
            torch.flatten(net.avgpool(net.features(x)), 1)))))
        assert torch.equal(model(x), expected)
        assert (model(x) >= 0).all()


def _legacy_densenet_keys(state: dict) -> dict:
    """The inverse of torchvision's rename: the key names in the published densenet121-a639ec97.pth."""
    pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    return {(m.group(1) + "." + m.group(2) if (m := pat.match(k)) else k): v for k, v in state.items()}


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_torchvision_checkpoint_roundtrip_through_hub_cache(name):
    torch.manual_seed(1)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    state = reference.state_dict()
    if name == "densenet121":
        state = _legacy_densenet_keys(state)
        assert any(".norm.1." in k for k in state)  # really the legacy format
    target = hub_checkpoint_dir() / REGISTRY[name].weight_file
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    model = create_model(name, "auto", img_size=32)
    assert model.weights["source"] == str(target)
    assert len(model.weights["sha256"]) == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        if name == "resnet50":
            reference.fc = torch.nn.Identity()
            expected = reference(x)
        else:
            reference.classifier = torch.nn.Identity()
            expected = reference(x)
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_wrong_architecture_names_mismatching_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ProbebenchError, match=r"does not fit densenet121.*missing keys: .*features"):
        create_model("densenet121", str(path), img_size=32)


def test_missing_weights_names_file_and_folder():
    with pytest.raises(ProbebenchError) as exc:
        create_model("dinov2_b", "auto", img_size=28)
    msg = str(exc.value)
    assert "dinov2_vitb14_pretrain.pth" in msg and str(hub_checkpoint_dir()) in msg and "--weights random" in msg


def test_unknown_model_lists_known():
    with pytest.raises(ProbebenchError, match="known models: vgg16, resnet50"):
        create_model("resnet18", "random")


def test_random_weights_are_seeded():
    a = create_model("resnet50", "random:3", img_size=32)
    b = create_model("resnet50", "random:3", img_size=32)
    c = create_model("resnet50", "random", img_size=32)
    wa, wb, wc = (m.backbone.conv1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.fixture(scope="module")
def dinov2_reference():
    return torch.load(DATA / "dinov2_tiny_official.pt", weights_only=True)


def _tiny_dino_from_reference(ref, tmp_path: Path, tap: str):
    path = tmp_path / "dinov2_tiny_official_format.pth"
    torch.save(ref["state_dict_official_format"], path)  # Meta's key format, fp16, mask_token included
    arch = {k: ref["arch"][k] for k in ("embed_dim", "depth", "num_heads")}
    return create_model("dinov2_s", str(path), tap=tap, img_size=224, arch_overrides=arch)


@pytest.mark.parametrize("tap,key", [("cls", "cls"), ("cls_patchmean", "linear_n1"),
                                     ("cls4_patchmean", "linear_n4")])
def test_dinov2_matches_meta_reference(dinov2_reference, tmp_path, tap, key):
    ref = dinov2_reference
    model = _tiny_dino_from_reference(ref, tmp_path, tap)
    with torch.inference_mode():
        ours = model(ref["input"].float())
    diff = (ours - ref[key].float()).abs().max().item()
    assert diff < 1e-5, f"{tap}: max abs difference {diff:.2e} from Meta's reference"


def test_naive_pos_embed_resize_would_fail_parity(dinov2_reference):
    """The parity test can fail: a plain antialiased resize to 16x16 differs from Meta's."""
    pe = dinov2_reference["state_dict_official_format"]["pos_embed"].float()
    ours = resize_pos_embed_meta(pe, (16, 16))
    grid = pe[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    naive = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True)
    naive = naive.permute(0, 2, 3, 1).reshape(1, -1, pe.shape[-1])
    assert (ours[:, 1:] - naive).abs().max() > 1e-3


def test_imagenet_logits_tap_is_metas_linear4_classifier(dinov2_reference, tmp_path, monkeypatch):
    """The study's DINOv2 features (torch.hub ``dinov2_vit*14_lc``): Meta's _LinearClassifierWrapper(layers=4)
    is Linear(5 x dim, 1000) on CLS of the last 4 blocks ‖ mean patch token. On the reference trunk its input
    is ``linear_n4``; a head saved in Meta's format (weight, bias) must give head(linear_n4)."""
    ref = dinov2_reference
    gen = torch.Generator().manual_seed(0)
    head = {"weight": torch.randn(1000, 480, generator=gen) * 0.05, "bias": torch.randn(1000, generator=gen)}
    torch.save(head, tmp_path / "dinov2_vits14_linear4_head.pth")
    path = tmp_path / "trunk.pth"
    torch.save(ref["state_dict_official_format"], path)
    arch = {k: ref["arch"][k] for k in ("embed_dim", "depth", "num_heads")}
    model = create_model("dinov2_s", str(path), tap="imagenet_logits", img_size=224, arch_overrides=arch,
                         head_weights=str(tmp_path / "dinov2_vits14_linear4_head.pth"))
    assert model.feature_dim == 1000 and model.weights["head_sha256"]
    with torch.inference_mode():
        ours = model(ref["input"].float())
    expected = ref["linear_n4"].float() @ head["weight"].T + head["bias"]
    assert ours.shape == (2, 1000) and (ours - expected).abs().max().item() < 1e-4
    # found in the hub cache under its official name, like the backbone
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (tmp_path / "dinov2_vits14_linear4_head.pth").rename(hub / "dinov2_vits14_linear4_head.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    again = create_model("dinov2_s", str(path), tap="imagenet_logits", img_size=224, arch_overrides=arch)
    with torch.inference_mode():
        assert torch.equal(again(ref["input"].float()), ours)
    with pytest.raises(ProbebenchError, match=r"(?s)no imagenet_logits layer for dinov2_s: downloads are off.*"
                                              r"dinov2_vits14_linear4_head.pth"):
        (hub / "dinov2_vits14_linear4_head.pth").unlink()
        create_model("dinov2_s", str(path), tap="imagenet_logits", img_size=224, arch_overrides=arch)
    random_lc = create_model("dinov2_s", "random:3", tap="imagenet_logits", img_size=28, arch_overrides=arch)
    assert random_lc(torch.zeros(1, 3, 28, 28)).shape == (1, 1000)


def test_dinov2_gradient_checkpointing_recomputes_with_equal_gradients(monkeypatch):
    """timm's switch turns it on: the blocks run again in the backward pass, and the gradients are unchanged."""
    import timm.models.vision_transformer as vt

    net = create_model("dinov2_s", "random", img_size=28)
    x = torch.randn(2, 3, 28, 28)

    def grads():
        net.zero_grad()
        net(x).square().sum().backward()
        return [p.grad.clone() for p in net.parameters() if p.grad is not None]

    plain = grads()
    calls = []
    real = vt.checkpoint
    monkeypatch.setattr(vt, "checkpoint", lambda fn, *a, **k: calls.append(1) or real(fn, *a, **k))
    net.backbone.set_grad_checkpointing(True)
    checked = grads()
    assert len(calls) == 12  # one per block
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checked))
