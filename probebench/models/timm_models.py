"""The timm family: any timm model by name (``timm:<model>[.<tag>]``) or from the Hugging Face hub
(``timm:hf-hub:<org>/<repo>``); timm's pretrained config gives the preprocessing, the pre-logits features are
the tap (the input of the classifier). Named entries (``timm_entry``: UNI, Virchow2, …) state their model card's
architecture arguments, preprocessing and token taps: ``cls`` (the normalised CLS token), ``cls_patchmean`` (CLS ‖
mean of the patch tokens, register tokens left out) and ``patchmean``."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from probebench.errors import NotOnThisMachine, ProbebenchError
from probebench.models.config import Card, Family, ModelConfig, Preprocessing, hub_repo_problem, read_json

TIMM_PREFIX = "timm:"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKEN_TAPS = {"cls": 1, "cls_patchmean": 2, "patchmean": 1}  # tap -> dimension as a multiple of the width


def timm_config(name: str) -> ModelConfig:
    """A registry entry for ``timm:<model>[.<tag>]`` or ``timm:hf-hub:<org>/<repo>``."""
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
    return ModelConfig(name=name, family=TIMM, arch={"name": arch, "hf_hub_id": cfg.get("hf_hub_id"),
                                                      "architecture": cfg.get("architecture"),
                                                      "num_classes": cfg.get("num_classes"),
                                                      "kwargs": cfg.get("model_args", {}), "input_size": crop},
                       taps={"pre_logits": 0}, default_tap="pre_logits", weight_file="", url=cfg.get("url") or "",
                       weights_label=f"timm {cfg.get('tag') or cfg.get('hf_hub_id') or 'pretrained'}",
                       preprocessing=pre)


def _hf_hub_timm_cfg(repo: str) -> dict:
    """``config.json`` of a hub-hosted timm model, from the local Hugging Face cache or a download."""
    import json

    from probebench.models.hub import downloads_allowed

    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo, "config.json", local_files_only=not downloads_allowed())
    except Exception as exc:
        raise ProbebenchError(f"timm:hf-hub:{repo}: config.json is not in the local Hugging Face cache and cannot "
                              f"be downloaded ({type(exc).__name__}); download the repo once with network") from exc
    cfg = json.loads(open(path).read())
    return {**cfg.get("pretrained_cfg", {}), "architecture": cfg.get("architecture"), "hf_hub_id": repo,
            "num_classes": cfg.get("num_classes", cfg.get("pretrained_cfg", {}).get("num_classes", 1000)),
            "model_args": cfg.get("model_args", {})}


def timm_entry(name: str, repo: str, architecture: str, kwargs: dict, width: int, default_tap: str,
               pre: Preprocessing, card: Card) -> ModelConfig:
    """A named backbone published in timm's format on the hub: the architecture with its model card's arguments
    (``mlp_layer`` named as a ``timm.layers`` class), ``width`` its token dimension."""
    return ModelConfig(name=name, family=TIMM, arch={"name": f"hf-hub:{repo}", "hf_hub_id": repo,
                                                      "architecture": architecture, "num_classes": 0,
                                                      "kwargs": kwargs},
                       taps={t: f * width for t, f in TOKEN_TAPS.items()}, default_tap=default_tap, weight_file="",
                       url=f"https://huggingface.co/{repo}", weights_label=f"hugging face {repo}", preprocessing=pre,
                       card=card)


def _timm_kwargs(kwargs: dict) -> dict:
    """A card's arguments as timm takes them: ``mlp_layer`` by its ``timm.layers`` name (timm resolves
    ``act_layer`` names itself)."""
    import timm.layers

    return {k: getattr(timm.layers, v) if k == "mlp_layer" else v for k, v in kwargs.items()}


def _read_timm_folder(folder: Path) -> dict:
    cfg = read_json(folder / "config.json")
    if "architecture" not in cfg:
        raise ProbebenchError(f"{folder / 'config.json'}: not a timm model folder (no 'architecture')")
    return cfg


def resolve_timm_weights(config: ModelConfig, allow_download: bool) -> Path:
    """A timm model's pretrained file: the Hugging Face cache, timm's torch-hub cache, or a download."""
    import urllib.parse

    import torch

    from probebench.models.hub import cached_repo_file, download_repo_file, hub_checkpoint_dir

    hub_id, url = config.arch.get("hf_hub_id"), config.url
    found = cached_repo_file(hub_id, HF_WEIGHT_FILES) if hub_id else None
    if found is not None:
        return found
    cached = hub_checkpoint_dir() / Path(urllib.parse.urlparse(url).path).name if url else None
    if cached is not None and cached.is_file():
        return cached
    failed = ""  # why the hub download of each file name failed, said in the error below
    if allow_download:
        try:
            if hub_id:
                found, failed = download_repo_file(hub_id, HF_WEIGHT_FILES)
                if found is not None:
                    return found
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(cached), progress=True)
                return cached
        except Exception as exc:
            raise ProbebenchError(f"no weights for {config.name}: the download failed ({exc})") from exc
    where = f"the Hugging Face cache (repo {hub_id})" if hub_id else ""
    where += (" or " if where and cached else "") + (f"{cached}" if cached else "")
    raise NotOnThisMachine(f"no weights for {config.name}: not found in {where or 'any local cache'}"
                          f"{'' if allow_download else ' and downloads are off (PROBEBENCH_OFFLINE=1)'}"
                          f"{f' (download{failed})' if failed else ''}; "
                          f"download it once with network, or pass --weights FILE (with `run`: --weights "
                          f"{config.name}=FILE), or --weights random")


class TimmFamily(Family):
    name = "timm"
    prefix = TIMM_PREFIX

    def config_for(self, name):
        return timm_config(name)

    def name_problem(self, name):
        if name.startswith(TIMM_PREFIX + "hf-hub:"):
            return hub_repo_problem(name, name[len(TIMM_PREFIX + "hf-hub:"):], "timm:hf-hub:<org>/<repo>")
        return super().name_problem(name)

    def with_arch(self, config, overrides):
        """A named entry with other architecture arguments (tests build tiny ones); the taps follow the width."""
        if config.card is None:
            raise ProbebenchError("arch_overrides apply to the named models only")
        kwargs = {**config.arch["kwargs"], **overrides}
        width = kwargs.get("embed_dim", config.taps["cls"])
        return replace(config, arch={**config.arch, "kwargs": kwargs},
                       taps={t: f * width for t, f in TOKEN_TAPS.items()})

    def for_weights(self, config, path):
        """A named entry given a timm model folder (``config.json`` + weights): the folder's architecture and
        arguments, the entry's tap and the card's layer classes."""
        if config.card is None or not Path(path).is_dir():
            return config
        cfg = _read_timm_folder(Path(path))
        kwargs = {**config.arch["kwargs"], **cfg.get("model_args", {})}
        return self.with_arch(replace(config, arch={**config.arch, "architecture": cfg["architecture"],
                                                     "kwargs": kwargs}), {})

    def build(self, config, img_size):
        """The architecture, sized for ``img_size`` where the model has a fixed input size (a ViT's position grid;
        official weights are resampled to it by the model's ``checkpoint_filter_fn`` on load)."""
        import timm

        arch = config.arch["name"]
        native = config.arch.get("kwargs", {}).get("img_size", config.arch.get("input_size"))
        size = {"img_size": img_size} if img_size != native else {}
        if arch.startswith("hf-hub:"):  # the architecture its config.json names (read by timm_config), no hub calls
            num_classes = 0 if config.card else config.arch["num_classes"] or 1000
            name, kwargs = config.arch["architecture"], {"num_classes": num_classes,
                                                          **_timm_kwargs(config.arch.get("kwargs", {}))}
        else:
            name, kwargs = arch, {}
        try:
            return timm.create_model(name, pretrained=False, **{**kwargs, **size})
        except TypeError:  # a model without a fixed input size (a CNN) takes no img_size
            return timm.create_model(name, pretrained=False, **kwargs)

    def features(self, backbone, config, tap, images):
        if tap == "pre_logits":  # timm's pre-logits features: the input of the classifier
            return backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        tokens = backbone.forward_features(images)  # (B, prefix + patches, D), normalised
        patches = tokens[:, backbone.num_prefix_tokens:]
        if tap == "cls":
            return tokens[:, 0]
        if tap == "patchmean":
            return patches.mean(dim=1)
        import torch

        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)

    def feature_dim(self, config, backbone, tap):
        if tap in TOKEN_TAPS:
            return TOKEN_TAPS[tap] * backbone.num_features
        return getattr(backbone, "head_hidden_size", None) or backbone.num_features

    def load_snapshot(self, folder, config):
        """A timm model folder's weights (``model.safetensors`` or ``pytorch_model.bin``)."""
        from probebench.models import weights as wts

        for fname in HF_WEIGHT_FILES:
            if (folder / fname).is_file():
                return wts.load_checkpoint(folder / fname)
        raise ProbebenchError(f"{folder}: no {' or '.join(HF_WEIGHT_FILES)} beside its config.json")

    def snapshot_preprocessing(self, folder, base):
        return base  # a named entry's card states it; a timm folder has no preprocessor_config.json

    def find_weights(self, config, allow_download):
        from probebench.models.hub import downloads_allowed

        return resolve_timm_weights(config, downloads_allowed() if allow_download is None else allow_download)

    def convert(self, state, model, config):
        """Original-format files (or another input size's position embedding) go through the model module's own
        ``checkpoint_filter_fn``, as timm does."""
        own = model.state_dict()
        if set(state) == set(own) and all(state[k].shape == own[k].shape for k in own):
            return state
        import importlib

        filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                return filter_fn(state, model)
            except Exception:
                pass
        return state


TIMM = TimmFamily()
