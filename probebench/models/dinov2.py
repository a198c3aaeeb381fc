"""DINOv2 ViT/14 trunk on timm's blocks, loading Meta's checkpoints and computing what Meta's code computes.

Meta learns the positional embedding at 518 px (37 x 37 patches) and resizes it on the fly with
bicubic interpolation at ``scale_factor = (grid + 0.1) / 37`` and no antialiasing. We resize it once,
the same way, for the crop size the model is built for; any other resize differs by ~2e-2.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


def resize_pos_embed_meta(pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1) -> torch.Tensor:
    """Meta's ``interpolate_pos_encoding``: (1, 1 + M*M, D) -> (1, 1 + h*w, D), computed in float32."""
    cls_pe, patch_pe = pos_embed[:, :1], pos_embed[:, 1:]
    n, dim = patch_pe.shape[1], patch_pe.shape[2]
    m = int(math.sqrt(n))
    assert m * m == n, "positional embedding is not a square grid"
    h0, w0 = grid  # Meta names them w0 (from the image width) / h0; our crops are square
    if (h0, w0) == (m, m):
        return pos_embed
    dtype = pos_embed.dtype
    patch_pe = F.interpolate(
        patch_pe.float().reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=((w0 + offset) / m, (h0 + offset) / m),
        mode="bicubic", antialias=False)
    assert patch_pe.shape[-2:] == (w0, h0)
    patch_pe = patch_pe.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pe.float(), patch_pe], dim=1).to(dtype)


class DinoV2(nn.Module):
    """A DINOv2 trunk for square inputs of ``img_size`` px; ``features(x, tap)`` gives CLS-based features.
    Meta's checkpoints carry a 518-px (37 x 37) positional embedding; the resize reads that grid off the weights.
    """

    def __init__(self, img_size: int = 224, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 patch_size: int = 14, mlp_ratio: float = 4.0,
                 ffn: str = "mlp", init_values: float = 1.0):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if img_size % patch_size:
            raise ValueError(f"DINOv2 input size {img_size} is not a multiple of the patch size {patch_size}")
        kwargs = {}
        if ffn == "swiglu":  # ViT-g: Meta's SwiGLUFFNFused = timm's packed SwiGLU with hidden 2/3*4*dim
            from timm.layers import SwiGLUPacked

            hidden = (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8
            kwargs = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "mlp_ratio": 2 * hidden / embed_dim}
        else:
            kwargs = {"mlp_ratio": mlp_ratio}
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, init_values=init_values, num_classes=0, qkv_bias=True,
            dynamic_img_size=False, **kwargs)
        self.grid = img_size // patch_size
        self.img_size = img_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (ViT-L fine-tuning memory): timm's own switch."""
        self.vit.set_grad_checkpointing(enable)

    def tokens(self, x: torch.Tensor, keep_last: int = 1) -> list[torch.Tensor]:
        """Normalised token sequences (B, 1 + N, D) of the last ``keep_last`` blocks, oldest first (timm's
        ``forward_intermediates``: patch embedding, CLS, position embedding, blocks, final norm)."""
        out = self.vit.forward_intermediates(x, indices=keep_last, norm=True, output_fmt="NLC",
                                             intermediates_only=True, return_prefix_tokens=True)
        return [torch.cat([prefix, patches], dim=1) for patches, prefix in out]

    def features(self, x: torch.Tensor, tap: str = "cls") -> torch.Tensor:
        """``cls``: CLS after the final norm; ``cls_patchmean``: CLS ‖ mean patch token (DINOv2 linear
        eval, last block); ``cls4_patchmean``: CLS of the last 4 blocks ‖ mean patch token of the last."""
        if tap == "cls":
            return self.tokens(x)[-1][:, 0]
        if tap == "cls_patchmean":
            last = self.tokens(x)[-1]
            return torch.cat([last[:, 0], last[:, 1:].mean(dim=1)], dim=-1)
        if tap == "cls4_patchmean":
            outs = self.tokens(x, keep_last=4)
            return torch.cat([o[:, 0] for o in outs] + [outs[-1][:, 1:].mean(dim=1)], dim=-1)
        raise ValueError(f"unknown DINOv2 tap {tap!r}")


def convert_meta_state_dict(state: dict, model: DinoV2) -> dict:
    """Meta's key format -> ours: drop ``mask_token``, map SwiGLU names, resize the positional embedding."""
    out = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        if key == "pos_embed" and value.ndim == 3:
            value = resize_pos_embed_meta(value.float(), (model.grid, model.grid))
        out["vit." + key] = value
    return out


# ---------------------------------------------------------------- Hugging Face format

def _hf_pairs(depth: int, swiglu: bool) -> list[tuple[str, str]]:
    """(Meta key, Hugging Face key) for every tensor except the fused / split attention projections."""
    pairs = [("cls_token", "embeddings.cls_token"), ("mask_token", "embeddings.mask_token"),
             ("pos_embed", "embeddings.position_embeddings"),
             ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
             ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
             ("norm.weight", "layernorm.weight"), ("norm.bias", "layernorm.bias")]
    mlp = (("w12", "weights_in"), ("w3", "weights_out")) if swiglu else (("fc1", "fc1"), ("fc2", "fc2"))
    for i in range(depth):
        m, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.output.dense"),
                     *((f"mlp.{x}", f"mlp.{y}") for x, y in mlp)):
            pairs += [(f"{m}{a}.weight", f"{h}{b}.weight"), (f"{m}{a}.bias", f"{h}{b}.bias")]
        pairs += [(f"{m}ls1.gamma", f"{h}layer_scale1.lambda1"), (f"{m}ls2.gamma", f"{h}layer_scale2.lambda1")]
    return pairs


def hf_to_meta(state: dict, depth: int, swiglu: bool = False) -> dict:
    """Hugging Face ``Dinov2Model`` keys -> Meta's checkpoint keys (q, k, v fused into qkv)."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out = {meta: state[hf] for meta, hf in _hf_pairs(depth, swiglu) if hf in state}
    for i in range(depth):
        a = f"encoder.layer.{i}.attention.attention."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state[f"{a}{p}.{kind}"] for p in ("query", "key", "value")])
    return out


def meta_to_hf(state: dict, depth: int, swiglu: bool = False) -> dict:
    """Meta's checkpoint keys -> Hugging Face ``Dinov2Model`` keys (qkv split into query, key, value)."""
    out = {hf: state[meta] for meta, hf in _hf_pairs(depth, swiglu) if meta in state}
    for i in range(depth):
        a = f"encoder.layer.{i}.attention.attention."
        for kind in ("weight", "bias"):
            for name, part in zip(("query", "key", "value"), state[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)):
                out[f"{a}{name}.{kind}"] = part.clone()
    return out


def read_hf_config(folder: Path) -> dict:
    import json

    cfg = json.loads((Path(folder) / "config.json").read_text())
    if cfg.get("model_type") != "dinov2":
        raise ValueError(f"{folder}: config.json describes a {cfg.get('model_type')!r} model, not a DINOv2")
    return cfg


def load_hf_snapshot(folder: Path) -> dict:
    """A Hugging Face DINOv2 snapshot (``config.json`` + ``model.safetensors``) as a Meta-format state dict."""
    from safetensors.torch import load_file

    from probebench.errors import ProbebenchError

    try:
        cfg = read_hf_config(folder)
    except ValueError as exc:
        raise ProbebenchError(str(exc)) from exc
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ProbebenchError(f"{folder}: no .safetensors file beside config.json")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return hf_to_meta(state, cfg["num_hidden_layers"], bool(cfg.get("use_swiglu_ffn")))


def check_hf_snapshot(folder: Path, name: str, arch: dict) -> None:
    """The snapshot's architecture must be the chosen model's; the error names both."""
    from probebench.errors import ProbebenchError

    try:
        cfg = read_hf_config(folder)
    except ValueError as exc:
        raise ProbebenchError(str(exc)) from exc
    theirs = (cfg.get("hidden_size"), cfg.get("num_hidden_layers"), cfg.get("num_attention_heads"),
              bool(cfg.get("use_swiglu_ffn")), cfg.get("patch_size", 14))
    ours = (arch["embed_dim"], arch["depth"], arch["num_heads"], arch.get("ffn") == "swiglu", arch["patch_size"])
    if theirs != ours:
        fmt = "hidden {}, {} layers, {} heads, swiglu {}, patch {}"
        raise ProbebenchError(f"{folder} holds a DINOv2 with {fmt.format(*theirs)}, but {name} is "
                              f"{fmt.format(*ours)}; choose the matching --model")
