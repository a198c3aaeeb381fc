"""What each stage imports: reports read run folders without torch, the data layer needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_run

CHECK = """
import sys
from typer.testing import CliRunner
from probebench.cli import app
res = CliRunner().invoke(app, {args!r})
assert res.exit_code == 0, res.output
heavy = sorted(m for m in ("torch", "torchvision", "timm", "zarr") if m in sys.modules)
print("HEAVY", heavy)
"""


def _imports_after(args: list[str], cwd) -> str:
    res = subprocess.run([sys.executable, "-c", CHECK.format(args=args)], capture_output=True, text=True, cwd=cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_report_on_a_runs_folder_imports_no_torch_and_no_cache(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    fake_run(tmp_path / "runs", y, np.eye(2)[y] * 0.8 + 0.1, model="resnet50")
    fake_run(tmp_path / "runs", y, np.full((40, 2), 0.5), model="dinov2_s")
    assert _imports_after(["report", "--runs-dir", "runs", "--resamples", "50"], tmp_path) == "HEAVY []"
    assert _imports_after(["report", "--runs-dir", "runs", "--resamples", "50", "--out", "rep"], tmp_path) == \
        "HEAVY []"
    assert (tmp_path / "rep" / "report.html").is_file()


def test_the_data_layer_imports_no_torch():
    code = ("import sys, probebench.data.datasets, probebench.data.splits, probebench.data.pixels, probebench.stats.metrics, "
            "probebench.stats.bootstrap, probebench.runs\nprint(sorted(m for m in ('torch', 'timm', 'torchvision') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


PACKAGE = Path(__file__).resolve().parent.parent / "probebench"
UTILITIES = {"errors", "validate", "atomic", "progress", "distributed", "runs", "budget", "supervise", "threads"}  # shared by every stage
ALLOWED = {  # stage -> stages it may import (besides the utilities); a later stage never below an earlier one
    "models": {"models", "data"}, "data": {"data"}, "features": {"features", "data", "models"},
    "train": {"train", "features", "data", "models", "stats"}, "stats": {"stats"}, "report": {"report", "stats"},
    "study": {"study", "train", "features", "data", "models", "stats", "report"},  # the orchestrator: above all
}


def _imports(type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> probebench modules it imports anywhere (functions included), TYPE_CHECKING blocks only if asked."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for b in node.body for n in ast.walk(b)} if not type_checking else set()
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("probebench"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists() else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("probebench")}
        graph[name] = deps - {name, "probebench"}
    return graph


def test_no_import_cycles_and_no_stage_imports_a_later_one():
    graph = _imports()
    assert len(graph) > 30
    for module, deps in graph.items():
        parts = module.split(".")
        if len(parts) < 3:  # top-level modules: cli, study, bench, ... may use every stage
            continue
        stage = parts[1]
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) == 2:  # the study orchestrates: it may use the top-level helpers (demo data) too
                assert dparts[1] in UTILITIES or (stage == "study" and dparts[1] != "cli"), \
                    f"{module} imports the top-level {dep}"
            else:
                assert dparts[1] in ALLOWED[stage], f"{module} ({stage}) imports {dep} ({dparts[1]})"

    def visit(node, path):
        assert node not in path, "import cycle: " + " -> ".join([*path[path.index(node):], node])
        for dep in graph.get(node, ()):
            if dep not in done:
                visit(dep, [*path, node])
        done.add(node)

    done: set = set()
    for module in graph:
        visit(module, [])
    graph = _imports(type_checking=True)  # annotations must not need a cycle either
    done = set()
    for module in graph:
        visit(module, [])


def test_the_public_api_is_small_lazy_and_complete():
    code = ("import sys, probebench\nassert 'torch' not in sys.modules\n"
            "from probebench import FeatureSpec, create_model, extract, finetune, fit, load_manifest, report_rows\n"
            "assert all(callable(f) for f in (FeatureSpec, create_model, extract, finetune, fit, load_manifest, "
            "report_rows))\nprint(sorted(probebench.__all__))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'FeatureSpec'" in res.stdout and "'report_rows'" in res.stdout


@pytest.mark.parametrize("args,said", [(["fit", "--modle", "resnet50"], "No such option"),
                                       (["extract", "-m", "resnet5", "-d", "chest_xray"], "did you mean 'resnet50'"),
                                       (["fit", "-m", "resnet50", "-d", "chest_xra"], "did you mean 'chest_xray'"),
                                       (["finetune", "-m", "resnet50", "-d", "no.toml"], "spec file not found")])
def test_the_command_line_answers_a_misspelt_option_or_name_without_loading_torch(tmp_path, args, said):
    """Options, model names and dataset names are checked before any heavy library is imported: a typo is answered
    at once, not after torch."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom probebench.cli import app\n"
            f"res = CliRunner().invoke(app, {args!r})\n"
            f"assert res.exit_code == 2 and {said!r} in res.output, res.output\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'zarr', 'sklearn') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
