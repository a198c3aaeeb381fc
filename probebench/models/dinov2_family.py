"""The DINOv2 family: Meta's checkpoints (``*_pretrain.pth``) or a Hugging Face ``Dinov2Model`` snapshot, on the
trunk in ``models/dinov2.py``; S/B/L/g entries with the taps of Meta's linear evaluation and the ``_lc`` logits."""

from __future__ import annotations

from dataclasses import replace

from probebench.models.config import Family, ModelConfig, Preprocessing

LC_TAP = "imagenet_logits"  # the study's DINOv2 features: the 1,000 ImageNet logits of torch.hub's ``*_lc`` models


def dinov2_taps(dim: int) -> dict:
    return {"cls": dim, "cls_patchmean": 2 * dim, "cls4_patchmean": 5 * dim, LC_TAP: 1000}


class Dinov2Family(Family):
    """Meta's DINOv2 checkpoints (``*_pretrain.pth``) or a Hugging Face ``Dinov2Model`` snapshot, on ``DinoV2``."""

    name = "dinov2"
    snapshots = True

    def with_arch(self, config, overrides):
        arch = {**config.arch, **overrides}
        return replace(config, arch=arch, taps=dinov2_taps(arch["embed_dim"]))

    def build(self, config, img_size):
        from probebench.models.dinov2 import DinoV2

        return DinoV2(img_size=img_size, **config.arch)

    def features(self, backbone, config, tap, images):
        return backbone.features(images, tap)

    def convert(self, state, model, config):
        from probebench.models.dinov2 import convert_meta_state_dict

        return convert_meta_state_dict(state, model)

    def load_snapshot(self, folder, config):
        from probebench.models.dinov2 import check_hf_snapshot, load_hf_snapshot

        check_hf_snapshot(folder, config.name, config.arch)
        return load_hf_snapshot(folder)


DINOV2 = Dinov2Family()
_FB = "https://dl.fbaipublicfiles.com/dinov2/"


def _entry(name: str, size: str, dim: int, depth: int, heads: int, ffn: str = "mlp") -> ModelConfig:
    arch = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": 14, "mlp_ratio": 4.0, "ffn": ffn,
            "init_values": 1.0}
    head = f"dinov2_vit{size}14_linear4_head.pth"  # Meta's ImageNet linear layer of the ``_lc`` hub models
    return ModelConfig(
        name=name, family=DINOV2, arch=arch, taps=dinov2_taps(dim), default_tap="cls",
        weight_file=f"dinov2_vit{size}14_pretrain.pth",
        url=f"{_FB}dinov2_vit{size}14/dinov2_vit{size}14_pretrain.pth",
        weights_label="LVD-142M", preprocessing=Preprocessing(interpolation="bicubic"),
        tap_heads={LC_TAP: (head, f"{_FB}dinov2_vit{size}14/{head}", "cls4_patchmean")})


ENTRIES = {c.name: c for c in (_entry("dinov2_s", "s", 384, 12, 6), _entry("dinov2_b", "b", 768, 12, 12),
                               _entry("dinov2_l", "l", 1024, 24, 16),
                               _entry("dinov2_g", "g", 1536, 40, 24, ffn="swiglu"))}
