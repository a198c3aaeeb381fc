"""The throughput benchmark runs end to end and reports comparable numbers (no timing assertions)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from probebench.bench import throughput
from probebench.cli import app


@pytest.mark.slow
def test_throughput_reports_all_three_ways_and_feature_agreement():
    r = throughput("resnet50", images=6, image_size=64, study_images=3, precision="bf16")
    for key in ("a_forward_img_s", "b_extract_img_s", "c_study_loop_img_s", "b_over_a", "b_over_c"):
        assert r[key] > 0
    assert r["precision"] == "bf16" and r["channels_last"] is True and r["device"] == "cpu"
    assert 0.9 < r["cosine_to_fp32_full_decode"] <= 1.0 + 1e-6  # bf16 costs a little agreement, visibly


@pytest.mark.slow
def test_bench_cli_passes_options_through():
    res = CliRunner().invoke(app, ["bench", "extract", "--model", "resnet50", "--images", "6", "--image-size", "48"])
    assert res.exit_code == 0, res.output
    assert '"b_over_a"' in res.output and '"images": 6' in res.output


@pytest.mark.slow
def test_gpu_suite_runs_its_tiny_mode_on_a_cpu(tmp_path):
    """The GPU suite's own code, at tiny sizes: every section is filled and the files are written."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.py"
    spec = importlib.util.spec_from_file_location("gpu_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    result = suite.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert [(r["model"], r["precision"]) for r in result["extraction"]] == [
        ("resnet50", "fp32"), ("resnet50", "bf16"), ("dinov2_s", "fp32"), ("dinov2_s", "bf16")]
    for r in result["extraction"]:
        assert min(r["a_forward_img_s"], r["b_extract_img_s"], r["c_study_loop_img_s"], r["d_decode_img_s"]) > 0
        limit = 1 / (1 / r["a_forward_img_s"] + 1 / r["d_decode_img_s"])  # decoding and forward share the CPU
        assert r["limit_img_s"] == pytest.approx(limit, rel=0.02)
    assert [r["grad_checkpointing"] for r in result["finetune"]] == [False, True]
    assert all(r["step_seconds"] > 0 for r in result["finetune"])
    assert set(result["headline"]["models"]) == {"resnet50", "dinov2_s"} and result["headline"]["total_s"] > 0
    assert json.loads((tmp_path / "suite.json").read_text())["tiny"] is True
    assert "| resnet50 | fp32 |" in (tmp_path / "suite.md").read_text()


def test_mutation_score_interval_is_wilsons():
    import importlib.util
    from pathlib import Path

    from scipy.stats import binomtest

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "mutation.py"
    spec = importlib.util.spec_from_file_location("mutation", path)
    mutation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutation)
    for k, n in ((280, 315), (0, 7), (35, 35), (233, 315)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert mutation.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
