"""A study file: its sections and keys, each checked with the file's line before any work, and the ``Study`` it
describes (datasets x models x frozen/unfrozen x heads x seeds, with the training, extraction and report settings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from probebench.errors import ProbebenchError, did_you_mean
from probebench.features.spec import spec_fields
from probebench.train.config import TRAIN_FIELDS, TrainConfig
from probebench.validate import MAX_FOLDS, RULES, component, line_of, problem, read_toml


MODES = ("frozen", "unfrozen")


SECTIONS = {
    "study": {"name", "datasets", "models", "modes", "heads", "grid", "seeds", "weights", "data_root", "cache_dir",
              "runs_dir", "report_dir", "synthetic", "val_unit"},
    "training": {"epochs", "lr", "batch_size", "weight_decay", "optimizer", "select_metric", "patience",
                 "label_fractions", "shots", "cv", "calibrate"},
    "unfrozen": {"epochs", "lr", "batch_size", "weight_decay", "optimizer", "accumulate", "precision",
                 "grad_checkpointing", "workers", "study_quirks"},
    "extract": {"batch_size", "workers", "skip_bad", *spec_fields("extract")},  # how to extract, then what
    "models": set(),  # [models.<name>]: per-model settings (MODEL_KEYS)
    "weights": set(),  # [weights]: model name -> auto / random[:SEED] / a checkpoint or snapshot path
    "report": {"resamples", "method", "unit", "stratify", "level", "aggregate", "metrics", "study_ci",
               "bootstrap_memory", "jackknife_groups"},
}


@dataclass
class Study:
    """A parsed, checked study file."""

    name: str
    source: Path
    datasets: list[str]
    models: list[str]
    modes: list[str]
    heads: list[str]
    seeds: list[int]
    grid: bool = False
    weights: str = "auto"
    data_root: str | list[str] | None = None  # one folder or a list, searched in order
    cache_dir: str = "cache"
    runs_dir: str = "runs"
    report_dir: str = "report"
    synthetic: bool = False
    training: dict = field(default_factory=dict)
    unfrozen: dict = field(default_factory=dict)
    extract: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    per_model: dict = field(default_factory=dict)  # model -> {tap, heads, head_weights, unfrozen_head, resize...}
    val_unit: str = "group"  # "sample": validation carved by image, as the study's code
    model_weights: dict = field(default_factory=dict)  # [weights]: model -> weights, over [study] weights
    overrides: list = field(default_factory=list)  # the `run --set` / `--data-root` values applied, as given

    def cv_for(self, dataset: str) -> int | None:
        """The folds of cross-validation for ``dataset`` ([training] cv: one number, or a table per dataset)."""
        cv = self.training.get("cv")
        return cv.get(dataset) if isinstance(cv, dict) else cv

    @staticmethod
    def train_config(section: dict, seed: int) -> TrainConfig:
        """The training protocol of a ``[training]`` (or ``[training]`` + ``[unfrozen]``) table: its keys over the
        protocol's defaults, for one seed."""
        return TrainConfig.of(None, seed=seed, **{k: v for k, v in section.items() if k in TRAIN_FIELDS})

    def heads_for(self, model: str) -> list[str]:
        return list(self.per_model.get(model, {}).get("heads", self.heads))

    def weights_for(self, model: str) -> str:
        return self.model_weights.get(model, self.weights)

    def data_roots(self) -> list[Path] | None:
        """``data_root`` as a list of folders (one string or a list in the file), or None for the default."""
        if not self.data_root:
            return None
        return [Path(r) for r in ([self.data_root] if isinstance(self.data_root, str) else self.data_root)]


STUDY_TYPES = {  # [study] key -> (test, what is allowed)
    "name": (lambda v: isinstance(v, str), "a name"),
    "datasets": (lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x for x in v),
                 "a non-empty list of dataset names, e.g. [\"chest_xray\"]"),
    "models": (lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x for x in v),
               "a non-empty list of model names, e.g. [\"resnet50\"]"),
    "modes": (lambda v: isinstance(v, list) and v and set(v) <= set(MODES), f"a non-empty list from {list(MODES)}"),
    "heads": (lambda v: isinstance(v, list) and v and all(problem("head", h) is None for h in v),
              "a non-empty list of heads (linear, mlp, study_mlp, logreg, knn)"),
    "data_root": (lambda v: isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)),
                  "a folder, or a list of folders searched in order"),
    "cache_dir": (lambda v: isinstance(v, str) and v, "a folder"),
    "runs_dir": (lambda v: isinstance(v, str) and v, "a folder"),
    "report_dir": (lambda v: isinstance(v, str) and v, "a folder"),
    "synthetic": (lambda v: isinstance(v, bool), "true or false"),
}


MODEL_KEYS = {  # [models.<name>] key -> (test, what is allowed)
    "tap": (lambda v: problem("tap", v) is None, "a tap name (see `probebench models`)"),
    "heads": (lambda v: isinstance(v, list) and v and all(problem("head", h) is None for h in v),
              "a non-empty list of heads"),
    "head_weights": (lambda v: isinstance(v, str) and v, "a checkpoint path"),
    "unfrozen_head": (lambda v: problem("finetune_head", v) is None, "linear or study_mlp"),
    **{k: (lambda v, k=k: problem(k, v, optional=False) is None, RULES[k][1])
       for k in ("resize", "crop", "interpolation")},
    **{k: (lambda v: isinstance(v, list) and len(v) in (1, 3) and all(isinstance(x, (int, float)) for x in v),
           "a list of 1 or 3 numbers") for k in ("mean", "std")},
}


FEATURE_KEYS = tuple(dict.fromkeys(spec_fields("extract") + spec_fields("models")))  # what defines a cached feature


KEYWORD_WEIGHTS = ("auto", "pretrained", "random")


def _relative_to(base: Path, value: str) -> str:
    """A path written in a study file, taken relative to the file's folder (URLs and absolute paths as given)."""
    if "://" in value:
        return value
    p = Path(value).expanduser()
    return value if p.is_absolute() else os.path.normpath(base / p)


def weights_assignments(values: list[str]) -> list[str]:
    """``run --weights``: ``random``, ``random:SEED`` or a path for every model, ``MODEL=VALUE`` for one (repeatable),
    as the ``--set`` assignments they stand for (``study.weights=...``, ``weights."MODEL"=...``)."""
    import json

    out = []
    for v in values:
        model, sep, value = v.partition("=")
        if sep and model and "/" not in model and not model.startswith("."):
            out.append(f"weights.{json.dumps(model.strip())}={json.dumps(value.strip())}")
        else:
            out.append(f"study.weights={json.dumps(v.strip())}")
    return out


def _weights_path(base: Path, value: str) -> str:
    """A weights value: keywords (auto, random[:SEED]) as given, a path relative to the study file."""
    return value if value in KEYWORD_WEIGHTS or value.startswith("random:") else _relative_to(base, value)


def _model_problem(name) -> str | None:
    """Why ``name`` is not a model the commands accept (None when it is)."""
    from probebench.models.registry import name_problem

    if not isinstance(name, str) or not name:
        return f"{name!r} is not a model name"
    return name_problem(name)


def apply_overrides(raw: dict, assignments: list[str]) -> dict[tuple[str, str], str]:
    """``section.key=value`` assignments (``run --set``) written into the parsed file ``raw``; the value is read as
    TOML (``lr=3e-4``, ``models=["resnet50"]``) and as a string when it is not TOML. Returns (section, key) ->
    the assignment, for error messages."""
    import json
    import re
    import tomllib

    applied = {}
    for a in assignments:
        target, sep, value = a.partition("=")
        quoted = re.fullmatch(r'(.+)\.("(?:[^"\\]|\\.)*")', target.strip())  # weights."timm:convnext_tiny.fb_in1k"
        section, dot, key = (quoted.group(1), ".", json.loads(quoted.group(2))) if quoted else \
            target.strip().rpartition(".")
        if not sep or not dot or not section or not key:
            raise ProbebenchError(f"--set {a!r}: expected section.key=value, e.g. training.lr=3e-4 or "
                                  "study.models='[\"resnet50\"]'")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        node = raw
        for part in section.split("."):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ProbebenchError(f"--set {a!r}: {section} is not a table in the study file")
        node[key] = parsed
        applied[(section, key)] = a
    return applied


SECTION_RULES = {"study": ("seeds", "grid", "weights", "val_unit"),
                 "extract": tuple(SECTIONS["extract"] - {"mean", "std"}),
                 "training": tuple(SECTIONS["training"] - {"cv"}), "report": tuple(SECTIONS["report"]),
                 "unfrozen": tuple(SECTIONS["unfrozen"] - {"precision"})}


def _check_sections(raw: dict, fail) -> None:
    """Every section is known and a table; every key of a fixed section is known."""
    for section, content in raw.items():
        if section not in SECTIONS:
            fail(section, None, f"unknown section [{section}]{did_you_mean(section, SECTIONS)}; allowed: "
                                f"{', '.join(sorted(SECTIONS))}")
        if not isinstance(content, dict):
            fail(None, section, f"{section} must be a [{section}] table; allowed sections: "
                                f"{', '.join(sorted(SECTIONS))}")
        if section in ("models", "weights"):
            continue  # checked below, once the models are known
        for key in content:
            if key not in SECTIONS[section]:
                fail(section, key, f"unknown key {key!r} in [{section}]{did_you_mean(key, SECTIONS[section])}; "
                                   f"allowed: {', '.join(sorted(SECTIONS[section]))}")


def _check_values(raw: dict, s: dict, fail) -> None:
    """The values of [study], the option rules of each section, normalisation, and what a grid refuses."""
    from probebench.models.config import Preprocessing, with_normalization

    for key in ("datasets", "models"):
        if key not in s:
            fail("study", key, f"[study] needs {key} = a non-empty list")
    for key, (test, allowed) in STUDY_TYPES.items():
        if key in s and not test(s[key]):
            fail("study", key, f"{key} must be {allowed}, not {s[key]!r}")
    for section, keys in SECTION_RULES.items():
        for key in keys:
            if key in raw.get(section, {}) and (p := problem(key, raw[section][key], optional=False)) is not None:
                fail(section, key, f"[{section}] {key} {p}")
    if "precision" in raw.get("unfrozen", {}) and (p := problem("finetune_precision", raw["unfrozen"]["precision"])):
        fail("unfrozen", "precision", f"[unfrozen] precision {p}")
    for key in ("mean", "std"):
        if key in raw.get("extract", {}):
            try:
                with_normalization(Preprocessing(), **{key: raw["extract"][key]})
            except ProbebenchError as exc:
                fail("extract", key, f"[extract] {exc}")
    if s.get("grid") and "frozen" in s.get("modes", MODES):  # what GridHead refuses, found before extraction
        t = raw.get("training", {})
        if set(s.get("heads", ["linear"])) - {"linear", "mlp"}:
            fail("study", "grid", "grid = true works with the linear and mlp heads only, not "
                                  f"{sorted(set(s['heads']) - {'linear', 'mlp'})}")
        if t.get("optimizer", "adam") != "adam" or "patience" in t:
            fail("training", "optimizer" if "optimizer" in t else "patience",
                 "grid = true trains with Adam for the full epochs; remove [training] optimizer / patience")


def _check_cv(raw: dict, s: dict, fail) -> dict:
    """[training] cv: folds for every dataset or a table per dataset; returns dataset entry (or spec stem) -> entry."""
    cv = raw.get("training", {}).get("cv")
    names = {**{Path(d).stem: d for d in s["datasets"]}, **{d: d for d in s["datasets"]}}  # a cv table's keys
    if cv is not None:
        folds = cv.values() if isinstance(cv, dict) else [cv]
        if any(problem("cv", f, optional=False) for f in folds) or (isinstance(cv, dict) and not cv):
            fail("training", "cv", f"[training] cv must be a number of folds from 2 to {MAX_FOLDS:,} for every "
                                   "dataset, or a table of dataset = folds (e.g. cv = {ichallenge_amd = 5}), not "
                                   f"{cv!r}")
        for d in (cv if isinstance(cv, dict) else {}):
            if d not in names:
                fail("training", "cv", f"[training] cv names {d!r}, which is not in [study] datasets "
                                       f"{s['datasets']}{did_you_mean(d, list(names))}")
    return names


def _check_models(raw: dict, s: dict, fail) -> None:
    """Model names, [weights] per model, and each [models.<name>] table's keys and values."""
    from probebench.models.config import Preprocessing, with_normalization

    for m in s["models"]:
        if (p := _model_problem(m)) is not None:
            fail("study", "models", p)
    for model, value in raw.get("weights", {}).items():
        if model not in s["models"]:
            fail("weights", model, f"[weights] {model!r} is not in [study] models {s['models']}"
                                   f"{did_you_mean(model, s['models'])}")
        if (p := problem("weights", value, optional=False)) is not None:
            fail("weights", model, f"[weights] {model} {p}")
    for model, settings in raw.get("models", {}).items():
        where = f"models.{model}"
        if model not in s["models"]:
            fail(where, None, f"[models.{model}]: {model!r} is not in [study] models {s['models']}")
        if not isinstance(settings, dict) or set(settings) - set(MODEL_KEYS):
            bad = sorted(set(settings) - set(MODEL_KEYS)) if isinstance(settings, dict) else []
            fail(where, bad[0] if bad else None, f"[models.{model}] takes the keys {', '.join(MODEL_KEYS)}"
                 + (f", not {bad[0]!r}{did_you_mean(bad[0], MODEL_KEYS)}" if bad else ""))
        for key, value in settings.items():
            test, allowed = MODEL_KEYS[key]
            if not test(value):
                fail(where, key, f"[models.{model}] {key} must be {allowed}, not {value!r}")
        for key in ("mean", "std"):
            if key in settings:
                try:
                    with_normalization(Preprocessing(), **{key: settings[key]})
                except ProbebenchError as exc:
                    fail(where, key, f"[models.{model}] {exc}")


def load_study(path: str | Path, overrides: list[str] = (), data_root: list[str | Path] | None = None) -> Study:
    """Parse a study TOML; unknown keys, wrong types and impossible values name the file, the line and what is
    allowed, so that nothing is extracted before every cell's settings are known to be usable.

    Paths in the file are relative to the file's folder. ``overrides`` (``section.key=value``, from ``run --set``)
    and ``data_root`` (``run --data-root``, relative to the current folder) replace what the file says and are
    checked like it; they are recorded in the study's state and report."""
    path = Path(path)
    raw, text = read_toml(path, "study file")
    applied = apply_overrides(raw, list(overrides))

    def fail(section, key, message):
        given = applied.get((section, key)) or next((a for (sec, _), a in applied.items()
                                                     if key is None and sec == section), None)
        if given is not None:
            raise ProbebenchError(f"--set {given}: {message}")
        raise ProbebenchError(f"{path}, line {line_of(text, section, key)}: {message}")

    _check_sections(raw, fail)
    s = raw.get("study", {})
    _check_values(raw, s, fail)
    names = _check_cv(raw, s, fail)
    _check_models(raw, s, fail)
    for d in s["datasets"]:
        if not d.endswith(".toml"):  # a spec name, looked up among the specs: one plain name
            component(d, "dataset", f"{path}, line {line_of(text, 'study', 'datasets')}: ")
    name = s.get("name", path.stem)
    component(name, "study name", f"{path}, line {line_of(text, 'study', 'name')}: ")
    return _study(path, raw, s, name, names, applied, overrides, data_root)


def _study(path: Path, raw: dict, s: dict, name: str, names: dict, applied: dict, overrides, data_root) -> Study:
    """The checked file as a ``Study``: paths in it relative to its folder, those given on the command line not."""
    base = path.parent
    paths = {k: s.get(k, default) for k, default in (("cache_dir", "cache"), ("runs_dir", "runs"),
                                                     ("report_dir", "report"))}
    paths = {k: v if ("study", k) in applied else _relative_to(base, v) for k, v in paths.items()}
    roots = s.get("data_root")
    if roots is not None and ("study", "data_root") not in applied:
        roots = [_relative_to(base, r) for r in ([roots] if isinstance(roots, str) else roots)]
    if data_root:
        roots = [str(r) for r in data_root]
    datasets_ = [_relative_to(base, d) if d.endswith(".toml") else d for d in s["datasets"]]
    training = dict(raw.get("training", {}))
    if isinstance(training.get("cv"), dict):  # keyed by the dataset entries as resolved (a spec file: its path)
        resolved = dict(zip(s["datasets"], datasets_))
        training["cv"] = {resolved[names[d]]: folds for d, folds in training["cv"].items()}
    per_model = {m: {k: (_weights_path(base, v) if k == "head_weights" else v) for k, v in settings.items()}
                 for m, settings in raw.get("models", {}).items()}
    weights = s.get("weights", "auto")
    return Study(name=name, source=path, datasets=datasets_, models=list(s["models"]),
                 modes=list(s.get("modes", MODES)), heads=list(s.get("heads", ["linear"])),
                 seeds=list(s.get("seeds", [0])), grid=bool(s.get("grid", False)),
                 weights=weights if ("study", "weights") in applied else _weights_path(base, weights),
                 data_root=roots, **paths,
                 synthetic=bool(s.get("synthetic", False)), training=training,
                 unfrozen=raw.get("unfrozen", {}), extract=raw.get("extract", {}), report=raw.get("report", {}),
                 per_model=per_model, val_unit=s.get("val_unit", "group"),
                 model_weights={m: v if ("weights", m) in applied else _weights_path(base, v)
                                for m, v in raw.get("weights", {}).items()},
                 overrides=list(overrides) + ([f"data_root={[str(r) for r in data_root]}"] if data_root else []))
