"""Checks made before any work starts: option values (one rule per option, shared by the command line, the
Python API and study files), names that become folders, and paths that must stay inside the data root."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from probebench.errors import ProbebenchError, did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd")
SELECT_METRICS = ("val_accuracy", "val_loss")
PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtypes (precision.AUTOCAST)
RUNTIME_PRECISIONS = ("auto", *PRECISIONS)  # where the device may choose: fine-tuning
STORE_DTYPES = ("float32", "float16")
VAL_UNITS = ("group", "sample")
INTERPOLATIONS = ("bilinear", "bicubic")
FINETUNE_HEADS = ("linear", "study_mlp")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choice(options):
    """A rule allowing one of ``options``; the test carries them, for "did you mean"."""
    def test(v):
        return v in options
    test.options = options
    return test, "one of " + ", ".join(str(o) for o in options)


def _choice_of(module: str, attr: str):
    """A rule allowing one of the names its owner lists (``module.attr``), read when a value is checked: the owner
    keeps the one list (heads, metrics, ...) and may be heavy, so it is imported only then."""
    def options():
        import importlib

        return tuple(getattr(importlib.import_module(module), attr))

    def test(v):
        return v in options()
    test.options = options
    return test, lambda: "one of " + ", ".join(options())


def _choices_of(module: str, attr: str, what: str):
    """A rule allowing a non-empty list drawn from the names its owner lists (read when a value is checked)."""
    options = _choice_of(module, attr)[0].options

    def test(v):
        return isinstance(v, list) and v and all(x in options() for x in v)
    test.options = options
    return test, lambda: f"a non-empty list of {what} from " + ", ".join(options())


def _choices(options, what: str):
    """A rule allowing a non-empty list drawn from ``options``."""
    def test(v):
        return isinstance(v, list) and v and all(x in options for x in v)
    test.options = options
    return test, f"a non-empty list of {what} from " + ", ".join(options)


# Bounds on work: values past them cannot finish on any machine probebench targets, so they are refused before
# any work (and by `run --dry-run`) instead of running for hours or dying of memory at the end.
MAX_RESAMPLES = 1_000_000
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_FOLDS = 1_000

RULES = {  # option -> (test, what is allowed); None is allowed only where the option is optional (below)
    "epochs": (lambda v: _int(v) and 1 <= v <= MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS:,}"),
    "batch_size": (lambda v: _int(v) and 1 <= v <= MAX_BATCH, f"an integer from 1 to {MAX_BATCH:,}"),
    "chunk_size": (lambda v: _int(v) and 1 <= v <= MAX_BATCH, f"an integer from 1 to {MAX_BATCH:,}"),
    "accumulate": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "hidden": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "workers": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "patience": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "resize": (lambda v: _int(v) and v >= 1, "an integer number of pixels >= 1"),
    "crop": (lambda v: _int(v) and v >= 1, "an integer number of pixels >= 1"),
    "seed": (_int, "an integer"),
    "seeds": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_int(s) for s in v),
              "a non-empty list of integers"),
    "lr": (lambda v: _real(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: _real(v) and v >= 0, "a finite number >= 0"),
    "optimizer": _choice(OPTIMIZERS),
    "select_metric": _choice(SELECT_METRICS),
    "head": _choice_of("probebench.train.heads", "HEADS"),
    "precision": _choice(PRECISIONS),
    "finetune_precision": _choice(RUNTIME_PRECISIONS),
    "store_dtype": _choice(STORE_DTYPES),
    "normalize": _choice(("l2",)),
    "class_weight": _choice(("balanced",)),
    "tap": (lambda v: isinstance(v, str) and v != "", "a tap name (see `probebench models`)"),
    "device": (lambda v: isinstance(v, str) and v != "", "auto, cpu, cuda, cuda:N or mps"),
    "weights": (lambda v: isinstance(v, str) and v != "", "auto, random[:SEED] or a checkpoint path"),
    "skip_bad": (lambda v: isinstance(v, bool), "true or false"),
    "draft": (lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
    "grad_checkpointing": (lambda v: isinstance(v, bool), "true or false"),
    "grid": (lambda v: isinstance(v, bool), "true or false"),
    "interpolation": _choice(INTERPOLATIONS),
    "val_unit": _choice(VAL_UNITS),
    "finetune_head": _choice(FINETUNE_HEADS),
    "standardize": (lambda v: isinstance(v, bool), "true or false"),
    "study_ci": (lambda v: isinstance(v, bool), "true or false"),
    "label_fractions": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v)
                        and all(_real(f) and 0 < f <= 1 for f in v),
                        "a non-empty list of distinct fractions in (0, 1], e.g. 0.01,0.1,1"),
    "shots": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v)
              and all(_int(k) and k >= 1 for k in v), "a non-empty list of distinct integers >= 1, e.g. 1,4,16"),
    "cv": (lambda v: _int(v) and 2 <= v <= MAX_FOLDS, f"an integer number of folds from 2 to {MAX_FOLDS:,}"),
    "calibrate": _choice(("temperature",)),
    "study_quirks": _choices(("bn_epoch1",), "the study's quirks for fine-tuning"),
}


RULES.update({  # the statistics' vocabularies, each read from its owner
    "resamples": (lambda v: _int(v) and 2 <= v <= MAX_RESAMPLES,
                  f"an integer from 2 to {MAX_RESAMPLES:,} (at 10^6 replicates the Monte-Carlo error of a 95% "
                  "bound is far below the 0.01 points printed; more cannot change a table and would take hours)"),
    "method": _choice_of("probebench.stats.bootstrap", "METHODS"),
    "unit": _choice_of("probebench.stats.bootstrap", "UNITS"),
    "stratify": _choice_of("probebench.stats.bootstrap", "STRATIFY"),
    "level": _choice_of("probebench.stats.evaluate", "LEVELS"),
    "aggregate": _choice_of("probebench.stats.evaluate", "AGGREGATIONS"),
    "metrics": _choices_of("probebench.stats.metrics", "ALL_METRICS", "metrics"),
    "bootstrap_memory": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 4096,
                         "a number of GiB above 0 (the replicates' working memory; results do not depend on it)"),
    "jackknife_groups": (lambda v: _int(v) and 20 <= v <= 10 ** 7,
                         "an integer of at least 20 (BCa: the exact jackknife up to this many units)")})
OPTIONAL = {"bootstrap_memory", "interpolation", "workers", "patience", "resize", "crop", "seeds", "normalize", "class_weight",
            "tap", "batch_size", "channels_last", "label_fractions", "shots", "cv", "calibrate"}


def flag(key: str) -> str:
    """The command-line spelling of an option: ``batch_size`` -> ``--batch-size``."""
    return "--" + {"label_fractions": "label_fraction"}.get(key, key).replace("finetune_", "").replace("_", "-")


def problem(key: str, value, *, optional: bool | None = None) -> str | None:
    """What is wrong with ``value`` for option ``key`` (None when it is fine)."""
    test, allowed = RULES[key]
    allowed = allowed() if callable(allowed) else allowed
    if value is None and (key in OPTIONAL if optional is None else optional):
        return None
    try:
        ok = bool(test(value))
    except TypeError:
        ok = False
    if ok:
        return None
    hint, options = "", getattr(test, "options", None)
    options = options() if callable(options) else options
    if options is not None:
        wrong = [v for v in (value if isinstance(value, list) else [value]) if v not in options]
        hint = did_you_mean(wrong[0], options) if wrong else ""
    return f"must be {allowed}, not {value!r}{hint}"


def check_options(name=flag, /, **values) -> None:
    """Raise one error listing every bad value, each named as ``name(key)`` (the CLI flag by default)."""
    bad = [f"{name(k)} {p}" for k, v in values.items() if (p := problem(k, v)) is not None]
    if bad:
        raise ProbebenchError("; ".join(bad))


def _parse_list(text: str | None, what: str, convert, kind: str, example: str) -> list | None:
    if text is None or not str(text).strip():
        return None
    try:
        return [convert(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise ProbebenchError(f"--{what} {text!r}: expected {kind} separated by commas, e.g. {example}") from None


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``"1,2,3"`` -> [1, 2, 3]; None and "" stay None; anything else names the option."""
    return _parse_list(text, what, int, "integers", "1,2,3")


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """``"0.1,0.5,1"`` -> [0.1, 0.5, 1.0]; None and "" stay None; anything else names the option."""
    return _parse_list(text, what, float, "numbers", "0.1,0.5,1")


# ---------------------------------------------------------------- names and paths

_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def printable(name: str) -> str:
    """A file name as text every output can carry: bytes that are not UTF-8 (kept by Python as surrogates) are
    shown as ``\\xNN``; a valid name is returned unchanged."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def path_name(model: str) -> str:
    """A model name as one unambiguous path component (``timm:a/b`` -> ``timm%3Aa%2Fb``)."""
    from urllib.parse import quote

    return quote(model, safe="")


def component(name, what: str, where: str = "") -> str:
    """``name`` as a single, safe folder name: letters, digits and ``_ . + = -``, not starting with a dot, so it
    can never climb out of (``..``) or reach below (``a/b``) the folder it is written into."""
    if not isinstance(name, str) or not _COMPONENT.match(name):
        raise ProbebenchError(f"{where}{what} {name!r} cannot be a folder name: use letters, digits and _ . + = - "
                              "(no path separators, no leading dot)")
    return name


def outside(paths, root: str | Path) -> list[tuple[str, str]]:
    """The ``(path, resolved path)`` pairs among ``paths`` that, symlinks and ``..`` resolved, do not lie inside
    ``root`` (itself resolved, so a dataset folder that is a link to another disk is fine)."""
    base = os.path.realpath(root)
    prefix = base.rstrip(os.sep) + os.sep
    folders: dict[str, str] = {}  # each folder resolved once; then one lstat per file (is it a link?)
    found = []
    for p in paths:
        folder, name = os.path.split(os.fspath(p))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        real = os.path.join(folders[folder], name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if real != base and not real.startswith(prefix):
            found.append((str(p), real))
    return found


def line_of(text: str, section: str | None, key: str | None = None) -> int:
    """The line where ``[section]`` (or ``key`` inside it; top-level keys with ``section`` None) is written,
    for error messages; the section's line when the key is not written out, 1 when neither is."""
    lines = text.splitlines()
    if section is None:
        start = -1
    else:
        quoted = r"\s*\.\s*".join(rf"[\"']?{re.escape(part)}[\"']?" for part in _table_parts(section))
        start = next((i for i, ln in enumerate(lines) if re.match(rf"^\s*\[\[?\s*{quoted}\s*\]\]?", ln)), None)
        if start is None:
            return 1
    if key is None:
        return start + 1 if start >= 0 else 1
    for i in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            break
        if re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[i]):
            return i + 1
    return max(start, 0) + 1


def _table_parts(section: str) -> list[str]:
    """``models.timm:a.b`` -> ``["models", "timm:a.b"]``: a per-model table's name is one part, dots and all."""
    head, dot, rest = section.partition(".")
    return [head, rest] if dot and head == "models" else [section]


def read_toml(path: Path, what: str) -> tuple[dict, str]:
    """A TOML file's table and text; a missing, binary or malformed file is one error naming it."""
    import tomllib

    if not path.is_file():
        raise ProbebenchError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ProbebenchError(f"{path}: not a TOML text file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise ProbebenchError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ProbebenchError(f"{path}: invalid TOML: {exc}") from None
