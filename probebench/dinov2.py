"""DINOv2 ViT/14 trunk on timm's blocks, loading Meta's checkpoints and computing what Meta's code computes.

Meta learns the positional embedding at 518 px (37 x 37 patches) and resizes it on the fly with
bicubic interpolation at ``scale_factor = (grid + 0.1) / 37`` and no antialiasing. We resize it once,
the same way, for the crop size the model is built for; any other resize differs by ~2e-2.
"""

from __future__ import annotations

import math

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
    """A DINOv2 trunk for square inputs of ``img_size`` px; ``features(x, tap)`` gives CLS-based features."""

    def __init__(self, img_size: int = 224, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 patch_size: int = 14, pretrain_img_size: int = 518, mlp_ratio: float = 4.0,
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
        self.pretrain_grid = pretrain_img_size // patch_size
        self.grid = img_size // patch_size
        self.img_size = img_size
        self.grad_checkpointing = False  # recompute block activations in backward (ViT-L fine-tuning memory)

    def tokens(self, x: torch.Tensor, keep_last: int = 1) -> list[torch.Tensor]:
        """Normalised token sequences (B, 1 + N, D) of the last ``keep_last`` blocks, oldest first."""
        vit = self.vit
        x = vit.patch_embed(x)
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos_embed
        x = vit.norm_pre(x)
        outputs = []
        depth = len(vit.blocks)
        for i, block in enumerate(vit.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i >= depth - keep_last:
                outputs.append(vit.norm(x))
        return outputs

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
