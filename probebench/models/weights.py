"""Find, verify and load pretrained weights: explicit file, torch hub cache, or a download (``config`` is a
``models.config.ModelConfig``, not imported here: the family contract there calls this module).

Checkpoints are accepted exactly as torchvision and Meta publish them and always loaded with
``weights_only=True``. A checkpoint for the wrong architecture is refused with the mismatching keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from probebench.errors import NotOnThisMachine, ProbebenchError, did_you_mean
from probebench.data.filehash import content_digests
from probebench.models.hub import hub_file



FOLDER_CONFIGS = ("config.json", "open_clip_config.json")  # what makes a folder a model (its architecture)


def resolve_weights(config, weights: str = "auto", allow_download: bool | None = None) -> Path:
    """The checkpoint file to load: ``weights`` if it is a path, else the hub cache, else a download."""
    if weights not in ("auto", "pretrained", "", None):
        path = Path(weights).expanduser()
        if not (path.is_file() or (path.is_dir() and any((path / f).is_file() for f in FOLDER_CONFIGS))):
            raise NotOnThisMachine(f"--weights {weights!r}: no such file or snapshot folder ({path}); --weights "
                                   "takes auto (hub cache, then download), random or random:SEED (untrained), a "
                                   "checkpoint file, or a model folder (Hugging Face snapshot, timm or open_clip folder)"
                                   + did_you_mean(str(weights), ("auto", "random", "pretrained")))
        return path
    return config.family.find_weights(config, allow_download)


def resolve_tap_head(config, tap: str, head_weights: str | None = None,
                     allow_download: bool | None = None) -> Path:
    """The checkpoint of a tap's pretrained layer (DINOv2's ``*_linear4_head.pth``): ``head_weights`` if given,
    else the hub cache under its official name, else a download; found like the backbone's."""
    file, url, _ = config.tap_heads[tap]
    if head_weights:
        path = Path(head_weights).expanduser()
        if not path.is_file():
            raise NotOnThisMachine(f"--head-weights file not found: {path}")
        return path
    return hub_file(file, url, None, allow_download, f"no {tap} layer for {config.name}",
                     "or pass --head-weights PATH (or --weights random).")


def refuse_non_finite(state: dict, path: str | Path) -> None:
    """A NaN or infinite weight (a damaged or diverged checkpoint) would turn every feature into NaN."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ProbebenchError(f"weights file {path} holds non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                              f"{', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}; it is damaged or from a diverged "
                              "training run: download it again or give another --weights")


def load_plain(module: nn.Module, state: dict, path: str | Path) -> None:
    """Load a plain state dict strictly (a Linear layer's ``weight`` and ``bias``), naming what does not fit."""
    own = module.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        got = {k: tuple(v.shape) for k, v in state.items()}
        want = {k: tuple(v.shape) for k, v in own.items()}
        raise ProbebenchError(f"{path} does not fit: it holds {got}, expected {want}")
    refuse_non_finite(state, path)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def sha256_file(path: str | Path) -> str:
    """Full sha256 of a weights file (memoised on disk by path, size, mtime and inode, see ``filehash``); of a
    snapshot folder, over its ``config.json`` and weight files."""
    path = Path(path)
    if path.is_dir():
        parts = [f"{p.name}:{sha256_file(p)}" for p in sorted(path.iterdir())
                 if p.name in FOLDER_CONFIGS or p.suffix in (".safetensors", ".bin", ".pth")]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return content_digests([str(path.resolve())])[0]


def safe_load(path: str | Path, what: str, remedy: str):
    """``torch.load(weights_only=True)`` whose failures are one probebench message: a file holding other
    objects is refused without PyTorch's advice to retry with ``weights_only=False`` (which would run them)."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ProbebenchError(f"{what} {path} holds Python objects other than tensors and plain values, so it was "
                              "not loaded: unpickling them could run arbitrary code. Use a checkpoint saved as a "
                              f"state dict (or .safetensors); {remedy}") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProbebenchError(f"{what} {path} cannot be read (truncated or damaged: {first}); {remedy}") from None


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from an official checkpoint (plain, or wrapped under ``state_dict`` / ``model``).

    ``.safetensors`` files load without pickle (a Hugging Face snapshot folder is its family's ``load_snapshot``).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
    except Exception as exc:
        raise ProbebenchError(f"cannot read weights file {path}: {exc}") from exc
    obj = safe_load(path, "weights file", "download it again or give another --weights")
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ProbebenchError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def load_into(model: nn.Module, config, state: dict, path: str | Path) -> None:
    """Load an official state dict strictly; on mismatch name the keys, so a wrong file is obvious; a NaN or
    infinite weight (a damaged or diverged checkpoint) is refused: it would turn every feature into NaN."""
    refuse_non_finite(state, path)
    state = config.family.convert(state, model, config)
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
