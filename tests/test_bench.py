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
