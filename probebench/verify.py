"""``verify``: check every feature store and run folder, say what is wrong, and with ``repair`` fix what can be
fixed without the images or the model.

Stores: metadata present, arrays openable, every chunk readable and finite. A damaged chunk of a complete
store is marked for recomputation (the next ``extract`` with the same options recomputes exactly those
chunks). Runs: every file as written (``SHA256SUMS``), JSON as its schema says, probabilities finite rows
summing to 1 with ``pred`` their argmax, sample ids unique and (when the store is here) its test split; a
damaged run is moved into ``<runs>/_damaged/`` so that reports go on without it. Leftovers of interrupted
writes (probebench's own temporaries, by name) are removed; nothing else is ever deleted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from probebench.errors import ProbebenchError, describe_error


@dataclass
class Finding:
    """One checked item: ``state`` is ok, damaged, incomplete, leftover or unchecked (a run whose store could not
    be read to check its ids: said, not counted as a problem); ``action`` what ``repair`` did."""

    kind: str  # "store" | "run" | "leftover"
    path: str
    state: str
    detail: str = ""
    action: str = ""


@dataclass
class Verification:
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        """What still needs a user's attention after any repair."""
        return [f for f in self.findings if f.state in ("damaged", "leftover") and not f.action]


def find_stores(cache_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(cache_dir).glob("*/*/*.zarr") if p.is_dir())


def check_store(path: Path, repair: bool) -> Finding:
    """A store's metadata, arrays and chunks; with ``repair`` the damaged chunks of a complete store are marked
    for recomputation by the next ``extract``."""
    from probebench.features import cache as fcache

    if not (path / "zarr.json").is_file():
        return Finding("store", str(path), "damaged", "zarr.json (its metadata) is missing: rebuild with "
                                                      "extract --force")
    try:
        root = fcache.open_group(path, mode="r+" if repair else "r")
        attrs = dict(root.attrs)
        missing = fcache.missing_arrays(root)
    except Exception as exc:
        return Finding("store", str(path), "damaged", f"unreadable ({describe_error(exc)}): rebuild with extract "
                                                      "--force")
    if missing or "key_material" not in attrs:
        return Finding("store", str(path), "damaged", f"array(s) {', '.join(missing) or 'attributes'} missing: "
                                                      "rebuild with extract --force")
    label = f"{attrs.get('model')} × {attrs.get('dataset')}"
    if not attrs.get("complete"):
        done = int(sum(root["chunk_done"][:]))
        return Finding("store", str(path), "incomplete", f"{label}: {done}/{attrs.get('n_chunks')} chunks; the same "
                                                         "extract resumes it")
    bad = fcache.damaged_chunks(root)
    if not bad:
        return Finding("store", str(path), "ok", f"{label}: {attrs.get('n_samples')} samples, "
                                                 f"{attrs.get('n_chunks')} chunks")
    finding = Finding("store", str(path), "damaged", f"{label}: chunk(s) {bad[:10]}{' …' if len(bad) > 10 else ''} "
                                                     "unreadable or non-finite")
    if repair:
        for c in bad:
            root["chunk_done"][c] = 0
        root.attrs.update({"complete": False, "repaired_chunks": bad})
        finding.action = (f"marked {len(bad)} chunk(s) for recomputation: rerun the same `probebench extract` "
                          f"(model {attrs.get('model')}, dataset {attrs.get('dataset')})")
    return finding


def store_problems(run, indexes: dict | None = None) -> tuple[list[str], str]:
    """Whether a frozen run's predictions are the test split (or, cross-validated, every sample) of the store it
    names, when that store is on this machine (runs are portable without the cache): the problems, and a note
    when the store is here but cannot be read, so the ids went unchecked (the store's own finding says why)."""
    from probebench.features import cache as fcache

    where, key = run.record.cache_path, run.record.cache_key
    if not where or fcache.is_url(where) or not (Path(where) / "zarr.json").is_file():
        return [], ""
    indexes = {} if indexes is None else indexes
    try:
        if where not in indexes:  # one read per store, however many runs name it
            indexes[where] = fcache.read_index(where)
        ids, split, attrs = indexes[where]
    except (ProbebenchError, OSError, KeyError, ValueError) as exc:  # a damaged store: said, not hidden
        return [], f"ids not checked: its store {where} cannot be read ({describe_error(exc)})"
    if key and attrs.get("key") != key:
        return [], ""  # the store at that path was rebuilt for other inputs: nothing to compare with
    expected = ids if run.record.cv else ids[split == "test"]
    if set(run.sample_ids.tolist()) != set(expected.tolist()):
        extra = sorted(set(run.sample_ids.tolist()) - set(expected.tolist()))
        missing = sorted(set(expected.tolist()) - set(run.sample_ids.tolist()))
        return [f"its sample ids are not the {'samples' if run.record.cv else 'test split'} of its store "
                f"{where} ({len(extra)} foreign, e.g. {extra[:2]}; {len(missing)} missing, e.g. {missing[:2]})"], ""
    return [], ""


def check_run(path: Path, runs_dir: Path, repair: bool, indexes: dict | None = None) -> Finding:
    """A run folder reads back completely and unedited; with ``repair`` a damaged one is moved to ``_damaged/``."""
    from probebench.runs import read_run

    try:
        run = read_run(path)
        cv = run.record.cv  # cross-validated: every sample is predicted once, out of fold
        n_test = cv.get("samples") if cv else run.record.n.get("test")
        if n_test is not None and n_test != len(run.y_true):
            raise ProbebenchError(f"predictions.csv has {len(run.y_true)} rows, config.json says {n_test} "
                                  f"{'cross-validated' if cv else 'test'} samples")
        problems, note = store_problems(run, indexes)
        if problems:
            raise ProbebenchError("; ".join(problems))
    except ProbebenchError as exc:
        finding = Finding("run", str(path), "damaged", str(exc).split("; `probebench verify")[0])
        if repair:
            target = runs_dir / "_damaged" / path.relative_to(runs_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            finding.action = f"moved to {target}"
        return finding
    return Finding("run", str(path), "unchecked" if note else "ok",
                   f"{run.record.model} {run.record.mode} {run.record.head}: "
                   f"{len(run.y_true)} test predictions" + (f"; {note}" if note else ""))


def leftovers(runs_dir: Path, cache_dir: Path) -> list[Path]:
    """Temporary files and folders that probebench itself wrote (their names say so, with the writer's process
    id) and whose writer is gone. Nothing inside a ``.zarr`` store (zarr's own files), nothing a running
    process still writes, and nothing with any other name is ever listed."""
    from probebench.atomic import process_alive, writer_pid

    found: list[Path] = []
    for base in (runs_dir, cache_dir):
        if not base.is_dir():
            continue
        for folder, dirs, files in os.walk(base):  # never descends into a store or a leftover folder
            for name in list(dirs):
                pid = writer_pid(name)
                if name.endswith(".zarr") or pid is not None:
                    dirs.remove(name)
                if pid is not None and not process_alive(pid) and not os.path.islink(os.path.join(folder, name)):
                    found.append(Path(folder) / name)
            found += [Path(folder) / n for n in files
                      if (pid := writer_pid(n)) is not None and not process_alive(pid)]
    return sorted(set(found))


def verify(cache_dir: str | Path = "cache", runs_dir: str | Path = "runs", *, repair: bool = False) -> Verification:
    """Check every store under ``cache_dir`` and every run under ``runs_dir``; ``repair`` fixes what it can."""
    from probebench.runs import find_runs

    cache_dir, runs_dir = Path(cache_dir), Path(runs_dir)
    if not cache_dir.is_dir() and not runs_dir.is_dir():
        raise ProbebenchError(f"neither {cache_dir} nor {runs_dir} exists: nothing to verify (give --cache-dir and "
                              "--runs-dir)")
    result = Verification()
    for store in find_stores(cache_dir) if cache_dir.is_dir() else []:
        result.findings.append(check_store(store, repair))
    indexes: dict = {}
    for run in find_runs(runs_dir) if runs_dir.is_dir() else []:
        if "_damaged" not in run.relative_to(runs_dir).parts:
            result.findings.append(check_run(run, runs_dir, repair, indexes))
    for p in leftovers(runs_dir, cache_dir):
        finding = Finding("leftover", str(p), "leftover", "left by an interrupted write")
        if repair:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            finding.action = "removed"
        result.findings.append(finding)
    return result


def render(result: Verification, verbose: bool = False) -> str:
    """One line per problem (and per checked item with ``verbose``), then a count."""
    lines = []
    for f in result.findings:
        if f.state == "ok" and not verbose:
            continue
        lines.append(f"{f.state:10} {f.kind:8} {f.path}: {f.detail}" + (f"\n{'':20}repaired: {f.action}"
                                                                         if f.action else ""))
    counts = {k: sum(f.kind == k for f in result.findings) for k in ("store", "run")}
    ok = sum(f.state == "ok" for f in result.findings)
    lines.append(f"checked {counts['store']} store(s) and {counts['run']} run(s): {ok} ok, "
                 f"{sum(bool(f.action) for f in result.findings)} repaired, {len(result.problems)} problem(s) left")
    return "\n".join(lines) + "\n"
