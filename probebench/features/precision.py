"""One precision vocabulary: ``fp32``, ``bf16``, ``fp16`` (autocast dtypes), plus ``auto`` where it is a runtime
choice (fine-tuning). The names live in ``validate`` (no torch); the one dtype map is here."""

from __future__ import annotations

import torch

from probebench.validate import PRECISIONS

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert tuple(AUTOCAST) == PRECISIONS


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: plain fp32)."""
    return AUTOCAST[precision]


def resolve(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that has it, else fp16 there (with a grad scaler); fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"
