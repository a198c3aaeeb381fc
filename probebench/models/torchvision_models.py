"""The torchvision family: VGG16, ResNet50 and DenseNet121 with torchvision's ImageNet weights (the study's CNNs).

The feature tap is the input of the layer the study replaces, so the tap and the replaced layer are defined in
one place (``REPLACED_LAYER``): ``finetune`` swaps the layer, ``extract`` reads its input.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from probebench.errors import ProbebenchError
from probebench.models.config import Family, ModelConfig

if TYPE_CHECKING:  # the entries are light; torchvision loads when a model is built
    import torch
    from torch import nn

# The layer the study replaces in each torchvision model; its input is the model's feature tap.
REPLACED_LAYER = {"vgg16": "classifier.6", "resnet50": "fc", "densenet121": "classifier"}

_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def convert_densenet_legacy(state: dict) -> dict:
    """torchvision's own rename of the published DenseNet keys (``norm.1`` -> ``norm1``)."""
    out = {}
    for key, value in state.items():
        m = _DENSENET_LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def replaced_layer_input(model: nn.Module, builder: str, x: torch.Tensor) -> torch.Tensor:
    """The input of the layer the study replaces (VGG16 fc7 after ReLU, ResNet50 / DenseNet121 pooling), taken
    from torchvision's own forward pass."""
    if builder not in REPLACED_LAYER:
        raise ProbebenchError(f"no feature tap for torchvision builder {builder!r}")
    captured: list[torch.Tensor] = []
    hook = model.get_submodule(REPLACED_LAYER[builder]).register_forward_pre_hook(
        lambda module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return captured[0]


class TorchvisionFamily(Family):
    name = "torchvision"
    channels_last = True  # it helps the CNNs, on CPUs too

    def build(self, config: ModelConfig, img_size: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, config.arch["builder"])(weights=None)

    def features(self, backbone, config, tap, images):
        return replaced_layer_input(backbone, config.arch["builder"], images)

    def convert(self, state, model, config):
        return convert_densenet_legacy(state) if config.arch["builder"].startswith("densenet") else state

    def finetune_layer(self, config):
        return REPLACED_LAYER[config.arch["builder"]]


TORCHVISION = TorchvisionFamily()
_URL = "https://download.pytorch.org/models/"


def _entry(name: str, tap: str, dim: int, file: str) -> ModelConfig:
    return ModelConfig(name, TORCHVISION, {"builder": name}, {tap: dim}, tap, file, _URL + file, "IMAGENET1K_V1",
                       hash_prefix=file.rsplit("-", 1)[1].split(".")[0])  # torchvision names the sha256 prefix


ENTRIES = {c.name: c for c in (_entry("vgg16", "fc7", 4096, "vgg16-397923af.pth"),
                               _entry("resnet50", "avgpool", 2048, "resnet50-0676ba61.pth"),
                               _entry("densenet121", "pool", 1024, "densenet121-a639ec97.pth"))}
