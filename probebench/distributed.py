"""torchrun support: process-group set-up, the rank's device, and small collective helpers.

Under ``torchrun --nproc-per-node N -m probebench finetune ...`` each rank trains on a disjoint shard
of every global batch and gradients are averaged by DistributedDataParallel; only rank 0 writes.
Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def rank_device(device: str) -> str:
    """On CUDA under torchrun, each rank takes ``cuda:LOCAL_RANK`` unless a device is named."""
    if device == "auto" and dist.is_initialized() and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum scalars over ranks (identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    packed = torch.stack([v.double() for v in values])
    dist.all_reduce(packed)
    return list(packed)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
