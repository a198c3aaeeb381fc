"""Model registry: one declarative entry per backbone and one ``create_model`` entry point.

Each entry says how to build the backbone, where its weights come from (official file name and
URL), which feature taps it exposes with their dimensions, and its preprocessing. Every model
built here is a ``FeatureExtractor``: ``forward(images) -> (B, D)`` features at the chosen tap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from probebench.errors import ProbebenchError, did_you_mean
from probebench.models import cards, dinov2_family, torchvision_models
from probebench.models.config import Family, ModelConfig
from probebench.models.dinov2_family import DINOV2
from probebench.models.hf_models import HF
from probebench.models.open_clip_models import OPEN_CLIP
from probebench.models.timm_models import TIMM
from probebench.models.torchvision_models import TORCHVISION

if TYPE_CHECKING:  # the table and the names are light (a misspelt name is answered before torch loads)
    from probebench.models.extractor import FeatureExtractor

FAMILIES: dict[str, Family] = {f.name: f for f in (TORCHVISION, DINOV2, TIMM, HF, OPEN_CLIP)}
REGISTRY: dict[str, ModelConfig] = {**torchvision_models.ENTRIES, **dinov2_family.ENTRIES, **cards.ENTRIES}


def get_config(name: str) -> ModelConfig:
    """The registry entry for ``name`` (or a prefixed name such as ``timm:<model>``), or an error listing the
    known names; a model whose family's optional library is missing says which extra to install."""
    for family in FAMILIES.values():
        if family.prefix and name.startswith(family.prefix):
            _needs(family, name)
            return family.config_for(name)
    try:
        config = REGISTRY[name]
    except KeyError:
        prefixes = ", ".join(f"{f.prefix}<name>" for f in FAMILIES.values() if f.prefix)
        raise ProbebenchError(f"unknown model {name!r}{did_you_mean(name, REGISTRY)}; known models: "
                              f"{', '.join(REGISTRY)}, or {prefixes}") from None
    _needs(config.family, name)
    return config


def _needs(family: Family, name: str) -> None:
    problem = family.missing_extra()
    if problem:
        raise ProbebenchError(f"{name}: {problem}")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a model (None when it is), checked without the network: a hub name is only checked for
    its form here and resolved when it is used."""
    for family in FAMILIES.values():
        if family.prefix and name.startswith(family.prefix):
            problem = family.missing_extra()
            return f"{name}: {problem}" if problem else family.name_problem(name)
    try:
        get_config(name)
    except ProbebenchError as exc:
        return str(exc)
    return None


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


@dataclass(frozen=True)
class ResolvedModel:
    """A model with every name and default worked out once: its entry, the tap, and where its weights are (or the
    seed of random weights). ``info`` is what caches and runs record about the weights."""

    config: ModelConfig
    tap: str
    seed: int | None  # random weights' seed, None for real weights
    weights_path: Path | None
    head_path: Path | None  # the tap's pretrained layer (DINOv2 imagenet_logits)
    info: dict


def resolve_model(name: str | ModelConfig, weights: str = "auto", *, tap: str | None = None,
                  head_weights: str | None = None, allow_download: bool | None = None) -> ResolvedModel:
    """Resolve a model name (or entry), its tap and its weights: an explicit file or snapshot, the hub cache, a
    download, or ``"random"`` / ``"random:SEED"`` (seeded initialisation, flagged everywhere)."""
    from probebench.models import weights as wts

    config = name if isinstance(name, ModelConfig) else get_config(name)
    tap = tap or config.default_tap
    if tap not in config.taps:
        raise ProbebenchError(f"model {config.name!r} has no feature tap {tap!r}; taps: {', '.join(config.taps)}")
    seed = random_seed(weights)
    if seed is not None:
        return ResolvedModel(config, tap, seed, None, None, random_weights_info(seed))
    path = wts.resolve_weights(config, weights, allow_download=allow_download)
    config = config.family.for_weights(config, path)  # a snapshot folder carries its own architecture
    info, head = checkpoint_info(config, path), None
    if tap in config.tap_heads:  # the tap's pretrained layer is part of what the features are
        head = wts.resolve_tap_head(config, tap, head_weights, allow_download=allow_download)
        info = {**info, **tap_head_info(head)}
    return ResolvedModel(config, tap, None, path, head, info)


def build_model(resolved: ResolvedModel, img_size: int | None = None) -> FeatureExtractor:
    """The feature extractor a resolved model describes; ``img_size`` is the crop it will see (DINOv2's grid)."""
    from torch import nn

    from probebench.models import weights as wts
    from probebench.models.extractor import FeatureExtractor, _seeded

    config, tap, seed = resolved.config, resolved.tap, resolved.seed
    with _seeded(seed or 0):
        backbone = config.family.build(config, img_size or config.preprocessing.crop)
    if seed is None:
        config.family.load(backbone, config, resolved.weights_path)
    backbone.eval()
    tap_head = None
    if tap in config.tap_heads:
        with _seeded(seed or 0):
            tap_head = nn.Linear(config.taps[config.tap_heads[tap][2]], config.taps[tap])
        if seed is None:
            wts.load_plain(tap_head, wts.load_checkpoint(resolved.head_path), resolved.head_path)
    return FeatureExtractor(config, backbone, tap, resolved.info, tap_head).eval()


def create_model(name: str, weights: str = "auto", *, tap: str | None = None, img_size: int | None = None,
                 arch_overrides: dict | None = None, allow_download: bool | None = None,
                 head_weights: str | None = None) -> FeatureExtractor:
    """Build model ``name`` with weights from a file, the hub cache, a download, or ``"random"`` (timm's
    ``create_model``): ``resolve_model`` then ``build_model``. ``arch_overrides`` changes the architecture (tests
    use a tiny DINOv2); ``img_size`` is the crop the model will see."""
    config = get_config(name)
    if arch_overrides:
        config = config.family.with_arch(config, arch_overrides)
    resolved = resolve_model(config, weights, tap=tap, head_weights=head_weights, allow_download=allow_download)
    return build_model(resolved, img_size)


def tap_head_info(path) -> dict:
    from probebench.models.weights import sha256_file

    return {"head_source": str(path), "head_sha256": sha256_file(path)}


def random_weights_info(seed: int) -> dict:
    return {"source": "random", "sha256": "random", "seed": seed, "label": "random init"}


def checkpoint_info(config: ModelConfig, path) -> dict:
    """What the cache and the runs record about real weights: the file, its sha256 and what they are."""
    from probebench.models.weights import sha256_file

    return {"source": str(path), "sha256": sha256_file(path), "label": config.weights_label}


def registry_records() -> tuple[Path, list[dict]]:
    """The registry as plain data (``probebench models``): each entry's family, taps, default tap, weights, official
    file, whether that file is in the hub cache, and preprocessing; with the hub cache folder."""
    from dataclasses import asdict

    from probebench.models.hub import hub_checkpoint_dir

    hub = hub_checkpoint_dir()
    return hub, [{"name": c.name, "family": c.family.name, "taps": dict(c.taps), "default_tap": c.default_tap,
                  "weights": c.weights_label, "file": c.weight_file,
                  "present": bool(c.weight_file) and (hub / c.weight_file).is_file(),
                  "preprocessing": asdict(c.preprocessing), "card": asdict(c.card) if c.card else None,
                  "needs": c.family.missing_extra()} for c in REGISTRY.values()]


def preprocessing_of(name: str, weights: str = "auto", *, resize=None, crop=None, mean=None, std=None,
                     interpolation=None):
    """The preprocessing model ``name`` gets with ``weights`` (a snapshot's preprocessor_config.json) and the
    user's overrides, without loading any weights."""
    from probebench.models.config import model_preprocessing

    config = get_config(name)
    path = None
    if random_seed(weights) is None and weights not in ("auto", "pretrained", ""):
        path = Path(weights)
        if not path.exists():
            raise ProbebenchError(f"--weights {weights!r}: no such file or snapshot folder")
    return model_preprocessing(config, path, resize, crop, mean, std, interpolation=interpolation)
