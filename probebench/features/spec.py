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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import zarr

from probebench.features import cache as fcache
from probebench.data.datasets import Manifest, load_manifest, load_spec
from probebench.errors import NotOnThisMachine, ProbebenchError
from probebench.models.config import ModelConfig, Preprocessing, hf_preprocessing, with_normalization
from probebench.models.registry import (checkpoint_info, create_model, get_config, random_seed, random_weights_info,
                                        tap_head_info)
from probebench.validate import check_options


@dataclass(frozen=True)
class FeatureSpec:
    """Everything besides the dataset that decides a cached feature's numbers (``None``: the model's default)."""

    model: str
    weights: str = "auto"  # a checkpoint path, "auto" (hub cache, then download) or "random[:SEED]"
    tap: str | None = None
    head_weights: str | None = None  # the tap's pretrained layer (DINOv2 imagenet_logits)
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    draft: bool = False
    precision: str = "fp32"  # autocast of the forward pass
    store_dtype: str = "float32"
    channels_last: bool | None = None
    val_unit: str = "group"  # how validation is carved from training (it changes the stored split)

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # hashable, so the spec is a value; the numbers are checked in preprocessing
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        check_options(resize=self.resize, crop=self.crop, precision=self.precision, store_dtype=self.store_dtype,
                      tap=self.tap, weights=self.weights, interpolation=self.interpolation, val_unit=self.val_unit)
        get_config(self.model)  # an unknown model name fails here, with the known names

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


@dataclass
class FeatureJob:
    """A resolved request: the manifest, the model entry and the cache key inputs."""

    manifest: Manifest
    config: ModelConfig
    request: fcache.FeatureRequest
    weights_arg: str  # what to pass to create_model: "random" or a checkpoint path
    head_weights: str | None = None  # the tap's pretrained layer (imagenet_logits), a checkpoint path

    def create_model(self):
        """The model this job's features come from (weights resolved once, here and in the key)."""
        return create_model(self.request.model, self.weights_arg, tap=self.request.tap,
                            img_size=self.config.preprocessing.crop, head_weights=self.head_weights)

    def cache_path(self, cache_dir: str | Path) -> Path | str:
        return self.request.path(cache_dir)


def model_preprocessing(config: ModelConfig, weights_path: Path | None, resize: int | None = None,
                        crop: int | None = None, mean=None, std=None, draft: bool = False,
                        interpolation: str | None = None) -> Preprocessing:
    """The preprocessing a model gets: its registry entry, a Hugging Face snapshot's
    ``preprocessor_config.json`` when the weights are one, then the user's resize/crop and mean/std."""
    pre: Preprocessing = config.preprocessing
    if weights_path is not None and Path(weights_path).is_dir():
        pre = hf_preprocessing(weights_path, pre)
    if resize or crop:
        crop = crop or pre.crop
        pre = replace(pre, resize=resize or max(pre.resize, crop), crop=crop)
    if pre.crop > pre.resize:
        raise ProbebenchError(f"crop {pre.crop} is larger than resize {pre.resize}")
    check_options(interpolation=interpolation)
    if interpolation:  # e.g. the study's one bilinear resize for every model
        pre = replace(pre, interpolation=interpolation, source=f"{pre.source} + --interpolation")
    return replace(with_normalization(pre, mean, std), draft=draft)


def resolve_job(features: FeatureSpec | str, dataset: str, *, data_root=None, **options) -> FeatureJob:
    """Resolve names, data and weights into the cache key that ``extract`` writes and ``fit`` reads."""
    from probebench.models import weights as wts

    spec = FeatureSpec.of(features, **options)
    config = get_config(spec.model)
    tap = spec.tap or config.default_tap
    if tap not in config.taps:
        raise ProbebenchError(f"model {spec.model!r} has no feature tap {tap!r}; taps: {', '.join(config.taps)}")
    channels_last = config.family.channels_last if spec.channels_last is None else spec.channels_last
    manifest = load_manifest(dataset, data_root, val_unit=spec.val_unit)
    seed = random_seed(spec.weights)
    if seed is not None:
        path = None
        winfo, weights_arg = random_weights_info(seed), spec.weights
    else:
        path = wts.resolve_weights(config, spec.weights)
        winfo, weights_arg = checkpoint_info(config, path), str(path)
    head_path = None
    if tap in config.tap_heads and seed is None:  # the tap's pretrained layer is part of what the features are
        head_path = str(wts.resolve_tap_head(config, tap, spec.head_weights))
        winfo = {**winfo, **tap_head_info(head_path)}
    pre = model_preprocessing(config, path, spec.resize, spec.crop, spec.mean, spec.std, spec.draft,
                              spec.interpolation)
    request = fcache.FeatureRequest(
        dataset=manifest.dataset, model=spec.model, tap=tap, weights=winfo, preprocessing=pre.as_dict(),
        precision=spec.precision, store_dtype=spec.store_dtype, manifest_hash=manifest.hash(),
        channels_last=channels_last)
    return FeatureJob(manifest, replace(config, preprocessing=pre), request, weights_arg, head_path)


def locate_store(features: FeatureSpec | str, dataset: str, *, data_root=None, cache_dir: str | Path = "cache",
                 **options) -> Path | str:
    """The complete store for this spec and dataset, or an error that prints the ``extract`` command.

    With the images and weights here, the store is the one their cache key names (so a changed dataset is
    never served stale). Without them, it is the one complete store whose record matches the spec; a note
    says so, and several matches are an error listing them with the option that tells them apart.
    """
    spec = FeatureSpec.of(features, **options)
    try:
        job = resolve_job(spec, dataset, data_root=data_root)
    except NotOnThisMachine as missing:
        return recorded_store(spec, dataset, cache_dir, missing)
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


# what a store records for each option that can tell two stores of one dataset and model apart
DISTINGUISHING = ("tap", "weights", "resize", "crop", "mean", "std", "interpolation", "draft", "precision",
                  "store_dtype", "channels_last", "val_unit", "head_weights")


def _recorded(attrs: dict) -> dict:
    """The spec's options as a store records them."""
    pre, w = attrs.get("preprocessing", {}), attrs.get("weights", {})
    seed = w.get("seed")
    return {"tap": attrs.get("tap"), "resize": pre.get("resize"), "crop": pre.get("crop"),
            "mean": tuple(pre.get("mean", ())), "std": tuple(pre.get("std", ())),
            "interpolation": pre.get("interpolation"), "draft": bool(pre.get("draft", False)),
            "precision": attrs.get("precision"), "store_dtype": attrs.get("store_dtype"),
            "channels_last": attrs.get("key_material", {}).get("channels_last"),
            "val_unit": attrs.get("val_unit", "group"),
            "weights": (f"random:{seed}" if w.get("sha256") == "random" else w.get("source")),
            "weights_sha256": w.get("sha256"), "head_weights": w.get("head_source"),
            "head_sha256": w.get("head_sha256")}


def _matches(spec: FeatureSpec, config: ModelConfig, rec: dict) -> bool:
    """Does a store's record agree with every option the spec states (defaults resolved as ``resolve_job`` does)?"""
    if rec["tap"] != (spec.tap or config.default_tap) or rec["precision"] != spec.precision:
        return False
    if rec["store_dtype"] != spec.store_dtype or rec["val_unit"] != spec.val_unit:
        return False
    if rec["channels_last"] != (config.family.channels_last if spec.channels_last is None else spec.channels_last):
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


def recorded_store(spec: FeatureSpec, dataset: str, cache_dir: str | Path, missing: Exception) -> Path:
    """The one complete store under ``cache_dir`` whose record matches ``spec``, found without data or weights."""
    from probebench.validate import path_name

    if fcache.is_url(cache_dir):
        raise ProbebenchError(f"{missing}\nand a cache at a URL ({cache_dir}) is only found by its key, which needs "
                              "the data and the weights; copy the store to a local --cache-dir")
    config = get_config(spec.model)
    name = load_spec(dataset).name
    folder = Path(cache_dir) / path_name(name) / path_name(spec.model)
    found, unreadable = [], []
    for store in sorted(folder.glob("*.zarr")) if folder.is_dir() else []:
        try:
            attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        except Exception as exc:  # a damaged store is not a match; said below, never skipped in silence
            unreadable.append(f"{store} ({type(exc).__name__}: {exc})")
            continue
        rec = _recorded(attrs)
        if attrs.get("complete") and attrs.get("model") == spec.model and _matches(spec, config, rec):
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
    sys.stderr.write(f"note: {str(missing).splitlines()[0]}; using the feature cache {store}, extracted from the "
                     f"data and weights it records (weights sha256 {str(rec['weights_sha256'])[:12]}…)\n")
    return store
