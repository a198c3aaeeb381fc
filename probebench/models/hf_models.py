"""The Hugging Face family: vision models of the transformers library, named ``hf:<org>/<repo>`` (the local Hugging
Face cache, a download when online) or ``hf:<folder>`` (a snapshot: ``config.json`` + safetensors); the snapshot's
``config.json`` says which model it is and its ``preprocessor_config.json`` how images are prepared.

Models and their taps (the tap and its dimension decide the feature and are part of the cache key):

- DINOv2 (``dinov2``, ``dinov2_with_registers``), DINOv3 (``dinov3_vit``), ViT (``vit``): ``cls`` (the normalised
  CLS token), ``cls_patchmean`` (CLS ‖ mean of the patch tokens, register tokens left out), ``patchmean``;
- SigLIP (``siglip``, ``siglip_vision_model``): ``pooled`` (the attention-pooled image embedding), ``patchmean``;
- CLIP (``clip``, ``clip_vision_model``): ``embedding`` (the projected image embedding), ``pooled`` (before the
  projection).

Needs the ``hf`` extra: ``pip install "probebench[hf]"`` (transformers).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from probebench.errors import NotOnThisMachine, ProbebenchError
from probebench.models.config import (Card, Family, ModelConfig, Preprocessing, hf_preprocessing, hub_repo_problem,
                                      read_json)

HF_PREFIX = "hf:"
# model_type -> (transformers class, taps as name -> dimension factor of hidden_size, default tap, register key)
VIT_TAPS = {"cls": 1, "cls_patchmean": 2, "patchmean": 1}
KINDS = {
    "dinov2": ("Dinov2Model", VIT_TAPS, "cls", None),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", VIT_TAPS, "cls", "num_register_tokens"),
    "dinov3_vit": ("DINOv3ViTModel", VIT_TAPS, "cls", "num_register_tokens"),
    "vit": ("ViTModel", VIT_TAPS, "cls", None),
    "siglip_vision_model": ("SiglipVisionModel", {"pooled": 1, "patchmean": 1}, "pooled", None),
    "clip_vision_model": ("CLIPVisionModelWithProjection", {"embedding": 0, "pooled": 1}, "embedding", None),
}
FULL = {"siglip": "siglip_vision_model", "clip": "clip_vision_model"}  # a full model's image tower


def snapshot_folder(source: str, allow_download: bool | None = None) -> Path:
    """A local snapshot folder as given, or a hub repo's snapshot from the Hugging Face cache (a download when
    allowed); offline and absent, an error naming the repo, the cache and what to do."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ProbebenchError(f"hf:{source}: {path} has no config.json (a Hugging Face snapshot folder has one)")
        return path
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise NotOnThisMachine(f"hf:{source}: no such snapshot folder, and not a hub repo name <org>/<repo>")
    from huggingface_hub import snapshot_download

    from probebench.models.hub import downloads_allowed

    allow = downloads_allowed() if allow_download is None else allow_download
    try:
        return Path(snapshot_download(source, local_files_only=not allow,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:
        name = type(exc).__name__
        gated = "gated" in str(exc).lower() or name in ("GatedRepoError",)
        raise NotOnThisMachine(
            f"hf:{source}: " + ("the repo is gated: accept its terms on huggingface.co and log in (huggingface-cli "
                                "login), then download it once; " if gated else "") +
            f"not in the local Hugging Face cache ({name}){'' if allow else ' and downloads are off'}; download it "
            f"once with network (huggingface-cli download {source}), or give the snapshot folder: hf:/path/to/it"
        ) from exc


def snapshot_arch(folder: Path, what: str) -> tuple[dict, dict, str]:
    """A snapshot's ``config.json`` as (arch, taps with their dimensions, default tap); ``what`` names it in errors."""
    cfg = read_json(folder / "config.json")
    model_type = FULL.get(cfg.get("model_type"), cfg.get("model_type"))
    if model_type not in KINDS:
        raise ProbebenchError(f"{what}: model_type {cfg.get('model_type')!r} is not one probebench reads; "
                              f"it reads {', '.join(sorted({*KINDS, *FULL}))}")
    vision = cfg.get("vision_config", cfg) if cfg.get("model_type") in FULL else cfg
    return (*kind_arch(model_type, vision, cfg.get("projection_dim")), KINDS[model_type][2])


def kind_arch(model_type: str, vision: dict, projection=None) -> tuple[dict, dict]:
    """(arch, taps) of an image model of ``model_type`` whose (vision) config has these values."""
    klass, taps, _, registers = KINDS[model_type]
    hidden = int(vision.get("hidden_size", 768))
    projection = vision.get("projection_dim", projection or hidden)  # what the image tower projects to
    dims = {t: hidden * f if f else int(projection) for t, f in taps.items()}
    arch = {"model_type": model_type, "class": klass, "image_size": int(vision.get("image_size", 224)),
            "registers": int(vision.get(registers, 0) or 0) if registers else 0}
    return arch, dims


def hf_config(name: str) -> ModelConfig:
    """A registry entry for ``hf:<org>/<repo>`` or ``hf:<folder>``, from the snapshot's own config files."""
    source = name[len(HF_PREFIX):]
    folder = snapshot_folder(source)
    arch, dims, default = snapshot_arch(folder, name)
    size = arch["image_size"]
    pre = hf_preprocessing(folder, Preprocessing(resize=size, crop=size, interpolation="bicubic"))
    return ModelConfig(name=name, family=HF, arch={"source": source, **arch}, taps=dims, default_tap=default,
                       weight_file="", url=f"https://huggingface.co/{source}",
                       weights_label=f"hugging face {source}", preprocessing=pre)


def hf_entry(name: str, repo: str, model_type: str, values: dict, default_tap: str, pre: Preprocessing,
             card: Card) -> ModelConfig:
    """A named backbone on the hub: its architecture (``values``: the repo's ``config.json`` values, so that
    random weights need no download) and its model card's preprocessing and feature."""
    arch, dims = kind_arch(model_type, values)
    return ModelConfig(name=name, family=HF, arch={"source": repo, **arch, "hf_config": values}, taps=dims,
                       default_tap=default_tap, weight_file="", url=f"https://huggingface.co/{repo}",
                       weights_label=f"hugging face {repo}", preprocessing=pre, card=card)


class HfFamily(Family):
    name = "hf"
    prefix = HF_PREFIX
    snapshots = True
    extra = ("transformers", "hf")

    def config_for(self, name):
        return hf_config(name)

    def name_problem(self, name):
        source = name[len(HF_PREFIX):]
        if Path(source).expanduser().is_dir():
            return None
        return hub_repo_problem(name, source, "hf:<org>/<repo> or hf:<snapshot folder>")

    def build(self, config, img_size):
        transformers = self.library()
        if "hf_config" in config.arch:  # a named entry: its architecture without the hub
            cfg = transformers.AutoConfig.for_model(config.arch["model_type"], **config.arch["hf_config"])
        else:
            cfg = transformers.AutoConfig.from_pretrained(str(config.arch.get("folder")
                                                              or snapshot_folder(config.arch["source"])))
            if config.arch["model_type"] != cfg.model_type:  # a full CLIP / SigLIP: its image tower
                cfg = cfg.vision_config
        return getattr(transformers, config.arch["class"])(cfg)

    def for_weights(self, config, path):
        """A named entry given a snapshot folder: the snapshot's architecture, the entry's tap and recipe."""
        if "hf_config" not in config.arch or not Path(path).is_dir():
            return config
        arch, dims, _ = snapshot_arch(Path(path), f"--weights {path}")
        if arch["model_type"] != config.arch["model_type"]:
            raise ProbebenchError(f"--weights {path}: a {arch['model_type']} snapshot, but {config.name} is a "
                                  f"{config.arch['model_type']} model")
        rest = {k: v for k, v in config.arch.items() if k != "hf_config"}
        return replace(config, arch={**rest, **arch, "folder": str(path)}, taps=dims)

    def find_weights(self, config, allow_download):
        return snapshot_folder(config.arch["source"], allow_download)

    def load(self, backbone, config, path):
        """The snapshot read by transformers itself (its key conversions between versions included), then copied
        into the built model of the same class."""
        from probebench.models.weights import refuse_non_finite

        transformers = self.library()
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # a full CLIP's unused text tower is expected, not news
        try:
            state = getattr(transformers, config.arch["class"]).from_pretrained(str(path)).state_dict()
        except Exception as exc:
            raise ProbebenchError(f"{path}: transformers cannot read it as {config.arch['class']} ({exc})") from exc
        finally:
            transformers.logging.set_verbosity(level)
        refuse_non_finite(state, path)
        backbone.load_state_dict(state)

    def features(self, backbone, config, tap, images):
        import torch

        kind, registers = config.arch["model_type"], config.arch["registers"]
        other = images.shape[-1] != config.arch["image_size"]
        if kind == "clip_vision_model":
            pooled = backbone.vision_model(pixel_values=images, interpolate_pos_encoding=other).pooler_output
            return pooled if tap == "pooled" else backbone.visual_projection(pooled)
        extra = {"interpolate_pos_encoding": other} if kind in ("vit", "siglip_vision_model") else {}
        out = backbone(pixel_values=images, **extra)
        if tap == "pooled":
            return out.pooler_output
        tokens = out.last_hidden_state
        patches = tokens[:, (0 if kind == "siglip_vision_model" else 1 + registers):]
        if tap == "patchmean":
            return patches.mean(dim=1)
        if tap == "cls_patchmean":
            return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)
        return tokens[:, 0]

    def with_arch(self, config, overrides):
        """A named entry with other ``config.json`` values (tests build tiny ones); the taps follow."""
        if "hf_config" not in config.arch:
            raise ProbebenchError("arch_overrides apply to the named models only")
        hf_config = {**config.arch["hf_config"], **overrides}
        arch, dims = kind_arch(config.arch["model_type"], hf_config)
        return replace(config, arch={**config.arch, **arch, "hf_config": hf_config}, taps=dims)


HF = HfFamily()
