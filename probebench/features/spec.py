"""What a cached feature is (``FeatureSpec``), and where its store is.

A ``FeatureSpec`` holds every option that decides the numbers of a cached feature, validated once; the
CLI builds it from one shared group of options and ``extract``, ``fit``, ``export``, ``bench`` and the
study runner take it. Adding an extraction option is one field here plus one CLI option.

``resolve_job`` turns a spec and a dataset into the cache key, reading the data and hashing the weights;
``locate_store`` finds a complete store, and when the images or the weights are not on this machine it
finds the store by what the stores record, so a cache made on a GPU server can be fitted on a laptop.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from probebench.errors import NotOnThisMachine, ProbebenchError
from probebench.models.config import ModelConfig, Preprocessing, model_preprocessing
from probebench.validate import check_options

if TYPE_CHECKING:  # the spec itself is light (the command line builds its options from it); these load torch, zarr
    from probebench.data.datasets import Manifest
    from probebench.features import cache as fcache
    from probebench.models.registry import ResolvedModel


def option(default, help: str, *, flags: tuple[str, ...] = (), show_default=None, study: tuple[str, ...] = (),
           recorded=None, cache_only: bool = False):
    """A ``FeatureSpec`` field and everything the other tables need of it, stated once:

    ``help``/``flags``/``show_default``: its command-line option (flags default to ``--field-name``);
    ``study``: where a study file sets it (``extract``: the [extract] table, ``models``: [models.<name>]);
    ``recorded(attrs)``: its value as a store's attributes record it (how a store is found without the data);
    ``cache_only``: it changes how features are computed and kept, not what a fine-tuned model sees.
    """
    return field(default=default, metadata={"help": help, "flags": flags, "show_default": show_default,
                                            "study": study, "recorded": recorded, "cache_only": cache_only})


def _pre(key, default=None):
    return lambda attrs: attrs.get("preprocessing", {}).get(key, default)


def _recorded_weights(attrs: dict) -> str | None:
    w = attrs.get("weights", {})
    return f"random:{w.get('seed')}" if w.get("sha256") == "random" else w.get("source")


@dataclass(frozen=True)
class FeatureSpec:
    """Everything besides the dataset that decides a cached feature's numbers (``None``: the model's default).

    Each field is declared with ``option``: the command-line option group, the study file's keys, the options
    fine-tuning ignores and the search for a store by its record are all derived from these declarations.
    """

    model: str = field(metadata={"help": "Registry name (vgg16 resnet50 densenet121 dinov2_s/b/l/g), or "
                                         "timm:<name>[.<tag>], timm:hf-hub:<org>/<repo>, or hf:<org>/<repo> or "
                                         "hf:<snapshot folder> (transformers); see `probebench models`.",
                                 "flags": ("--model", "-m")})
    weights: str = option("auto", "Checkpoint PATH, 'auto' (hub cache, then download) or 'random[:SEED]' "
                          "(untrained; flagged everywhere).", recorded=_recorded_weights)
    tap: str | None = option(None, "Feature tap (see `probebench models`).", show_default="the model's",
                             study=("extract", "models"), recorded=lambda attrs: attrs.get("tap"))
    head_weights: str | None = option(  # the tap's pretrained layer (DINOv2 imagenet_logits)
        None, "With --tap imagenet_logits (DINOv2): Meta's linear layer file dinov2_vit*14_linear4_head.pth.",
        show_default="the hub cache, then download", study=("models",),
        recorded=lambda attrs: attrs.get("weights", {}).get("head_source"))
    resize: int | None = option(None, "Shorter-side resize in px.", show_default="the model's, 256",
                                study=("extract", "models"), recorded=_pre("resize"))
    crop: int | None = option(None, "Centre crop in px.", show_default="the model's, 224",
                              study=("extract", "models"), recorded=_pre("crop"))
    mean: tuple[float, ...] | None = option(
        None, "Normalisation mean, 3 comma-separated numbers (or 1 for all channels), replacing the model's own; "
        "part of the cache key.", show_default="the model's: ImageNet, or a snapshot's preprocessor_config.json",
        study=("extract", "models"), recorded=lambda attrs: tuple(_pre("mean", ())(attrs)))
    std: tuple[float, ...] | None = option(
        None, "Normalisation std, like --mean; part of the cache key.", show_default="the model's",
        study=("extract", "models"), recorded=lambda attrs: tuple(_pre("std", ())(attrs)))
    interpolation: str | None = option(
        None, "Resize interpolation, bilinear or bicubic (the study used bilinear for all); part of the cache key.",
        show_default="the model's: bicubic for DINOv2, bilinear for the CNNs", study=("extract", "models"),
        recorded=_pre("interpolation"))
    draft: bool = option(False, "Decode JPEGs at a reduced scale near the resize target (much faster for large "
                         "photographs); part of the cache key.", flags=("--draft",), study=("extract",),
                         recorded=lambda attrs: bool(_pre("draft", False)(attrs)), cache_only=True)
    precision: str = option("fp32", "Forward precision: fp32, bf16, fp16 (autocast).", study=("extract",),
                            recorded=lambda attrs: attrs.get("precision"), cache_only=True)
    store_dtype: str = option("float32", "Cache dtype: float32 or float16.", study=("extract",),
                              recorded=lambda attrs: attrs.get("store_dtype"), cache_only=True)
    channels_last: bool | None = option(
        None, "channels_last memory format; part of the cache key.", show_default="on for the CNNs",
        study=("extract",), recorded=lambda attrs: attrs.get("key_material", {}).get("channels_last"),
        cache_only=True)
    val_unit: str = option(  # how validation is carved from training (it changes the stored split)
        "group", "Carve validation from training 'group's (patients, lesions) or 'sample's (images, as the study's "
        "code did; validation turns optimistic).", study=("study",),
        recorded=lambda attrs: attrs.get("val_unit", "group"))

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # hashable, so the spec is a value; the numbers are checked in preprocessing
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        check_options(resize=self.resize, crop=self.crop, precision=self.precision, store_dtype=self.store_dtype,
                      tap=self.tap, weights=self.weights, interpolation=self.interpolation, val_unit=self.val_unit)
        self.config()  # an unknown model name fails here, with the known names

    @classmethod
    def of(cls, features: FeatureSpec | str, **options) -> FeatureSpec:
        """A spec from a spec or a model name plus options (the Python API's shorthand)."""
        if isinstance(features, FeatureSpec):
            return features.replace(**options) if options else features
        return cls(model=features, **options)

    def replace(self, **changes) -> FeatureSpec:
        return replace(self, **changes)

    def options(self) -> dict:
        """The fields other than the model, as keyword arguments."""
        return {k: v for k, v in asdict(self).items() if k != "model"}

    def flags(self) -> str:
        """The command-line flags that give this spec (defaults left out)."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "model" or value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else f"--no-{f.name.replace('_', '-')}")
            elif isinstance(value, tuple):
                out.append(f"{flag} {','.join(map(str, value))}")
            else:
                out.append(f"{flag} {value}")
        return " ".join(out)

    def config(self) -> ModelConfig:
        """The model's registry entry (``timm:`` names are configured by timm)."""
        from probebench.models.registry import get_config

        return get_config(self.model)

    def defaults(self, config: ModelConfig | None = None) -> dict:
        """The tap and memory format this spec means, the model's defaults filled in."""
        config = config or self.config()
        tap = self.tap or config.default_tap
        if tap not in config.taps:
            raise ProbebenchError(f"model {self.model!r} has no feature tap {tap!r}; taps: {', '.join(config.taps)}")
        return {"tap": tap,
                "channels_last": config.family.channels_last if self.channels_last is None else self.channels_last}

    def resolve(self, allow_download: bool | None = None) -> ResolvedFeature:
        """Names, defaults, weights and preprocessing worked out once: what ``extract`` keys its cache by and
        ``build_model`` builds."""
        from probebench.models.registry import resolve_model

        config = self.config()
        defaults = self.defaults(config)
        model = resolve_model(config, self.weights, tap=defaults["tap"], head_weights=self.head_weights,
                              allow_download=allow_download)
        config = model.config  # a snapshot folder's architecture, when the weights are one
        pre = model_preprocessing(config, model.weights_path, self.resize, self.crop, self.mean, self.std,
                                  self.draft, self.interpolation)
        model = replace(model, config=replace(config, preprocessing=pre))
        return ResolvedFeature(self, model, defaults["channels_last"])


@dataclass(frozen=True)
class ResolvedFeature:
    """A spec resolved: the model (entry with its final preprocessing, tap, weights) and the memory format."""

    spec: FeatureSpec
    model: ResolvedModel
    channels_last: bool

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.config.preprocessing


def spec_fields(where: str | None = None, **metadata) -> tuple[str, ...]:
    """The names of the spec's fields that a study sets in ``where`` and whose metadata has these values."""
    return tuple(f.name for f in fields(FeatureSpec) if (where is None or where in f.metadata.get("study", ()))
                 and all(f.metadata.get(k) == v for k, v in metadata.items()))


CACHE_ONLY = spec_fields(cache_only=True)  # the options fine-tuning does not use
DISTINGUISHING = tuple(f.name for f in fields(FeatureSpec) if f.metadata.get("recorded"))  # what tells stores apart


@dataclass
class FeatureJob:
    """A resolved request: the manifest, the resolved feature and the cache key inputs."""

    manifest: Manifest
    feature: ResolvedFeature
    request: fcache.FeatureRequest

    @property
    def config(self) -> ModelConfig:
        return self.feature.model.config

    def create_model(self):
        """The model this job's features come from (weights resolved once, here and in the key)."""
        from probebench.models.registry import build_model

        return build_model(self.feature.model, img_size=self.config.preprocessing.crop)

    def cache_path(self, cache_dir: str | Path) -> Path | str:
        return self.request.path(cache_dir)


def resolve_job(features: FeatureSpec | str, dataset: str, *, data_root=None, manifest: Manifest | None = None,
                **options) -> FeatureJob:
    """Resolve names, data and weights into the cache key that ``extract`` writes and ``fit`` reads (``manifest``:
    the dataset's, when the caller has read it already)."""
    from probebench.data.datasets import load_manifest
    from probebench.features import cache as fcache

    spec = FeatureSpec.of(features, **options)
    spec.defaults()  # a tap the model lacks is refused before the data is read
    if manifest is None:
        manifest = load_manifest(dataset, data_root, val_unit=spec.val_unit)
    feature = spec.resolve()
    request = fcache.FeatureRequest(
        dataset=manifest.dataset, model=spec.model, tap=feature.model.tap, weights=feature.model.info,
        preprocessing=feature.preprocessing.as_dict(), precision=spec.precision, store_dtype=spec.store_dtype,
        manifest_hash=manifest.hash(), channels_last=feature.channels_last)
    return FeatureJob(manifest, feature, request)


def locate_store(features: FeatureSpec | str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache",
                 **options) -> Path | str:
    """The complete store for this spec and dataset, or an error that prints the ``extract`` command.

    With the images and weights here, the store is the one their cache key names (so a changed dataset is
    never served stale). Without them, it is the one complete store whose record matches the spec; a note
    says so, and several matches are an error listing them with the option that tells them apart.
    """
    from probebench.features import cache as fcache

    from probebench.data.datasets import load_manifest

    spec = FeatureSpec.of(features, **options)
    try:
        manifest = load_manifest(dataset, data_root, val_unit=spec.val_unit)
    except NotOnThisMachine as missing:  # the data is elsewhere: the store's record alone
        return recorded_store(spec, dataset, cache_dir, missing, data_root=data_root)
    try:
        job = resolve_job(spec, dataset, data_root=data_root, manifest=manifest)
    except NotOnThisMachine as missing:  # the data is here, the weights are not: the stores of this very data
        return recorded_store(spec, dataset, cache_dir, missing, manifest_hash=manifest.hash(), data_root=data_root)
    path = job.cache_path(cache_dir)
    root = fcache.open_store(path, job.request)
    if root is None or not root.attrs.get("complete"):
        state = "is incomplete" if root is not None else "does not exist"
        raise ProbebenchError(f"the feature cache {path} {state}; run first:\n  "
                              f"{extract_command(spec, dataset, data_root, cache_dir)}")
    return path


def extract_command(spec: FeatureSpec, dataset: str, data_root=None, cache_dir: str | Path = "cache") -> str:
    from probebench.data.datasets import data_roots

    roots = "".join(f" --data-root {r}" for r in data_roots(data_root)) if data_root else ""
    cache = f" --cache-dir {cache_dir}" if str(cache_dir) != "cache" else ""
    return f"probebench extract --model {spec.model} --dataset {dataset}{roots}{cache} {spec.flags()}".strip()


def _recorded(attrs: dict) -> dict:
    """The spec's options as a store records them, with the checksums of its weights."""
    w = attrs.get("weights", {})
    return {**{f.name: f.metadata["recorded"](attrs) for f in fields(FeatureSpec) if f.metadata.get("recorded")},
            "weights_sha256": w.get("sha256"), "head_sha256": w.get("head_sha256")}


def _matches(spec: FeatureSpec, config: ModelConfig, rec: dict, any_weights: bool = False) -> bool:
    """Does a store's record agree with every option the spec states (defaults resolved as ``resolve_job`` does)?"""
    from probebench.models.registry import random_seed

    defaults = spec.defaults(config)
    if rec["tap"] != defaults["tap"] or rec["precision"] != spec.precision:
        return False
    if rec["store_dtype"] != spec.store_dtype or rec["val_unit"] != spec.val_unit:
        return False
    if rec["channels_last"] != defaults["channels_last"]:
        return False
    if rec["draft"] != spec.draft:
        return False
    for key in ("resize", "crop", "interpolation"):
        if getattr(spec, key) is not None and rec[key] != getattr(spec, key):
            return False
    for key in ("mean", "std"):
        value = getattr(spec, key)
        if value is not None and tuple(value) * (3 if len(value) == 1 else 1) != rec[key]:
            return False
    seed = random_seed(spec.weights)
    if seed is not None:
        return rec["weights"] == f"random:{seed}"
    if any_weights:
        return _same_file(spec.head_weights, rec["head_weights"], rec["head_sha256"])
    if rec["weights_sha256"] == "random" or not _same_file(spec.weights, rec["weights"], rec["weights_sha256"]):
        return False
    return _same_file(spec.head_weights, rec["head_weights"], rec["head_sha256"])


def _same_file(given: str | None, recorded: str | None, sha256: str | None) -> bool:
    """A weights option against a store's record: a file that is here by its checksum, one that is not by its
    name; ``auto`` (or nothing) accepts whatever official file the store was made from."""
    from probebench.data.filehash import content_digests

    if given in ("auto", "pretrained", "", None):
        return True
    path = Path(given).expanduser()
    if path.is_file():
        return content_digests([str(path.resolve())])[0] == sha256
    return recorded is not None and Path(recorded).name == path.name


def recorded_store(spec: FeatureSpec, dataset: str, cache_dir: str | Path, missing: Exception,
                   manifest_hash: str | None = None, data_root=None) -> Path:
    """The one complete store under ``cache_dir`` whose record matches ``spec``, found without data or weights.

    With ``manifest_hash`` (the data is here) only stores of exactly this data qualify, and weights left at
    ``auto`` accept any weights the store was made with, random ones included: the note names them, and runs
    from random weights are marked as such everywhere."""
    import zarr

    from probebench.validate import path_name

    from probebench.data.datasets import load_spec
    from probebench.features import cache as fcache

    if fcache.is_url(cache_dir):
        raise ProbebenchError(f"{missing}\nand a cache at a URL ({cache_dir}) is only found by its key, which needs "
                              "the data and the weights; copy the store to a local --cache-dir")
    config = spec.config()
    name = load_spec(dataset, data_root).name
    folder = Path(cache_dir) / path_name(name) / path_name(spec.model)
    found, unreadable = [], []
    for store in sorted(folder.glob("*.zarr")) if folder.is_dir() else []:
        try:
            attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        except Exception as exc:  # a damaged store is not a match; said below, never skipped in silence
            unreadable.append(f"{store} ({type(exc).__name__}: {exc})")
            continue
        rec = _recorded(attrs)
        if manifest_hash is not None and attrs.get("key_material", {}).get("manifest_hash") != manifest_hash:
            continue
        any_weights = manifest_hash is not None and spec.weights in ("auto", "pretrained", "")
        if attrs.get("complete") and attrs.get("model") == spec.model and _matches(spec, config, rec, any_weights):
            found.append((store, rec))
    if unreadable:
        sys.stderr.write("note: unreadable feature cache(s) left out of the search (`probebench verify` checks "
                         "them): " + "; ".join(unreadable) + "\n")
    if not found:
        raise ProbebenchError(f"{missing}\nand no complete feature cache under {folder} matches these options, so "
                              "there is nothing to use without them")
    if len(found) > 1:
        differ = [k for k in DISTINGUISHING if len({str(r[k]) for _, r in found}) > 1]
        lines = "\n".join(f"  {s}: " + ", ".join(f"{k}={r[k]}" for k in differ) for s, r in found)
        raise ProbebenchError(f"{len(found)} feature caches of {spec.model} × {name} match (the data or weights "
                              f"that would tell them apart are not here: {str(missing).split(':')[0]}):\n{lines}\n"
                              f"choose one with {', '.join('--' + k.replace('_', '-') for k in differ)}")
    store, rec = found[0]
    weights = (f"random weights ({rec['weights']}, untrained)" if rec["weights_sha256"] == "random" else
               f"weights {rec['weights']} (sha256 {str(rec['weights_sha256'])[:12]}…)")
    options = ", ".join(f"{k}={rec[k]}" for k in ("tap", "resize", "crop", "interpolation", "precision"))
    sys.stderr.write(f"note: {str(missing).splitlines()[0]}; using the feature cache {store}, extracted from "
                     f"{'this data' if manifest_hash else 'the data it records'} with {weights}; {options}\n")
    return store
