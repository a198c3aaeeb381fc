"""The open_clip family: CLIP-style image towers of the open_clip library, named ``open_clip:<model>`` (an
architecture: ``--weights FILE`` or random), ``open_clip:<model>@<tag>`` (one of open_clip's pretrained tags),
``open_clip:hf-hub:<org>/<repo>`` or ``open_clip:<folder>`` (``open_clip_config.json`` + weights, as the hub
holds them). Only the image tower is built and loaded (a text tower may need its own download).

Taps: ``embedding`` (``encode_image``: the projected image embedding, not normalised) and ``pooled`` (the same
before the projection, for ViT towers). Preprocessing follows open_clip's eval transform: ``resize_mode``,
interpolation, mean and std of the pretrained config or ``preprocess_cfg``.

Needs the ``open_clip`` extra: ``pip install "probebench[open_clip]"`` (open_clip_torch).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from probebench.errors import NotOnThisMachine, ProbebenchError, did_you_mean
from probebench.models.config import Card, Family, ModelConfig, Preprocessing, hub_repo_problem, read_json

OPEN_CLIP_PREFIX = "open_clip:"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults (OPENAI_DATASET_MEAN/STD)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
               "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin")  # open_clip's own order


def open_clip_preprocessing(cfg: dict, image_size: int, source: str) -> Preprocessing:
    """open_clip's eval transform as our Preprocessing: resize (shortest side or squash) to the image size,
    centre-crop, normalise."""
    mode = cfg.get("resize_mode") or "shortest"
    if mode not in ("shortest", "squash"):
        raise ProbebenchError(f"{source}: resize_mode {mode!r} (padding) is not one probebench does; it does "
                              "shortest and squash")
    interp = cfg.get("interpolation") or "bicubic"
    mean, std = tuple(cfg.get("mean") or OPENAI_MEAN), tuple(cfg.get("std") or OPENAI_STD)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return Preprocessing(resize=image_size, crop=image_size, interpolation="bilinear" if interp == "bilinear"
                         else "bicubic", mean=mean, std=std, source=source, resize_mode=mode)


def tower_arch(model_cfg: dict, source: str) -> tuple[dict, dict]:
    """(arch, taps) of the image tower an open_clip model config describes."""
    vision = dict(model_cfg.get("vision_cfg", {}))
    embed = int(model_cfg["embed_dim"])
    arch = {"source": source, "embed_dim": embed, "vision_cfg": vision,
            "quick_gelu": bool(model_cfg.get("quick_gelu", False))}
    if isinstance(vision.get("layers"), (list, tuple)):  # a modified ResNet: attention pooling ends in the projection
        return arch, {"embedding": embed}
    width = vision.get("width", 768) if not vision.get("timm_model_name") else vision.get("timm_width", 0)
    return arch, {"embedding": embed, "pooled": int(width)}  # 0: the timm trunk's width, known once built


def _image_size(arch: dict) -> int:
    size = arch["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _read_folder(folder: Path) -> dict:
    return read_json(folder / "open_clip_config.json", "; an open_clip folder holds open_clip_config.json and its "
                     "weights")


def _hub_file(repo: str, names, allow: bool, what: str) -> Path:
    """The first of ``names`` in hub repo ``repo``: the local Hugging Face cache, else a download when allowed."""
    from probebench.models.hub import cached_repo_file, download_repo_file

    found, failed = cached_repo_file(repo, names), ""
    if found is None and allow:
        found, failed = download_repo_file(repo, names)
    if found is not None:
        return found
    raise NotOnThisMachine(f"{what}: {' or '.join(names)} of hub repo {repo} is not in the local Hugging Face "
                           f"cache{'' if allow else ' and downloads are off (PROBEBENCH_OFFLINE=1)'}{failed}; "
                           f"download it once with network (huggingface-cli download {repo}), or give the folder")


def open_clip_config(name: str) -> ModelConfig:
    """A registry entry for ``open_clip:<model>[@<tag>]``, ``open_clip:hf-hub:<org>/<repo>`` or ``open_clip:<folder>``."""
    from probebench.models.hub import downloads_allowed

    body = name[len(OPEN_CLIP_PREFIX):]
    if body.startswith("hf-hub:") or Path(body).expanduser().is_dir():  # the hub's layout, downloaded or not
        folder = (_hub_file(body[len("hf-hub:"):], ("open_clip_config.json",), downloads_allowed(), name).parent
                  if body.startswith("hf-hub:") else Path(body).expanduser())
        full = _read_folder(folder)
        model_cfg, pre_cfg, tag = full.get("model_cfg", full), full.get("preprocess_cfg", {}), None
    else:
        open_clip = OPEN_CLIP.library()
        model, _, tag = body.partition("@")
        model_cfg = open_clip.get_model_config(model)
        if model_cfg is None:
            raise ProbebenchError(f"unknown open_clip model {model!r}{did_you_mean(model, open_clip.list_models())}"
                                  "; see open_clip.list_models()")
        tags = open_clip.list_pretrained_tags_by_model(model)
        if tag and tag not in tags:
            raise ProbebenchError(f"open_clip model {model!r} has no pretrained tag {tag!r}; tags: "
                                  f"{', '.join(tags) or 'none'}")
        pre_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
        if "quick_gelu" in pre_cfg:  # the activation the tag was trained with (open_clip itself only warns)
            model_cfg = {**model_cfg, "quick_gelu": bool(pre_cfg["quick_gelu"])}
    arch, taps = tower_arch(model_cfg, body)
    arch["tag"] = tag or None
    pre = open_clip_preprocessing(pre_cfg, _image_size(arch), "open_clip config")
    return ModelConfig(name=name, family=OPEN_CLIP, arch=arch, taps=taps, default_tap="embedding", weight_file="",
                       url="", weights_label=f"open_clip {body}", preprocessing=pre)


def open_clip_entry(name: str, repo: str, model_cfg: dict, pooled_width: int, pre: Preprocessing,
                    card: Card) -> ModelConfig:
    """A named backbone published in open_clip's format on the hub (``open_clip_config.json`` values stated here,
    so that random weights need no download)."""
    arch, taps = tower_arch(model_cfg, f"hf-hub:{repo}")
    taps = {t: d or pooled_width for t, d in taps.items()}
    return ModelConfig(name=name, family=OPEN_CLIP, arch={**arch, "tag": None, "model_cfg": model_cfg}, taps=taps,
                       default_tap="embedding", weight_file="", url=f"https://huggingface.co/{repo}",
                       weights_label=f"hugging face {repo}", preprocessing=pre, card=card)


def _folder_checkpoint(folder: Path) -> Path:
    for fname in CHECKPOINTS:
        if (folder / fname).is_file():
            return folder / fname
    raise ProbebenchError(f"{folder}: no open_clip weights ({', '.join(CHECKPOINTS)})")


class OpenClipFamily(Family):
    name = "open_clip"
    prefix = OPEN_CLIP_PREFIX
    extra = ("open_clip", "open_clip")

    def config_for(self, name):
        return open_clip_config(name)

    def name_problem(self, name):
        body = name[len(OPEN_CLIP_PREFIX):]
        if body.startswith("hf-hub:"):
            return hub_repo_problem(name, body[len("hf-hub:"):], "open_clip:hf-hub:<org>/<repo>")
        return super().name_problem(name)

    def with_arch(self, config, overrides):
        """A named entry with other ``vision_cfg`` values (tests build tiny ones)."""
        if config.card is None:
            raise ProbebenchError("arch_overrides apply to the named models only")
        model_cfg = {**config.arch["model_cfg"], **overrides}
        arch, taps = tower_arch(model_cfg, config.arch["source"])
        return replace(config, arch={**config.arch, **arch, "model_cfg": model_cfg},
                       taps={t: d or config.taps.get(t, 0) for t, d in taps.items()})

    def for_weights(self, config, path):
        """Weights in an open_clip folder: the folder's model config, the entry's name and tap."""
        path = Path(path)
        if not (path.is_dir() and (path / "open_clip_config.json").is_file()):
            return config
        full = _read_folder(path)
        arch, taps = tower_arch(full.get("model_cfg", full), config.arch["source"])
        return replace(config, arch={**config.arch, **arch},
                       taps={t: d or config.taps.get(t, 0) for t, d in taps.items()})

    def snapshot_preprocessing(self, folder, base):
        if not (folder / "open_clip_config.json").is_file():
            return base
        full = _read_folder(folder)
        size = _image_size(tower_arch(full.get("model_cfg", full), str(folder))[0])
        return open_clip_preprocessing(full.get("preprocess_cfg", {}), size, "open_clip_config.json")

    def build(self, config, img_size):
        self.library()
        from open_clip.model import _build_vision_tower  # the image tower alone, as open_clip builds it

        vision = dict(config.arch["vision_cfg"])
        if not vision.get("timm_model_name"):
            vision["image_size"] = img_size  # a ViT's position grid for this crop (official weights are resized)
        return _build_vision_tower(config.arch["embed_dim"], vision, quick_gelu=config.arch["quick_gelu"])

    def find_weights(self, config, allow_download):
        from probebench.models.hub import downloads_allowed

        allow = downloads_allowed() if allow_download is None else allow_download
        source, tag = config.arch["source"], config.arch.get("tag")
        if source.startswith("hf-hub:"):
            return _hub_file(source[len("hf-hub:"):], CHECKPOINTS[:3], allow, f"no weights for {config.name}")
        if Path(source).expanduser().is_dir():
            return Path(source).expanduser()
        if tag:
            cfg = self.library().get_pretrained_cfg(source.partition("@")[0], tag)
            if cfg.get("hf_hub"):
                repo_id, fname = cfg["hf_hub"].rsplit("/", 1)  # open_clip's 'org/repo/' or 'org/repo/file'
                return _hub_file(repo_id, (fname,) if fname else CHECKPOINTS[:3], allow,
                                 f"no weights for {config.name}")
            cached = Path("~/.cache/clip").expanduser() / Path(cfg.get("url", "")).name
            if cached.is_file():
                return cached
            if allow and cfg.get("url"):
                return Path(self.library().pretrained.download_pretrained_from_url(cfg["url"]))
        raise NotOnThisMachine(f"no weights for {config.name}: " + (
            f"tag {tag} is not cached and downloads are off" if tag else
            "an open_clip architecture without a pretrained tag has no official weights; name one "
            f"(open_clip:{source}@<tag>)") + f", or pass --weights FILE (with `run`: --weights {config.name}=FILE), "
            "or --weights random")

    def load_snapshot(self, folder, config):
        from probebench.models import weights as wts

        return wts.load_checkpoint(_folder_checkpoint(folder))

    def convert(self, state, model, config):
        """A whole CLIP checkpoint's image tower (``visual.*``), its ViT position grid resized as open_clip does."""
        from types import SimpleNamespace

        from open_clip.model import resize_pos_embed

        if any(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
        if any(k.startswith("visual.") for k in state):
            state = {k: v for k, v in state.items() if k.startswith("visual.")}
        else:  # an image tower saved alone
            state = {f"visual.{k}": v for k, v in state.items()}
        resize_pos_embed(state, SimpleNamespace(visual=model))
        return {k.removeprefix("visual."): v for k, v in state.items()}

    def features(self, backbone, config, tap, images):
        if hasattr(backbone, "trunk"):  # a timm trunk with open_clip's projection head
            embed = getattr(backbone.trunk, "patch_embed", None)
            if embed is not None and tuple(embed.img_size) != tuple(images.shape[-2:]):
                backbone.trunk.set_input_size(img_size=tuple(images.shape[-2:]))  # resamples its position grid
            pooled = backbone.trunk(images)
            return pooled if tap == "pooled" else backbone.head(pooled)
        if tap == "pooled":
            pooled, _ = backbone._pool(backbone.transformer(backbone._embeds(images)))
            return pooled
        return backbone(images)

    def feature_dim(self, config, backbone, tap):
        if tap == "pooled" and hasattr(backbone, "trunk"):
            return backbone.trunk.num_features
        return config.taps[tap]


OPEN_CLIP = OpenClipFamily()
