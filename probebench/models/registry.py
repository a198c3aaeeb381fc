"""Model registry: one declarative entry per backbone and one ``create_model`` entry point.

Each entry says how to build the backbone, where its weights come from (official file name and
URL), which feature taps it exposes with their dimensions, and its preprocessing. Every model
built here is a ``FeatureExtractor``: ``forward(images) -> (B, D)`` features at the chosen tap.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from probebench.errors import ProbebenchError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, normalise: the study's pipeline, no augmentation."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"  # "bilinear" (torchvision models) or "bicubic" (DINOv2)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    draft: bool = False  # JPEG: decode at a reduced scale near the resize target (PIL draft), much faster
    source: str = "registry"  # where these settings came from (not part of the cache key: the numbers are)

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "draft": self.draft}

    def describe(self) -> str:
        fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        return (f"{self.resize}/{self.crop} {self.interpolation}, mean {fmt(self.mean)}, std {fmt(self.std)} "
                f"[{self.source}]")


HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as Hugging Face image processors store them


def hf_preprocessing(folder, base: Preprocessing) -> Preprocessing:
    """A Hugging Face snapshot's ``preprocessor_config.json`` (size, crop size, mean, std, resample) as our
    Preprocessing; ``base`` when the snapshot has no such file."""
    import json
    from pathlib import Path

    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return base
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProbebenchError(f"{path}: unreadable ({exc})") from exc

    def edge(value, what):
        if isinstance(value, (int, float)):
            return int(value)
        if isinstance(value, dict):
            if "shortest_edge" in value:
                return int(value["shortest_edge"])
            if value.get("height") == value.get("width") and value.get("height"):
                return int(value["height"])
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
    return replace(base, resize=resize, crop=crop, interpolation=HF_RESAMPLE[resample],
                   mean=tuple(float(m) for m in mean), std=tuple(float(x) for x in std),
                   source="preprocessor_config.json")


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



@dataclass(frozen=True)
class ModelConfig:
    """A registry entry, in the spirit of timm's pretrained configs."""

    name: str
    family: str  # "torchvision" or "dinov2"
    arch: dict  # builder arguments
    taps: dict  # tap name -> feature dimension
    default_tap: str
    weight_file: str  # official file name in $TORCH_HOME/hub/checkpoints
    url: str
    weights_label: str  # what the weights are, for reports
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    hash_prefix: str | None = None  # torchvision puts the sha256 prefix in the file name
    tap_heads: dict = field(default_factory=dict)  # tap -> (official file, url) of a pretrained layer on another tap

    def feature_dim(self, tap: str | None = None) -> int:
        return self.taps[tap or self.default_tap]


_TV = "https://download.pytorch.org/models/"
_FB = "https://dl.fbaipublicfiles.com/dinov2/"
_DINO_PRE = Preprocessing(interpolation="bicubic")


def _dinov2(name: str, size: str, dim: int, depth: int, heads: int, ffn: str = "mlp") -> ModelConfig:
    arch = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": 14, "mlp_ratio": 4.0, "ffn": ffn,
            "init_values": 1.0}
    head = f"dinov2_vit{size}14_linear4_head.pth"  # Meta's ImageNet linear layer of the ``_lc`` hub models
    return ModelConfig(
        name=name, family="dinov2", arch=arch, taps=dinov2_taps(dim), default_tap="cls",
        weight_file=f"dinov2_vit{size}14_pretrain.pth",
        url=f"{_FB}dinov2_vit{size}14/dinov2_vit{size}14_pretrain.pth",
        weights_label="LVD-142M", preprocessing=_DINO_PRE,
        tap_heads={LC_TAP: (head, f"{_FB}dinov2_vit{size}14/{head}")})


LC_TAP = "imagenet_logits"  # the study's DINOv2 features: the 1,000 ImageNet logits of torch.hub's ``*_lc`` models


def dinov2_taps(dim: int) -> dict:
    return {"cls": dim, "cls_patchmean": 2 * dim, "cls4_patchmean": 5 * dim, LC_TAP: 1000}


REGISTRY: dict[str, ModelConfig] = {
    "vgg16": ModelConfig(
        "vgg16", "torchvision", {"builder": "vgg16"}, {"fc7": 4096}, "fc7",
        "vgg16-397923af.pth", _TV + "vgg16-397923af.pth", "IMAGENET1K_V1", hash_prefix="397923af"),
    "resnet50": ModelConfig(
        "resnet50", "torchvision", {"builder": "resnet50"}, {"avgpool": 2048}, "avgpool",
        "resnet50-0676ba61.pth", _TV + "resnet50-0676ba61.pth", "IMAGENET1K_V1", hash_prefix="0676ba61"),
    "densenet121": ModelConfig(
        "densenet121", "torchvision", {"builder": "densenet121"}, {"pool": 1024}, "pool",
        "densenet121-a639ec97.pth", _TV + "densenet121-a639ec97.pth", "IMAGENET1K_V1",
        hash_prefix="a639ec97"),
    "dinov2_s": _dinov2("dinov2_s", "s", 384, 12, 6),
    "dinov2_b": _dinov2("dinov2_b", "b", 768, 12, 12),
    "dinov2_l": _dinov2("dinov2_l", "l", 1024, 24, 16),
    "dinov2_g": _dinov2("dinov2_g", "g", 1536, 40, 24, ffn="swiglu"),
}


TIMM_PREFIX = "timm:"


def get_config(name: str) -> ModelConfig:
    """The registry entry for ``name`` (or a ``timm:<model>`` entry), or an error listing the known names."""
    if name.startswith(TIMM_PREFIX):
        return timm_config(name)
    try:
        return REGISTRY[name]
    except KeyError:
        raise ProbebenchError(f"unknown model {name!r}{did_you_mean(name, REGISTRY)}; known models: "
                              f"{', '.join(REGISTRY)}, or timm:<name> for any timm model") from None


def timm_config(name: str) -> ModelConfig:
    """A registry entry for ``timm:<model>[.<tag>]`` or ``timm:hf-hub:<org>/<repo>``: timm's pretrained config
    gives the preprocessing, the pre-logits features are the tap."""
    import difflib

    import timm
    from timm.models import get_pretrained_cfg

    arch = name[len(TIMM_PREFIX):]
    if arch.startswith("hf-hub:"):
        cfg = _hf_hub_timm_cfg(arch[len("hf-hub:"):])
    else:
        base = arch.split(".")[0]
        if not timm.is_model(base):
            close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
            raise ProbebenchError(f"unknown timm model {base!r}" + (f"; did you mean: {', '.join(close)}?" if close
                                                                   else "; see timm.list_models()"))
        if "." in arch:
            tags = list(timm.list_pretrained(f"{base}.*"))
            if arch not in tags:
                raise ProbebenchError(f"timm model {base!r} has no pretrained tag {arch.split('.', 1)[1]!r}; tags: "
                                      + (", ".join(t.split(".", 1)[1] for t in tags) or "none (use timm:" + base + ")"))
        pc = get_pretrained_cfg(arch) or get_pretrained_cfg(base)
        cfg = pc.to_dict() if pc is not None else {}
    from timm.data import resolve_data_config

    data = resolve_data_config(pretrained_cfg={"architecture": arch, **cfg})  # timm's defaults where cfg is silent
    crop, interp = int(data["input_size"][-1]), data["interpolation"]
    pre = Preprocessing(resize=int(math.floor(crop / data["crop_pct"])), crop=crop,  # timm's eval resize rule
                        interpolation=interp if interp in ("bilinear", "bicubic") else "bicubic",
                        mean=tuple(data["mean"]), std=tuple(data["std"]))
    return ModelConfig(name=name, family="timm", arch={"name": arch, "hf_hub_id": cfg.get("hf_hub_id"),
                                                        "architecture": cfg.get("architecture"),
                                                        "num_classes": cfg.get("num_classes")},
                       taps={"pre_logits": 0}, default_tap="pre_logits", weight_file="", url=cfg.get("url") or "",
                       weights_label=f"timm {cfg.get('tag') or cfg.get('hf_hub_id') or 'pretrained'}",
                       preprocessing=pre)


def _hf_hub_timm_cfg(repo: str) -> dict:
    """``config.json`` of a hub-hosted timm model, from the local Hugging Face cache or a download."""
    import json

    from probebench.models.weights import downloads_allowed

    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo, "config.json", local_files_only=not downloads_allowed())
    except Exception as exc:
        raise ProbebenchError(f"timm:hf-hub:{repo}: config.json is not in the local Hugging Face cache and cannot "
                              f"be downloaded ({type(exc).__name__}); download the repo once with network") from exc
    cfg = json.loads(open(path).read())
    return {**cfg.get("pretrained_cfg", {}), "architecture": cfg.get("architecture"), "hf_hub_id": repo,
            "num_classes": cfg.get("num_classes", cfg.get("pretrained_cfg", {}).get("num_classes", 1000))}


class FeatureExtractor(nn.Module):
    """A backbone plus a feature tap: ``forward(images) -> (B, D)``; records where its weights came from.
    ``tap_head``: a pretrained layer on another tap (DINOv2's ImageNet linear layer for ``imagenet_logits``)."""

    def __init__(self, config: ModelConfig, backbone: nn.Module, tap: str, weights: dict,
                 tap_head: nn.Module | None = None):
        super().__init__()
        self.config, self.backbone, self.tap, self.weights = config, backbone, tap, weights
        self.tap_head = tap_head
        self.feature_dim = (config.feature_dim(tap) if config.family != "timm"
                            else getattr(backbone, "head_hidden_size", None) or backbone.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.tap_head is not None:  # Meta's _LinearClassifierWrapper(layers=4): logits of cls4_patchmean
            return self.tap_head(self.backbone.features(images, "cls4_patchmean"))
        if self.config.family == "dinov2":
            return self.backbone.features(images, self.tap)
        if self.config.family == "timm":  # timm's pre-logits features: the input of the classifier
            return self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        return _torchvision_features(self.backbone, self.config.arch["builder"], images)


# The layer the study replaces in each torchvision model; its input is the model's feature tap, so the tap and the
# replaced layer are defined in this one place (finetune swaps the layer, extract reads its input).
REPLACED_LAYER = {"vgg16": "classifier.6", "resnet50": "fc", "densenet121": "classifier"}


def _torchvision_features(model: nn.Module, builder: str, x: torch.Tensor) -> torch.Tensor:
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


def build_backbone(config: ModelConfig, img_size: int) -> nn.Module:
    """The bare architecture with its own (random) initialisation; ``img_size`` sizes DINOv2's grid."""
    if config.family == "torchvision":
        import torchvision

        return getattr(torchvision.models, config.arch["builder"])(weights=None)
    if config.family == "dinov2":
        from probebench.models.dinov2 import DinoV2

        return DinoV2(img_size=img_size, **config.arch)
    if config.family == "timm":
        import timm

        arch = config.arch["name"]
        if arch.startswith("hf-hub:"):  # the architecture its config.json names (read by timm_config), no hub calls
            return timm.create_model(config.arch["architecture"], pretrained=False,
                                     num_classes=config.arch["num_classes"] or 1000)
        return timm.create_model(arch, pretrained=False)
    raise ProbebenchError(f"unknown model family {config.family!r}")


def random_seed(weights: str) -> int | None:
    """The seed of ``random`` / ``random:N`` weights, or None for real weights."""
    if weights == "random":
        return 0
    if isinstance(weights, str) and weights.startswith("random:"):
        try:
            return int(weights.split(":", 1)[1])
        except ValueError:
            raise ProbebenchError(f"--weights {weights!r}: expected random or random:SEED") from None
    return None


def create_model(name: str, weights: str = "auto", *, tap: str | None = None, img_size: int | None = None,
                 arch_overrides: dict | None = None, allow_download: bool | None = None,
                 head_weights: str | None = None) -> FeatureExtractor:
    """Build registry model ``name`` with weights from a file, the hub cache, a download, or ``"random"``.

    ``weights``: ``"auto"`` (hub cache, then download), ``"random"`` / ``"random:SEED"`` (seeded
    initialisation, flagged everywhere), or a path to a checkpoint in the official format. ``arch_overrides`` changes the
    architecture (tests use a tiny DINOv2); ``img_size`` is the crop the model will see.
    """
    from probebench.models import weights as wts

    config = get_config(name)
    if arch_overrides and config.family == "timm":
        raise ProbebenchError("arch_overrides apply to the built-in models only")
    if arch_overrides:
        config = replace(config, arch={**config.arch, **arch_overrides})
        if config.family == "dinov2":
            config = replace(config, taps=dinov2_taps(config.arch["embed_dim"]))
    tap = tap or config.default_tap
    if tap not in config.taps:
        raise ProbebenchError(f"model {name!r} has no feature tap {tap!r}; taps: {', '.join(config.taps)}")
    img_size = img_size or config.preprocessing.crop
    seed = random_seed(weights)
    with _seeded(seed or 0):
        backbone = build_backbone(config, img_size)
    if seed is not None:
        info = random_weights_info(seed)
    else:
        path = wts.resolve_weights(config, weights, allow_download=allow_download)
        if path.is_dir():  # a Hugging Face snapshot
            if config.family != "dinov2":
                raise ProbebenchError(f"{path}: Hugging Face snapshots are read for the DINOv2 models only")
            from probebench.models.dinov2 import check_hf_snapshot

            check_hf_snapshot(path, name, config.arch)
        state = wts.load_checkpoint(path)
        wts.load_into(backbone, config, state, path)
        info = checkpoint_info(config, path)
    backbone.eval()
    tap_head = None
    if tap in config.tap_heads:
        in_dim = config.taps["cls4_patchmean"]
        with _seeded(seed or 0):
            tap_head = nn.Linear(in_dim, config.taps[tap])
        if seed is None:
            path = wts.resolve_tap_head(config, tap, head_weights, allow_download=allow_download)
            state = wts.load_checkpoint(path)
            wts.load_plain(tap_head, state, path)
            info = {**info, **tap_head_info(path)}
    return FeatureExtractor(config, backbone, tap, info, tap_head).eval()


def tap_head_info(path) -> dict:
    from probebench.models.weights import sha256_file

    return {"head_source": str(path), "head_sha256": sha256_file(path)}


def random_weights_info(seed: int) -> dict:
    return {"source": "random", "sha256": "random", "seed": seed, "label": "random init"}


def checkpoint_info(config: ModelConfig, path) -> dict:
    """What the cache and the runs record about real weights: the file, its sha256 and what they are."""
    from probebench.models.weights import sha256_file

    return {"source": str(path), "sha256": sha256_file(path), "label": config.weights_label}


@contextlib.contextmanager
def _seeded(seed: int):
    """Run initialisation under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
