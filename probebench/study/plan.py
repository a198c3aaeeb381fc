"""A study's plan: every cell (dataset x model x mode x head) with its status (done, todo, blocked), what it
costs, how it is evaluated, and the shares of cells that shards and ``--only`` select."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from probebench.errors import ProbebenchError, describe_error, did_you_mean
from probebench.features.cache import open_group, store_exists
from probebench.study.config import FEATURE_KEYS, Study
from probebench.study.state import _load_state
from probebench.train.config import PROTOCOL


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
    """The plan as plain lines, one cell each (readable at 80 columns and in logs; names never cut), then why each
    blocked unit is blocked, whole (paths and URLs can be copied)."""
    lines = [f"study plan: {len(cells)} cells, {sum(c.status == 'done' for c in cells)} done"]
    for c in cells:
        if c.status == "blocked":
            work = "(see below)"
        elif c.mode == "frozen":
            work = f"{c.images:,} img + head, features {'cached' if c.cached else 'to extract'}, {c.evaluation}"
        else:
            work = f"{c.images:,} img-passes ({c.epochs} ep), end to end, {c.evaluation}"
        detail = f" ({c.detail})" if c.detail and c.status != "blocked" else ""
        lines.append(f"  {c.status:7s} {c.dataset} × {c.model} · {c.mode} · {c.head}: {work}{detail}")
    reasons: dict[str, list[str]] = {}
    for c in cells:
        if c.status == "blocked":
            reasons.setdefault(c.detail, []).append(f"{c.dataset} × {c.model}")
    lines += [f"blocked: {', '.join(dict.fromkeys(units))}:\n  {why}" for why, units in reasons.items()]
    return "\n".join(lines) + "\n"


def plan_record(study: Study, cells: list[Cell]) -> dict:
    """The plan as plain data (``run --dry-run --json``)."""
    return {"study": study.name, "source": str(study.source), "overrides": list(study.overrides),
            "cells": [{"key": c.key, "dataset": c.dataset, "model": c.model, "mode": c.mode, "head": c.head,
                       "status": c.status, "detail": c.detail, "images": c.images, "epochs": c.epochs,
                       "cached": c.cached, "hash": c.hash, "evaluation": c.evaluation} for c in cells]}
