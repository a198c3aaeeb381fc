"""What a model is: its registry entry (``ModelConfig``), its preprocessing, and the contract of a model family.

A ``Family`` is everything that differs between model libraries (torchvision, Meta's DINOv2, timm): how the
architecture is built, where official weights are found, how a checkpoint's keys are converted, and which
tensor a feature tap reads. Each family lives in its own module and is one entry of ``registry.FAMILIES``;
nothing outside a family's module asks which family a model belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from probebench.errors import ProbebenchError

if TYPE_CHECKING:  # annotations only: the family modules import torch, this module does not need to
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side (or, ``squash``, both sides), centre-crop, normalise: the study's pipeline, no
    augmentation. ``squash`` is what Hugging Face processors with a height x width size do (SigLIP, ViT, DINOv3)."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"  # "bilinear" (torchvision models) or "bicubic" (DINOv2)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    draft: bool = False  # JPEG: decode at a reduced scale near the resize target (PIL draft), much faster
    source: str = "registry"  # where these settings came from (not part of the cache key: the numbers are)
    resize_mode: str = "shortest"  # "shortest": the shorter side to ``resize``; "squash": the image to resize x resize
    crop_offset: str = "round"  # centre-crop offset: "round" (torchvision, timm, open_clip) or "floor" (transformers)

    def as_dict(self) -> dict:
        out = {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
               "mean": list(self.mean), "std": list(self.std), "draft": self.draft}
        if self.resize_mode != "shortest":  # recorded only when set: the keys of earlier stores stay as they were
            out["resize_mode"] = self.resize_mode
        if self.crop_offset != "round":
            out["crop_offset"] = self.crop_offset
        return out

    def describe(self) -> str:
        fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        squash = " squash" if self.resize_mode == "squash" else ""
        return (f"{self.resize}/{self.crop}{squash} {self.interpolation}, mean {fmt(self.mean)}, std {fmt(self.std)} "
                f"[{self.source}]")


def read_json(path: Path, hint: str = "") -> dict:
    """A model folder's JSON file (``config.json``, ``preprocessor_config.json``, ``open_clip_config.json``), or an
    error naming the file."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ProbebenchError(f"{path}: unreadable ({exc}){hint}") from exc


HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as Hugging Face image processors store them


def hf_preprocessing(folder, base: Preprocessing) -> Preprocessing:
    """A Hugging Face snapshot's ``preprocessor_config.json`` (size, crop size, mean, std, resample) as our
    Preprocessing; ``base`` when the snapshot has no such file."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return base
    cfg = read_json(path)

    def edge(value, what):
        if isinstance(value, (int, float)):
            return int(value)
        if isinstance(value, dict):
            if "shortest_edge" in value:
                return int(value["shortest_edge"])
            if value.get("height") == value.get("width") and value.get("height"):
                return int(value["height"])  # resized to height x width: squashed
        raise ProbebenchError(f"{path}: {what} {value!r} is not a shortest edge or a square size; probebench "
                              "resizes the shorter side and centre-crops (set --resize/--crop instead)")

    if cfg.get("do_rescale", True) is False:
        raise ProbebenchError(f"{path}: do_rescale = false (pixels in 0-255) is not supported")
    resize = edge(cfg["size"], "size") if cfg.get("do_resize", True) and "size" in cfg else base.resize
    crop = edge(cfg["crop_size"], "crop_size") if cfg.get("do_center_crop", True) and "crop_size" in cfg else resize
    resample = cfg.get("resample", 3)
    if resample not in HF_RESAMPLE:
        raise ProbebenchError(f"{path}: resample {resample} is not bilinear (2) or bicubic (3)")
    if cfg.get("do_normalize", True):
        mean, std = tuple(cfg.get("image_mean", base.mean)), tuple(cfg.get("image_std", base.std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    if crop > resize:
        raise ProbebenchError(f"{path}: crop_size {crop} is larger than size {resize}")
    squash = cfg.get("do_resize", True) and isinstance(cfg.get("size"), dict) and "height" in cfg["size"]
    return replace(base, resize=resize, crop=crop, interpolation=HF_RESAMPLE[resample],
                   mean=tuple(float(m) for m in mean), std=tuple(float(x) for x in std),
                   source="preprocessor_config.json", resize_mode="squash" if squash else "shortest",
                   crop_offset="floor")  # transformers' center_crop: (size - crop) // 2


def with_normalization(pre: Preprocessing, mean=None, std=None) -> Preprocessing:
    """``pre`` with a user's mean/std (3 values, or 1 for all channels); both are checked."""
    out = pre
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        try:
            vals = (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ProbebenchError(f"--{name} {value!r}: expected 1 or 3 numbers") from None
        if not all(math.isfinite(v) for v in vals):
            raise ProbebenchError(f"--{name} values must be finite, got {list(vals)}")
        if len(vals) == 1:
            vals = vals * 3
        if len(vals) != 3:
            raise ProbebenchError(f"--{name} needs 1 or 3 numbers, got {len(vals)}: {list(value)}")
        if name == "std" and min(vals) <= 0:
            raise ProbebenchError(f"--std values must be positive, got {list(vals)}")
        out = replace(out, **{name: vals}, source=f"{pre.source} + --mean/--std")
    return out



def model_preprocessing(config: ModelConfig, weights_path: Path | None, resize: int | None = None,
                        crop: int | None = None, mean=None, std=None, draft: bool = False,
                        interpolation: str | None = None) -> Preprocessing:
    """The preprocessing a model gets: its registry entry, a Hugging Face snapshot's
    ``preprocessor_config.json`` (an open_clip folder's ``preprocess_cfg``) when the weights are one, then the user's
    resize/crop and mean/std."""
    pre: Preprocessing = config.preprocessing
    if weights_path is not None and Path(weights_path).is_dir():
        pre = config.family.snapshot_preprocessing(Path(weights_path), pre)
    if resize or crop:
        crop = crop or pre.crop
        pre = replace(pre, resize=resize or max(pre.resize, crop), crop=crop)
    if pre.crop > pre.resize:
        raise ProbebenchError(f"crop {pre.crop} is larger than resize {pre.resize}")
    from probebench.validate import check_options

    check_options(interpolation=interpolation)
    if interpolation:  # e.g. the study's one bilinear resize for every model
        pre = replace(pre, interpolation=interpolation, source=f"{pre.source} + --interpolation")
    return replace(with_normalization(pre, mean, std), draft=draft)


@dataclass(frozen=True)
class Card:
    """What a named backbone's model card says beyond the numbers: where it comes from, its licence, whether the
    hub asks users to accept terms first, and which feature the card recommends (said in ``probebench models``)."""

    source: str  # e.g. "huggingface.co/microsoft/rad-dino"
    licence: str
    gated: bool
    feature: str  # the card's embedding in words, e.g. "CLS token (pooler_output)"


@dataclass(frozen=True)
class ModelConfig:
    """A registry entry, in the spirit of timm's pretrained configs."""

    name: str
    family: Family  # how the model is built, loaded and tapped (one of ``registry.FAMILIES``)
    arch: dict  # builder arguments
    taps: dict  # tap name -> feature dimension
    default_tap: str
    weight_file: str  # official file name in $TORCH_HOME/hub/checkpoints
    url: str
    weights_label: str  # what the weights are, for reports
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    hash_prefix: str | None = None  # torchvision puts the sha256 prefix in the file name
    tap_heads: dict = field(default_factory=dict)  # tap -> (official file, url, input tap) of a pretrained layer
    card: Card | None = None  # a named backbone's model card: source, licence, gated, the recipe's feature

    def feature_dim(self, tap: str | None = None) -> int:
        return self.taps[tap or self.default_tap]


def hub_repo_problem(name: str, repo: str, form: str) -> str | None:
    """Why ``repo`` (from the model ``name``) is not a hub repo ``<org>/<repo>``, answered without the network
    (None when it is one: it is resolved when the model is used, which may need the hub)."""
    return None if repo.count("/") == 1 and all(repo.split("/")) else f"{name!r}: expected {form}"


class Family:
    """The contract of a model family; subclasses override what differs from these defaults.

    ``prefix`` names a family whose models are named ``<prefix><model>`` (``timm:``) and configured on the fly by
    ``config_for``; the others' models are entries of the registry table. ``channels_last`` is the default memory
    format of its models (part of the cache key). ``finetune_layer`` is the layer ``finetune`` replaces (None: a new
    linear layer goes on the feature tap).
    """

    name = ""
    prefix: str | None = None
    channels_last = False
    snapshots = False  # reads a Hugging Face snapshot folder as weights
    extra: tuple[str, str] | None = None  # (module, pip extra) this family needs beyond the default install

    def missing_extra(self) -> str | None:
        """What to install when this family's optional library is missing (None when it is there); answered
        without importing it."""
        import importlib.util

        if self.extra is None or importlib.util.find_spec(self.extra[0]) is not None:
            return None
        return f'{self.name} models need the {self.extra[0]} library: pip install "probebench[{self.extra[1]}]"'

    def library(self):
        """The family's optional library, imported, or an error naming the extra to install."""
        import importlib

        try:
            return importlib.import_module(self.extra[0])
        except ImportError:
            raise ProbebenchError(self.missing_extra() or f"{self.extra[0]} cannot be imported") from None

    def config_for(self, name: str) -> ModelConfig:
        raise ProbebenchError(f"the {self.name} family has no models named by prefix")

    def name_problem(self, name: str) -> str | None:
        """Why a prefixed ``name`` is not one of this family's models (None when it is), without the network."""
        try:
            self.config_for(name)
        except ProbebenchError as exc:
            return str(exc)
        return None

    def with_arch(self, config: ModelConfig, overrides: dict) -> ModelConfig:
        """``config`` with a changed architecture (tests build tiny models); the taps follow the architecture."""
        return replace(config, arch={**config.arch, **overrides})

    def build(self, config: ModelConfig, img_size: int) -> nn.Module:
        """The bare architecture with its own (random) initialisation, sized for ``img_size`` crops."""
        raise NotImplementedError

    def features(self, backbone: nn.Module, config: ModelConfig, tap: str, images: torch.Tensor) -> torch.Tensor:
        """(B, D) features of ``images`` at ``tap``."""
        raise NotImplementedError

    def feature_dim(self, config: ModelConfig, backbone: nn.Module, tap: str) -> int:
        return config.feature_dim(tap)

    def find_weights(self, config: ModelConfig, allow_download: bool | None) -> Path:
        """The official weights file: the torch hub cache under its official name, else a download."""
        from probebench.models.hub import hub_file

        return hub_file(config.weight_file, config.url, config.hash_prefix, allow_download,
                        f"no weights for {config.name}",
                        f"or pass --weights PATH (with `run`: --weights {config.name}=PATH), or --weights random "
                        "for an untrained (random) backbone.")

    def load(self, backbone: nn.Module, config: ModelConfig, path: Path) -> None:
        """Official weights (a checkpoint file or a snapshot folder) into the built model, strictly: a file made
        for another architecture is refused with the keys that do not fit."""
        from probebench.models import weights as wts

        state = self.load_snapshot(path, config) if Path(path).is_dir() else wts.load_checkpoint(path)
        wts.load_into(backbone, config, state, path)

    def convert(self, state: dict, model: nn.Module, config: ModelConfig) -> dict:
        """An official checkpoint's state dict in the keys of the model ``build`` made."""
        return state

    def for_weights(self, config: ModelConfig, path: Path) -> ModelConfig:
        """``config`` for the weights at ``path``: a snapshot folder that carries its own architecture (Hugging
        Face ``config.json``, an open_clip config) defines the model; the entry keeps its recipe (tap, name)."""
        return config

    def snapshot_preprocessing(self, folder: Path, base: Preprocessing) -> Preprocessing:
        """The preprocessing a snapshot folder states (``preprocessor_config.json``), ``base`` where it is silent."""
        return hf_preprocessing(folder, base)

    def load_snapshot(self, folder: Path, config: ModelConfig) -> dict:
        """A Hugging Face snapshot folder as a state dict for ``convert`` (families with ``snapshots``)."""
        raise ProbebenchError(f"{folder}: Hugging Face snapshots are read for the DINOv2 models only")

    def finetune_layer(self, config: ModelConfig) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"<model family {self.name}>"
