"""Mutation testing of the core modules with mutmut: plant one small bug at a time, count what the tests catch.

    python benchmarks/mutation.py                          # every core module (hours on 2 cores)
    python benchmarks/mutation.py --modules stats.metrics,stats.bootstrap
    python benchmarks/mutation.py --sample 40 --seed 0     # 40 mutants drawn at random per module (an estimate)
    python benchmarks/mutation.py --report-only            # summarise what earlier runs stored in mutants/

mutmut (a dev dependency) copies the package to ``mutants/``, runs the suite once to learn which tests
reach which function, then runs only those tests against each mutant. Results are kept in
``mutants/``, so an interrupted run continues where it stopped. The score is killed / (killed +
survived + timeout-free others), per module; when only part of a module's mutants were checked (a
``--sample`` run, or an interrupted one) the score is an estimate and its 95% Wilson interval is shown.
The survivors are printed with their diffs
(``--diffs``) so each can be killed by a new test or explained as equivalent.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = ("data.datasets", "data.splits", "data.mri", "features.images", "features.cache", "features.extract",
        "train.loop", "train.heads", "stats.metrics", "stats.bootstrap", "report.tables")
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "killed",
          -11: "crashed", -9: "crashed", None: "not checked"}


def mutmut() -> list[str]:
    exe = Path(sys.executable).parent / "mutmut"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mutmut"]


def run(modules: list[str], children: int) -> float:
    """Run mutmut on the mutants of ``modules``; returns the wall time in seconds."""
    start = time.perf_counter()
    patterns = [f"probebench.{m}.*" for m in modules]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per mutant worker
    subprocess.run([*mutmut(), "run", "--max-children", str(children), *patterns], cwd=REPO, env=env, check=False)
    return time.perf_counter() - start


def sample_names(modules: list[str], per_module: int, seed: int) -> list[str]:
    """``per_module`` mutant names drawn without replacement from each module, reproducibly from ``seed``.

    Mutants are generated (and the test-coverage map built) first by a run whose filter matches nothing.
    """
    if not all(statuses(m) for m in modules):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run([*mutmut(), "run", "probebench.__generate_only__"], cwd=REPO, env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = []
    for m in modules:
        keys = sorted(statuses(m))
        names += random.Random(f"{seed}:{m}").sample(keys, min(per_module, len(keys)))
    return names


def run_names(names: list[str], children: int) -> float:
    """Run mutmut on exactly the mutants named; returns the wall time in seconds."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([*mutmut(), "run", "--max-children", str(children), *names], cwd=REPO, env=env, check=False)
    return time.perf_counter() - start


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k / n (the sampled mutation score)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def statuses(module: str) -> dict[str, str]:
    """Mutant name -> status, from mutmut's record for ``module`` (empty when it was never run)."""
    meta = REPO / "mutants" / "probebench" / f"{module.replace('.', '/')}.py.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: STATUS.get(code, "suspicious") for name, code in codes.items()}


def tally(counts: Counter) -> tuple[int, int]:
    """(caught, checked): timeouts count as caught (the bug was noticed); unchecked mutants are left out."""
    caught = counts["killed"] + counts["timeout"]
    checked = caught + counts["survived"] + counts["no tests"] + counts["suspicious"] + counts["crashed"]
    return caught, checked


def score_text(counts: Counter) -> str:
    """The score, with its 95% Wilson interval when only part of the mutants were checked."""
    caught, checked = tally(counts)
    if not checked:
        return "not run"
    if counts["not checked"]:
        low, high = wilson(caught, checked)
        return f"{100 * caught / checked:.1f}% ({100 * low:.0f}–{100 * high:.0f}%, {checked} sampled)"
    return f"{100 * caught / checked:.1f}%"


@functools.lru_cache(maxsize=None)
def _functions(module: str) -> dict[str, list[str]]:
    """Function name -> its source lines, in the mutated copy of ``module``."""
    import ast

    source = (REPO / "mutants" / "probebench" / f"{module.replace('.', '/')}.py").read_text()
    lines = source.splitlines()
    return {n.name: lines[n.lineno - 1:n.end_lineno] for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def mutant_diff(module: str, name: str) -> str:
    """The lines a mutant changes, from the mutated copy mutmut keeps (original function vs mutant)."""
    import difflib

    funcs = _functions(module)
    short = name.rsplit(".", 1)[-1]
    orig = funcs.get(short.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    if orig is None or short not in funcs:
        return f"(no source for {name})"
    a, b = orig[1:], funcs[short][1:]  # the def lines differ by name only
    return "\n".join(line for line in difflib.unified_diff(a, b, lineterm="", n=0)
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def summary(modules: list[str], diffs: bool) -> str:
    """A Markdown table per module and the list of survivors."""
    lines = ["| module | mutants | killed | timeout | survived | no tests | not checked | score |",
             "|---|---|---|---|---|---|---|---|"]
    total: Counter = Counter()
    survivors: list[str] = []
    for m in modules:
        st = statuses(m)
        counts = Counter(st.values())
        total.update(counts)
        lines.append(f"| {m} | {len(st)} | {counts['killed']} | {counts['timeout']} | {counts['survived']} | "
                     f"{counts['no tests']} | {counts['not checked']} | {score_text(counts)} |")
        survivors += [(m, n) for n, v in sorted(st.items()) if v in ("survived", "no tests", "suspicious")]
    lines.append(f"| **all** | {sum(total.values())} | {total['killed']} | {total['timeout']} | {total['survived']} | "
                 f"{total['no tests']} | {total['not checked']} | {score_text(total)} |")
    lines += ["", f"Survivors ({len(survivors)}):", ""]
    for module, name in survivors:
        lines.append(f"- `{name}`")
        if diffs:
            lines += [f"  ```diff\n{textwrap.indent(mutant_diff(module, name), '  ')}\n  ```"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", default=",".join(CORE), help="comma-separated modules under probebench/, "
                                                            "e.g. stats.metrics")
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="check only N mutants per module, drawn at random (the score becomes an estimate)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    ap.add_argument("--report-only", action="store_true", help="only summarise stored results")
    ap.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    args = ap.parse_args()
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if not any((REPO / base / "probebench" / f"{m.replace('.', '/')}.py").exists()
                                             for base in (".", "mutants"))]
    if unknown:
        ap.error(f"no module probebench/{unknown[0].replace('.', '/')}.py; core modules: {', '.join(CORE)}")
    if not args.report_only:
        if args.sample:
            seconds = run_names(sample_names(modules, args.sample, args.seed), args.max_children)
        else:
            seconds = run(modules, args.max_children)
        print(f"\nmutmut ran {seconds / 60:.1f} min on {', '.join(modules)}\n")
    print(summary(modules, args.diffs))


if __name__ == "__main__":
    main()
