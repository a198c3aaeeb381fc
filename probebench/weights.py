"""Find, verify and load pretrained weights: explicit file, torch hub cache, or a download.

Checkpoints are accepted exactly as torchvision and Meta publish them and always loaded with
``weights_only=True``. A checkpoint for the wrong architecture is refused with the mismatching keys.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from probebench.errors import ProbebenchError
from probebench.registry import ModelConfig


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own rule for where hub downloads live)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def downloads_allowed() -> bool:
    """Downloads are tried unless ``PROBEBENCH_OFFLINE=1``."""
    return os.environ.get("PROBEBENCH_OFFLINE", "") not in ("1", "true", "yes")


def resolve_weights(config: ModelConfig, weights: str = "auto", allow_download: bool | None = None) -> Path:
    """The checkpoint file to load: ``weights`` if it is a path, else the hub cache, else a download."""
    if weights not in ("auto", "pretrained", "", None):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ProbebenchError(f"weights file not found: {path}")
        return path
    cached = hub_checkpoint_dir() / config.weight_file
    if cached.is_file():
        return cached
    allow = downloads_allowed() if allow_download is None else allow_download
    if allow and _reachable(config.url):
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(config.url, str(cached), hash_prefix=config.hash_prefix, progress=True)
            return cached
        except Exception as exc:  # network failures, hash mismatch
            cached.unlink(missing_ok=True)
            reason = f"the download from {config.url} failed ({exc})"
    else:
        reason = "no network to download it" if allow else "downloads are off (PROBEBENCH_OFFLINE=1)"
    raise ProbebenchError(
        f"no weights for {config.name}: {reason}.\n"
        f"Put the official file {config.weight_file} into {cached.parent}/ (from {config.url}),\n"
        f"or pass --weights PATH, or --weights random for an untrained (random) backbone.")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Full sha256 of a weights file (memoised per path, size and mtime)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from an official checkpoint (plain, or wrapped under ``state_dict`` / ``model``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ProbebenchError(f"cannot read weights file {path}: {exc}") from exc
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ProbebenchError(f"weights file {path} does not hold a state dict of tensors")
    return obj


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def convert_densenet_legacy(state: dict) -> dict:
    """torchvision's own rename of the published DenseNet keys (``norm.1`` -> ``norm1``)."""
    out = {}
    for key, value in state.items():
        m = _DENSENET_LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def load_into(model: nn.Module, config: ModelConfig, state: dict, path: str | Path) -> None:
    """Load an official state dict strictly; on mismatch name the keys, so a wrong file is obvious."""
    if config.family == "torchvision" and config.arch["builder"].startswith("densenet"):
        state = convert_densenet_legacy(state)
    if config.family == "dinov2":
        from probebench.dinov2 import convert_meta_state_dict

        state = convert_meta_state_dict(state, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        def few(keys):
            return ", ".join(keys[:6]) + (f" … (+{len(keys) - 6})" if len(keys) > 6 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 "wrong shapes: " + few([f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                                         for k in wrong_shape]) if wrong_shape else ""]
        raise ProbebenchError(
            f"weights file {path} does not fit {config.name}: " + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
