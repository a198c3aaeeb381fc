"""The model every family builds, as one module: a backbone plus a feature tap, ``forward(images) -> (B, D)``."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from probebench.models.config import ModelConfig


class FeatureExtractor(nn.Module):
    """A backbone plus a feature tap: ``forward(images) -> (B, D)``; records where its weights came from.
    ``tap_head``: a pretrained layer on another tap (DINOv2's ImageNet linear layer for ``imagenet_logits``)."""

    def __init__(self, config: ModelConfig, backbone: nn.Module, tap: str, weights: dict,
                 tap_head: nn.Module | None = None):
        super().__init__()
        self.config, self.backbone, self.tap, self.weights = config, backbone, tap, weights
        self.tap_head = tap_head
        self.feature_dim = config.family.feature_dim(config, backbone, tap)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        family = self.config.family
        if self.tap_head is not None:  # e.g. Meta's _LinearClassifierWrapper(layers=4): logits of cls4_patchmean
            on_tap = self.config.tap_heads[self.tap][2]
            return self.tap_head(family.features(self.backbone, self.config, on_tap, images))
        return family.features(self.backbone, self.config, self.tap, images)


@contextlib.contextmanager
def _seeded(seed: int):
    """Run initialisation under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
