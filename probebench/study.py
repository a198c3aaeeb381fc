"""``run``: a whole study grid (datasets x models x frozen/unfrozen x heads x seeds) from one TOML file.

The plan is resolved and printed first. Each dataset x model is extracted once and reused by every
frozen head; every cell whose run already exists with the same config hash is skipped, so a rerun
after a crash picks up where it stopped. A failing cell is recorded with its error and the others go
on; the state lives in ``<runs_dir>/_studies/<name>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from probebench.atomic import write_json
from probebench.features.cache import open_group, store_exists
from probebench.features.spec import spec_fields
from probebench.errors import ProbebenchError, describe_error, did_you_mean
from probebench.train.config import PROTOCOL, TRAIN_FIELDS, TrainConfig
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
    "report": {"resamples", "method", "unit", "stratify", "level", "aggregate", "metrics", "study_ci"},
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
    import tomllib

    applied = {}
    for a in assignments:
        target, sep, value = a.partition("=")
        section, dot, key = target.strip().rpartition(".")
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


def load_study(path: str | Path, overrides: list[str] = (), data_root: list[str | Path] | None = None) -> Study:
    """Parse a study TOML; unknown keys, wrong types and impossible values name the file, the line and what is
    allowed, so that nothing is extracted before every cell's settings are known to be usable.

    Paths in the file are relative to the file's folder. ``overrides`` (``section.key=value``, from ``run --set``)
    and ``data_root`` (``run --data-root``, relative to the current folder) replace what the file says and are
    checked like it; they are recorded in the study's state and report."""
    from probebench.models.config import Preprocessing, with_normalization

    path = Path(path)
    raw, text = read_toml(path, "study file")
    applied = apply_overrides(raw, list(overrides))

    def fail(section, key, message):
        given = applied.get((section, key)) or next((a for (sec, _), a in applied.items()
                                                     if key is None and sec == section), None)
        if given is not None:
            raise ProbebenchError(f"--set {given}: {message}")
        raise ProbebenchError(f"{path}, line {line_of(text, section, key)}: {message}")

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
    s = raw.get("study", {})
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
    for m in s["models"]:
        if (p := _model_problem(m)) is not None:
            fail("study", "models", p)
    for model, value in raw.get("weights", {}).items():
        if model not in s["models"]:
            fail("weights", model, f"[weights] {model!r} is not in [study] models {s['models']}"
                                   f"{did_you_mean(model, s['models'])}")
        if (p := problem("weights", value, optional=False)) is not None:
            fail("weights", model, f"[weights] {model} {p}")
    for d in s["datasets"]:
        if not d.endswith(".toml"):  # a spec name, looked up among the specs: one plain name
            component(d, "dataset", f"{path}, line {line_of(text, 'study', 'datasets')}: ")
    per_model = raw.get("models", {})
    for model, settings in per_model.items():
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
    name = s.get("name", path.stem)
    component(name, "study name", f"{path}, line {line_of(text, 'study', 'name')}: ")

    base = path.parent  # paths in the file are relative to it; those given on the command line are not
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
                 for m, settings in per_model.items()}
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


@dataclass
class Cell:
    """One result of the grid: a dataset x model x mode (x head for frozen cells), over the study's seeds."""

    dataset: str
    model: str
    mode: str
    head: str  # "linear", "mlp", ... for frozen cells; "linear" (the new layer) for unfrozen ones
    status: str = "todo"  # todo | done | failed | blocked
    detail: str = ""
    images: int = 0
    epochs: int = 0
    cached: bool = False
    hash: str = ""
    evaluation: str = "test split"  # or "K-fold CV", or the test split plus a label-efficiency curve

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.model}/{self.mode}/{self.head}"


def _select(cells: list[Cell], only: str | None) -> list[Cell]:
    """``dataset=t1,model=dinov2_b`` keeps the matching cells (several values: ``model=a|b``)."""
    if not only:
        return cells
    keys = ("dataset", "model", "mode", "head")
    wanted = {}
    for part in only.split(","):
        if "=" not in part:
            raise ProbebenchError(f"--only {only!r}: expected key=value pairs such as dataset=t1,model=dinov2_b "
                                  "(quote it in the shell when it holds |)")
        k, v = (x.strip() for x in part.split("=", 1))
        if k not in keys:
            raise ProbebenchError(f"--only: unknown key {k!r}{did_you_mean(k, keys)}; allowed: {', '.join(keys)}")
        wanted[k] = {x.strip() for x in v.split("|")}
        present = sorted({getattr(c, k) for c in cells})
        missing = sorted(wanted[k] - set(present))
        if missing:
            raise ProbebenchError(f"--only {k}={'|'.join(missing)}: no cell of the plan has it"
                                  f"{did_you_mean(missing[0], present)}; the plan's {k}s: {', '.join(present)}")
    chosen = [c for c in cells if all(getattr(c, k) in v for k, v in wanted.items())]
    if not chosen:
        raise ProbebenchError(f"--only {only!r}: each value exists in the plan, but no cell has them all together")
    return chosen


def _state_path(study: Study, shard: tuple[int, int] | None = None) -> Path:
    """The state file a process writes: ``<runs>/_studies/<name>.json``, or one per shard (``run --shard``), so
    that shards running at once never write the same file."""
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(study.runs_dir) / "_studies" / f"{study.name}{suffix}.json"


def _read_state(p: Path) -> dict:
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (ValueError, OSError) as exc:  # only a record of finished cells: the runs themselves are checked
        sys.stderr.write(f"note: study state {p} is unreadable ({exc}); its cells are checked afresh\n")
        return {}


def _load_state(study: Study) -> dict:
    """Every cell's record, merged over the study's state files (the unsharded one and each shard's); each cell
    is written by one process at a time, so the most recently written record of a cell wins."""
    folder = _state_path(study).parent
    files = [p for p in (_state_path(study), *folder.glob(f"{study.name}.shard-*-of-*.json")) if p.is_file()]
    state: dict = {}
    for p in sorted(files, key=lambda p: p.stat().st_mtime_ns):
        state.update(_read_state(p))
    return state


def study_runs(study: Study) -> list[str]:
    """The run folders of the study's finished cells, from its state files (its report shows these only)."""
    return [r for cell in _load_state(study).values() if cell.get("status") == "done" for r in cell.get("runs", [])]


def _save_state(study: Study, records: dict, shard: tuple[int, int] | None = None) -> None:
    """Record this process's cells in its own state file (the others' records stay in theirs)."""
    if records:
        path = _state_path(study, shard)
        write_json(path, {**_read_state(path), **records})


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> (2, 4): the second of four shares of the study's cells."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ProbebenchError(f"--shard {text!r}: expected I/N, e.g. 1/4 (the first of four shares)") from None
    if not 1 <= i <= n:
        raise ProbebenchError(f"--shard {text!r}: I must be between 1 and N")
    return i, n


def _shard(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of shard I of N: the dataset x model units (one extraction each) dealt round-robin in plan
    order, so a unit's frozen and unfrozen cells stay together and no two shards write one feature cache."""
    if shard is None:
        return cells
    units = list(dict.fromkeys((c.dataset, c.model) for c in cells))
    mine = {u for j, u in enumerate(units) if j % shard[1] == shard[0] - 1}
    return [c for c in cells if (c.dataset, c.model) in mine]


def feature_spec(study: Study, model: str):
    """What defines a model's cached features in this study: [extract], then what [models.<model>] overrides
    (tap, head_weights, resize, crop, mean, std, interpolation), with the model's [weights] entry."""
    from probebench.features.spec import FeatureSpec

    e = {**study.extract, **{k: v for k, v in study.per_model.get(model, {}).items() if k in FEATURE_KEYS}}
    options = {k: tuple(e[k]) if isinstance(e[k], list) else e[k] for k in FEATURE_KEYS if k in e}
    return FeatureSpec(model, weights=study.weights_for(model), val_unit=study.val_unit, **options)


def model_inputs(features):
    """What a fine-tuned model sees of a study's feature spec: the cache-only options are dropped."""
    from probebench.features.spec import CACHE_ONLY, FeatureSpec

    return features.replace(**{k: getattr(FeatureSpec, k) for k in CACHE_ONLY})


def plan(study: Study, only: str | None = None, shard: tuple[int, int] | None = None) -> list[Cell]:
    """The cells of the study (of one shard) with their status: done (same config hash), todo, or blocked."""
    from probebench.features.spec import resolve_job

    if study.synthetic:
        _ensure_synthetic(study)
    cells = []
    for d in study.datasets:
        for m in study.models:
            for mode in study.modes:
                for h in (study.heads_for(m) if mode == "frozen" else
                          [study.per_model.get(m, {}).get("unfrozen_head", "linear")]):
                    cells.append(Cell(d, m, mode, h))
    cells = _shard(_select(cells, only), shard)
    state = _load_state(study)
    jobs: dict[tuple, object] = {}
    for c in cells:
        if (c.dataset, c.model) not in jobs:
            try:
                jobs[(c.dataset, c.model)] = resolve_job(feature_spec(study, c.model), c.dataset,
                                                         data_root=study.data_roots())
            except Exception as exc:  # any failure blocks this dataset x model only; the plan goes on
                jobs[(c.dataset, c.model)] = exc
        job = jobs[(c.dataset, c.model)]
        if isinstance(job, Exception):
            c.status, c.detail = "blocked", " ".join(describe_error(job).split())
            continue
        n = len(job.manifest)
        n_train = int((job.manifest.splits == "train").sum())
        budgets = len(study.training.get("label_fractions") or []) + len(study.training.get("shots") or [])
        if c.mode == "frozen" and study.cv_for(c.dataset):
            c.evaluation = f"{study.cv_for(c.dataset)}-fold CV"
        elif c.mode == "frozen" and budgets:
            c.evaluation = f"test split + label curve ({budgets} budgets x {len(study.seeds)} seeds)"
        settings = {**study.training, **(study.unfrozen if c.mode == "unfrozen" else {})}
        c.epochs = settings.get("epochs", PROTOCOL.epochs)
        c.images = n if c.mode == "frozen" else n_train * c.epochs
        store = job.cache_path(study.cache_dir)
        c.cached = c.mode == "frozen" and store_exists(store) and _complete(store)
        c.hash = hashlib.sha256(json.dumps({
            "cell": c.key, "request": job.request.key_material(), "settings": settings, "grid": study.grid,
            "seeds": study.seeds, "extract": study.extract,
            **({"model_settings": study.per_model[c.model]} if c.model in study.per_model else {})},
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        previous = state.get(c.key, {})
        if (previous.get("hash") == c.hash and previous.get("status") == "done"
                and all(_whole(r) for r in previous.get("runs", []))):
            c.status = "done"
    return cells


def _whole(run: str) -> bool:
    """A recorded run still reads back whole (the same checks as ``verify``); otherwise its cell is redone."""
    from probebench.runs import read_run

    try:
        read_run(run)
        return True
    except ProbebenchError:
        return False


def _complete(store: Path | str) -> bool:
    try:
        return bool(open_group(store, mode="r").attrs.get("complete"))
    except Exception:
        return False


def _ensure_synthetic(study: Study) -> None:
    """Synthetic studies (configs/demo.toml) generate their data when it is missing."""
    from probebench.demo import make_demo_dataset

    root = (study.data_roots() or [Path("data")])[0]
    if not (root / "demo_shapes").is_dir():
        make_demo_dataset(root)


def render_plan(cells: list[Cell]) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=150)
    table = Table(title=f"study plan: {len(cells)} cells, {sum(c.status == 'done' for c in cells)} done")
    for col in ("dataset", "model", "mode", "head", "images x epochs", "features", "evaluation", "status"):
        table.add_column(col)
    for c in cells:
        work = f"{c.images:,} img + head" if c.mode == "frozen" else f"{c.images:,} img-passes ({c.epochs} ep)"
        feats = ("cached" if c.cached else "to extract") if c.mode == "frozen" else "end to end"
        status = c.status + (f": {c.detail}" if c.detail else "")
        table.add_row(c.dataset, c.model, c.mode, c.head, work if c.status != "blocked" else "", feats
                      if c.status != "blocked" else "", c.evaluation, status)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


@dataclass
class StudyResult:
    cells: list[Cell]
    report_dir: Path | None = None

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status in ("failed", "blocked")]


def run_study(study: Study, *, only: str | None = None, dry_run: bool = False, progress: bool = True,
              write_report: bool = True, echo=print, track: str | None = None,
              shard: tuple[int, int] | None = None) -> StudyResult:
    """Run every cell that is not done; record failures and go on; then write the report of every finished
    cell. ``track``: log each new run to ``tensorboard`` or ``mlflow``. ``shard`` (I, N): only the I-th of N
    deterministic shares of the cells (a SLURM job array runs all N); the report covers the cells of every
    shard finished so far, so the last shard to end writes the whole study's."""
    from probebench.report.tracking import check_tracker, track_run

    check_tracker(track)
    from probebench.features.extract import extract
    from probebench.train.finetune import finetune
    from probebench.train.fit import fit
    from probebench.progress import make_progress

    cells = plan(study, only, shard)
    echo(render_plan(cells))
    if dry_run:
        return StudyResult(cells)
    state = {}  # this process's records
    for c in cells:
        if c.status == "blocked":  # recorded like failures, so the state file tells the whole story
            state[c.key] = {"status": "blocked", "error": c.detail}
    _save_state(study, state, shard)
    data_root = study.data_roots()
    t = study.training
    todo = [c for c in cells if c.status == "todo"]
    with make_progress(progress, unit="cell") as bar:
        overall = bar.add_task(f"study {study.name}", total=len(cells),
                               completed=len(cells) - len(todo), info="")
        for c in todo:
            bar.update(overall, info=c.key)
            start = time.perf_counter()
            try:
                if c.mode == "frozen":
                    from probebench.train.heads import trains

                    features = feature_spec(study, c.model)
                    extract(features, c.dataset, data_root=data_root, cache_dir=study.cache_dir,
                            progress=progress, batch_size=study.extract.get("batch_size"),
                            workers=study.extract.get("workers"), skip_bad=study.extract.get("skip_bad", False))
                    common = dict(data_root=data_root, cache_dir=study.cache_dir,
                                  runs_dir=study.runs_dir, head=c.head, grid=study.grid,
                                  train=study.train_config(t if trains(c.head, study.grid) else {},
                                                           seed=study.seeds[0]),
                                  seeds=study.seeds if len(study.seeds) > 1 else None,
                                  calibrate=t.get("calibrate"), progress=progress,
                                  on_run=lambda run: track_run(run, track))
                    folds = study.cv_for(c.dataset)
                    if folds:  # evaluated by cross-validation only: the label curve needs a fixed test split
                        runs = [str(fit(features, c.dataset, cv=folds, **common))]
                    else:
                        runs = [str(fit(features, c.dataset, **common))]
                        if t.get("label_fractions") or t.get("shots"):
                            runs.append(str(fit(features, c.dataset, label_fractions=t.get("label_fractions"),
                                                shots=t.get("shots"), **common)))
                else:
                    u = {**t, **study.unfrozen}
                    runs = []
                    for s in study.seeds:
                        runs.append(str(finetune(
                            model_inputs(feature_spec(study, c.model)), c.dataset, data_root=data_root,
                            runs_dir=study.runs_dir, train=study.train_config(u, seed=s),
                            accumulate=u.get("accumulate", 1), precision=u.get("precision", "auto"),
                            grad_checkpointing=u.get("grad_checkpointing", False), workers=u.get("workers"),
                            progress=progress, existing="reuse", resume="auto", head=c.head,
                            calibrate=u.get("calibrate"), study_quirks=tuple(u.get("study_quirks", ())),
                            on_run=lambda run: track_run(run, track))))
                c.status, c.detail = "done", f"{time.perf_counter() - start:.1f} s"
                state[c.key] = {"hash": c.hash, "status": "done", "runs": runs,
                                **({"overrides": study.overrides} if study.overrides else {})}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # recorded, and the study goes on
                c.status = "failed"
                c.detail = " ".join(describe_error(exc).split())
                state[c.key] = {"hash": c.hash, "status": "failed", "error": c.detail,
                                **({"overrides": study.overrides} if study.overrides else {}),
                                "traceback": traceback.format_exc()[-4000:]}
            _save_state(study, state, shard)
            bar.update(overall, advance=1)
    result = StudyResult(cells)
    if write_report and any(c.status == "done" for c in cells):
        from probebench.report.publish import write_report as publish

        result.report_dir = publish(study.runs_dir, study.report_dir, settings=study.report, only=study_runs(study),
                                    study_file=study.source, study_overrides=study.overrides)
    return result


def plan_record(study: Study, cells: list[Cell]) -> dict:
    """The plan as plain data (``run --dry-run --json``)."""
    return {"study": study.name, "source": str(study.source), "overrides": list(study.overrides),
            "cells": [{"key": c.key, "dataset": c.dataset, "model": c.model, "mode": c.mode, "head": c.head,
                       "status": c.status, "detail": c.detail, "images": c.images, "epochs": c.epochs,
                       "cached": c.cached, "hash": c.hash, "evaluation": c.evaluation} for c in cells]}


def run_on_devices(study_file: str | Path, devices: list[str], *, overrides: list[str] = (),
                   data_root: list | None = None, only: str | None = None, track: str | None = None) -> int:
    """``run --devices 0,1,2,3``: one shard per device, run side by side as processes that each see only their
    device (``CUDA_VISIBLE_DEVICES``; ``cpu`` hides every GPU); returns how many shards failed. The caller then
    runs the study once more in-process, which finds every cell done and writes the whole report."""
    import os
    import subprocess

    n = len(devices)
    base = [sys.executable, "-m", "probebench", "run", str(study_file)]
    for a in overrides:
        base += ["--set", a]
    for r in data_root or []:
        base += ["--data-root", str(r)]
    if only:
        base += ["--only", only]
    if track:
        base += ["--track", track]
    procs = []
    for i, dev in enumerate(devices, start=1):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if dev == "cpu" else dev}
        procs.append(subprocess.Popen([*base, "--shard", f"{i}/{n}"], env=env))
    return sum(p.wait() != 0 for p in procs)


def _shard_job(study_file: str, overrides: list[str], data_root, only, track, shard: tuple[int, int]) -> None:
    """What one submitit job runs: the study's shard, without the report (written once all jobs are done)."""
    study = load_study(study_file, overrides=overrides, data_root=data_root)
    run_study(study, only=only, shard=shard, progress=False, write_report=False, echo=lambda t: None, track=track)


def run_with_submitit(study_file: str | Path, jobs: int, *, overrides: list[str] = (), data_root: list | None = None,
                      only: str | None = None, track: str | None = None, cluster: str | None = None,
                      slurm: dict | None = None) -> list[str]:
    """``run --launcher submitit``: the study's cells as ``jobs`` shards submitted through submitit (SLURM where
    ``sbatch`` exists, else local processes; ``cluster="local"`` forces those), waited for; returns the errors of
    jobs that failed. Job logs go to ``<runs>/_submitit``."""
    try:
        import submitit
    except ImportError:
        raise ProbebenchError('--launcher submitit needs the submitit package: pip install "probebench[submitit]" '
                              "(or pip install submitit)") from None
    study = load_study(study_file, overrides=overrides, data_root=data_root)
    executor = submitit.AutoExecutor(folder=Path(study.runs_dir) / "_submitit" / "%j", cluster=cluster)
    executor.update_parameters(name=f"probebench-{study.name}", **(slurm or {}))
    roots = [str(r) for r in data_root] if data_root else None
    submitted = [executor.submit(_shard_job, str(study_file), list(overrides), roots, only, track, (i, jobs))
                 for i in range(1, jobs + 1)]
    errors = []
    for i, job in enumerate(submitted, start=1):
        try:
            job.result()
        except Exception as exc:  # the job's own error, from its log; the summary run shows which cells
            errors.append(f"shard {i}/{jobs} (job {job.job_id}): {str(exc).strip().splitlines()[-1][:300]}")
    return errors
