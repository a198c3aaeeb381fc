"""Every entry of a plug-in table keeps its contract: the model families (``registry.FAMILIES``), the heads
(``heads.HEADS``) and the dataset layouts (``layouts.LAYOUTS``). A new entry without a case here fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probebench.models.registry import FAMILIES, REGISTRY, create_model, get_config

# family -> (a model of it, architecture changes that make it tiny, crop)
FAMILY_CASES = {
    "torchvision": ("resnet50", None, 32),
    "dinov2": ("dinov2_s", {"embed_dim": 32, "depth": 4, "num_heads": 2}, 28),
    "timm": ("timm:test_vit", None, 32),
}


def test_every_family_has_a_contract_case():
    assert set(FAMILY_CASES) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_contract(family):
    name, arch, crop = FAMILY_CASES[family]
    config = get_config(name)
    assert config.family is FAMILIES[family] and config.default_tap in config.taps
    assert (FAMILIES[family].prefix is not None) == (name not in REGISTRY)  # prefixed names are not table entries
    for tap in config.taps if family != "dinov2" else ("cls", "cls_patchmean", "cls4_patchmean"):
        model = create_model(name, "random:3", tap=tap, img_size=crop, arch_overrides=arch)
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
