"""What each stage imports: reports read run folders without torch, the data layer needs no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

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
    code = ("import sys, probebench.datasets, probebench.splits, probebench.pixels, probebench.metrics, "
            "probebench.bootstrap, probebench.runs\nprint(sorted(m for m in ('torch', 'timm', 'torchvision') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
