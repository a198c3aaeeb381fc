"""The study runner and the publication report: demo study end to end, reruns, failures, file contents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_run

from probebench.errors import ProbebenchError
from probebench.study import load_study, plan, run_study

REPO = Path(__file__).resolve().parents[1]

SMALL_STUDY = """
[study]
name = "small"
datasets = ["demo_shapes"]
models = ["resnet50", "dinov2_s"]
modes = ["frozen", "unfrozen"]
heads = ["linear"]
weights = "random"
synthetic = true
data_root = "data"
cache_dir = "cache"
runs_dir = "runs"
report_dir = "report"

[training]
epochs = 3
lr = 1e-3
batch_size = 16

[unfrozen]
epochs = 1

[extract]
resize = 32
crop = 28
workers = 0

[report]
resamples = 200
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_study_files_parse():
    paper = load_study(REPO / "configs" / "paper.toml")
    assert paper.datasets == ["t1", "t2", "flair", "chest_xray", "ichallenge_amd", "ham10000"]
    assert paper.models == ["vgg16", "resnet50", "densenet121", "dinov2_s", "dinov2_b", "dinov2_l"]
    assert paper.modes == ["frozen", "unfrozen"] and paper.training["lr"] == 1e-4
    demo = load_study(REPO / "configs" / "demo.toml")
    assert demo.synthetic and demo.weights == "random"
    from probebench.models.cards import ENTRIES

    medical = load_study(REPO / "configs" / "medical-backbones.toml")  # every named backbone, beside DINOv2-B
    assert set(medical.models) == {"dinov2_b", *ENTRIES} and medical.datasets == ["chest_xray", "ichallenge_amd",
                                                                                  "ham10000"]


def test_unknown_keys_and_impossible_values_name_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.toml", SMALL_STUDY.replace('heads = ["linear"]', 'heads = ["linear"]\nhaeds = 1'))
    with pytest.raises(ProbebenchError, match=r"bad.toml, line 8: unknown key 'haeds' in \[study\] \(did you mean 'heads' or 'seeds'\?\); "
                                                r"allowed: .*heads"):
        load_study(bad)
    bad = write(tmp_path / "bad2.toml", SMALL_STUDY.replace('"dinov2_s"]', '"dinov2_ss"]'))
    with pytest.raises(ProbebenchError, match=r"bad2.toml, line 5: unknown model 'dinov2_ss' \(did you mean 'dinov2_s'.*known models: vgg16"):
        load_study(bad)
    bad = write(tmp_path / "bad3.toml", SMALL_STUDY.replace("epochs = 3", "epochs = 0"))
    with pytest.raises(ProbebenchError, match=r"bad3.toml, line 16: \[training\] epochs must be an integer from 1 to 100,000"):
        load_study(bad)
    bad = write(tmp_path / "bad4.toml", SMALL_STUDY + "\n[trainning]\nepochs = 1\n")
    with pytest.raises(ProbebenchError, match=r"unknown section \[trainning\]"):
        load_study(bad)


@pytest.mark.slow
def test_study_end_to_end_rerun_is_a_noop_and_report_files_hold_every_cell(tmp_path):
    study = load_study(write(tmp_path / "small.toml", SMALL_STUDY))
    stranger = fake_run(Path("runs"), [0, 1, 0, 1], np.eye(2)[[0, 1, 1, 1]], dataset="not_in_study")  # a fit's run
    assert [c.status for c in plan(study, only="model=resnet50")] == ["todo", "todo"]
    result = run_study(study, progress=False, echo=lambda t: None)
    assert [c.status for c in result.cells] == ["done"] * 4
    again = run_study(study, progress=False, echo=lambda t: None, write_report=False)
    assert [c.status for c in again.cells] == ["done"] * 4  # nothing ran: every cell skipped
    assert len(list(Path("runs").glob("demo_shapes/*/*/*/config.json"))) == 4
    assert stranger.is_dir()

    report = Path("report")
    names = {p.name for p in report.iterdir()}
    assert {"tables.md", "tables.tex", "results.csv", "report.html", "figures"} <= names
    md, tex, csv_text, page = ((report / n).read_text() for n in ("tables.md", "tables.tex", "results.csv",
                                                                 "report.html"))
    for text in (md, tex, csv_text, page):  # the study's report shows the study's runs only
        assert "not_in_study" not in text and "not\\_in\\_study" not in text
    for model in ("resnet50", "dinov2_s"):
        for freeze in ("Y", "N"):
            assert f"| demo_shapes | {model} † | {freeze} |" in md
        assert "dinov2\\_s" in tex and "resnet50" in tex
    assert {"forest_demo_shapes.png", "forest_demo_shapes.svg"} <= {p.name for p in (report / "figures").iterdir()}
    assert len(list((report / "figures").glob("confusion_*.png"))) == 4
    # LaTeX: booktabs, balanced environments, escaped underscores, bold best, method in the caption
    assert r"\toprule" in tex and r"\textbf{" in tex and "percentile bootstrap" in tex
    for env in ("table", "tabular"):
        assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}") > 0
    assert not re.search(r"(?<!\\)_", tex.replace(r"\_", ""))
    # tidy CSV at sample and patient level
    assert ",sample," in csv_text and ",patient," in csv_text and "auroc_macro" in csv_text
    # HTML: self-contained, random weights in red, provenance
    assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", page) and "http://" not in page and "https://" not in page
    assert 'class="random"' in page and "Provenance" in page and "sha256" in page and "data:image/png;base64," in page


def test_a_failing_cell_does_not_stop_the_others(tmp_path, tiny):
    spec, root = tiny
    assert root.resolve() == (Path("data")).resolve()  # the study's data_root
    (root / "tiny" / "b" / "p105_1.png").write_bytes(b"corrupt")
    text = SMALL_STUDY.replace('modes = ["frozen", "unfrozen"]', 'modes = ["frozen"]').replace(
        'models = ["resnet50", "dinov2_s"]', 'models = ["resnet50"]').replace(
        'datasets = ["demo_shapes"]', f'datasets = ["chest_xray", "{spec}", "demo_shapes"]')
    study = load_study(write(tmp_path / "s.toml", text))
    result = run_study(study, progress=False, echo=lambda t: None, write_report=False)
    statuses = {c.dataset: (c.status, c.detail) for c in result.cells}
    assert statuses["chest_xray"][0] == "blocked" and "not found" in statuses["chest_xray"][1]  # no data
    assert statuses[str(spec)][0] == "failed" and "cannot read image" in statuses[str(spec)][1]
    assert statuses["demo_shapes"][0] == "done"  # after two failures, the study went on
    assert len(result.failed) == 2
    state = (Path("runs") / "_studies" / "small.json").read_text()
    assert "cannot read image" in state and "blocked" in state
    no_weights = load_study(write(tmp_path / "w.toml", text.replace('weights = "random"', 'weights = "auto"')))
    blocked = plan(no_weights, only="dataset=demo_shapes")
    assert blocked[0].status == "blocked" and "resnet50-0676ba61.pth" in blocked[0].detail


def test_cli_run_dry_run_and_exit_code(tmp_path):
    from typer.testing import CliRunner

    from probebench.cli import app

    runner = CliRunner()
    study = write(tmp_path / "small.toml", SMALL_STUDY.replace('modes = ["frozen", "unfrozen"]', 'modes = ["frozen"]'))
    res = runner.invoke(app, ["run", str(study), "--dry-run"])
    assert res.exit_code == 0 and "study plan: 2 cells" in res.output and not Path("runs").exists()
    res = runner.invoke(app, ["run", str(study), "--only", "model=resnet50"])
    assert res.exit_code == 0 and "1/1 cells done" in res.output, res.output
    broken = write(tmp_path / "broken.toml", SMALL_STUDY.replace('weights = "random"', 'weights = "auto"'))
    res = runner.invoke(app, ["run", str(broken), "--only", "model=resnet50,mode=frozen"])
    assert res.exit_code == 1 and "blocked" in res.output


def test_run_weights_option_sets_every_model_or_one_and_is_recorded(tmp_path):
    """An offline study without weights: every cell blocked, and the message names `run --weights`; `--weights
    random` plans them all, `--weights MODEL=PATH` one model (a path relative to the current folder), and both are
    recorded with the plan like --set."""
    import json

    import torch
    import torchvision
    from typer.testing import CliRunner

    from probebench.cli import app

    runner = CliRunner()
    study = write(tmp_path / "w.toml", SMALL_STUDY.replace('weights = "random"', 'weights = "auto"')
                  .replace('modes = ["frozen", "unfrozen"]', 'modes = ["frozen"]'))
    res = runner.invoke(app, ["run", str(study), "--dry-run", "--json"])
    cells = json.loads(res.output)["cells"]
    assert {c["status"] for c in cells} == {"blocked"} and "--weights random" in cells[0]["detail"]
    assert {f"with `run`: --weights {c['model']}=PATH" in c["detail"] for c in cells} == {True}  # the form run takes
    text = runner.invoke(app, ["run", str(study), "--dry-run"]).output  # the URL whole, on a line of its own
    assert "(from https://download.pytorch.org/models/resnet50-0676ba61.pth)" in text
    res = runner.invoke(app, ["run", str(study), "--dry-run", "--json", "--weights", "random:3"])
    plan_ = json.loads(res.output)
    assert {c["status"] for c in plan_["cells"]} == {"todo"} and plan_["overrides"] == ['study.weights="random:3"']
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    res = runner.invoke(app, ["run", str(study), "--dry-run", "--json", "--weights", "resnet50=r50.pth"])
    status = {c["model"]: c["status"] for c in json.loads(res.output)["cells"]}
    assert status == {"resnet50": "todo", "dinov2_s": "blocked"}
    loaded = load_study(study, overrides=['weights."resnet50"="r50.pth"'])
    assert loaded.weights_for("resnet50") == "r50.pth" and loaded.weights_for("dinov2_s") == "auto"
    res = runner.invoke(app, ["run", str(study), "--dry-run", "--weights", "resnet5=r50.pth"])
    assert res.exit_code == 2 and "[weights] 'resnet5' is not in [study] models" in res.output


def test_paper_faithful_plans_the_studys_dinov2_setup():
    study = load_study(REPO / "configs" / "paper-faithful.toml")
    cells = plan(study)
    assert len(cells) == 6 * 6 * 2
    dino = {(c.model, c.mode, c.head) for c in cells if c.model.startswith("dinov2") and c.dataset == "t1"}
    assert dino == {(m, mode, "study_mlp") for m in ("dinov2_s", "dinov2_b", "dinov2_l")
                    for mode in ("frozen", "unfrozen")}
    assert {c.head for c in cells if c.model == "vgg16"} == {"linear"}
    from probebench.study import feature_spec

    assert feature_spec(study, "dinov2_b").tap == "imagenet_logits"
    assert feature_spec(study, "resnet50").interpolation == "bilinear" and feature_spec(study, "resnet50").tap is None


@pytest.mark.slow
def test_faithful_and_recommended_grids_run_on_synthetic_data_and_report_side_by_side(tmp_path):
    """Random weights, tiny images: the faithful DINOv2 cells (ImageNet-logit tap + the study's MLP, frozen and
    fine-tuned, bilinear) and the recommended ones run end to end into one runs folder; `report` shows both."""
    from typer.testing import CliRunner

    from probebench.cli import app

    recommended = SMALL_STUDY.replace('models = ["resnet50", "dinov2_s"]', 'models = ["dinov2_s"]')
    faithful = (recommended.replace('name = "small"', 'name = "faithful"')
                .replace('report_dir = "report"', 'report_dir = "report-faithful"')
                .replace("[training]", '[models.dinov2_s]\ntap = "imagenet_logits"\nheads = ["study_mlp"]\n'
                                       'unfrozen_head = "study_mlp"\n\n[training]')
                .replace("[extract]", '[extract]\ninterpolation = "bilinear"')
                .replace('report_dir = "report-faithful"', 'report_dir = "report-faithful"\nval_unit = "sample"')
                .replace("[report]", "[report]\nstudy_ci = true"))
    for text, name in ((recommended, "rec.toml"), (faithful, "faith.toml")):
        result = run_study(load_study(write(tmp_path / name, text)), progress=False, echo=lambda t: None)
        assert [c.status for c in result.cells] == ["done", "done"], [c.detail for c in result.cells]
    page = (Path("report-faithful") / "tables.md").read_text()
    assert "study mlp 256" in page and "| linear |" not in page  # the faithful report: its own runs only
    assert "study-style: replicate mean [CI of the mean]" in page
    res = CliRunner().invoke(app, ["report", "--format", "md", "--resamples", "200"])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.output.splitlines() if re.match(r"\| demo_shapes \| dinov2_s † \| [YN] \|", ln)]
    heads = sorted(r.split(" | ")[3] for r in rows)
    assert heads == ["linear", "linear", "study mlp 256", "study_mlp"], rows  # both protocols, frozen and not
    configs = [p.read_text() for p in Path("runs").glob("demo_shapes/dinov2_s/*/*/config.json")]
    assert sum('"imagenet_logits"' in c and '"bilinear"' in c for c in configs) == 2


@pytest.mark.slow
def test_two_shards_run_as_two_processes_give_the_unsharded_report(tmp_path):
    """Two shards started by hand (as a SLURM array would), and `run --devices cpu,cpu`, against one plain run."""
    import subprocess
    import sys

    text = SMALL_STUDY.replace('modes = ["frozen", "unfrozen"]', 'modes = ["frozen"]')
    for d in ("whole", "sharded", "devices"):
        (tmp_path / d).mkdir()
        write(tmp_path / d / "s.toml", text)
    cli = [sys.executable, "-m", "probebench", "run"]
    env = {**__import__("os").environ, "PROBEBENCH_OFFLINE": "1"}
    run = lambda d, *a: subprocess.run([*cli, "s.toml", *a], cwd=tmp_path / d, env=env,  # noqa: E731
                                       capture_output=True, text=True)
    assert run("whole").returncode == 0
    assert run("sharded", "--dry-run").returncode == 0  # generates the synthetic data once, before the shards
    plans = [json.loads(run("sharded", "--dry-run", "--json", "--shard", f"{i}/2").stdout) for i in (1, 2)]
    assert [[c["model"] for c in p["cells"]] for p in plans] == [["resnet50"], ["dinov2_s"]]
    shards = [subprocess.Popen([*cli, "s.toml", "--shard", f"{i}/2"], cwd=tmp_path / "sharded", env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for p in shards:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    states = sorted(p.name for p in (tmp_path / "sharded" / "runs" / "_studies").iterdir())
    assert states == ["small.shard-1-of-2.json", "small.shard-2-of-2.json"]
    final = run("sharded")  # after the array: every cell is done, the merged report is written
    assert final.returncode == 0 and "2/2 cells done" in final.stdout
    assert not (tmp_path / "sharded" / "runs" / "_studies" / "small.json").exists()  # nothing new to record
    assert run("devices", "--dry-run").returncode == 0
    both = run("devices", "--devices", "cpu,cpu")  # the same two shards, launched by run itself
    assert both.returncode == 0 and "2/2 cells done" in both.stdout
    assert sorted(p.name for p in (tmp_path / "devices" / "runs" / "_studies").iterdir()) == states
    tables = [re.sub(r"[\d.]+ img/s \([^)]*\)", "(measured rate)",  # a speed is measured, the rest computed
                     (tmp_path / d / "report" / "tables.md").read_text()) for d in ("whole", "sharded", "devices")]
    assert tables[0] == tables[1] == tables[2]
    assert "| demo_shapes | resnet50 † |" in tables[0] and "dinov2_s †" in tables[0]


@pytest.mark.slow
def test_submitit_launcher_runs_the_shards_as_jobs_and_writes_the_whole_report(tmp_path, monkeypatch):
    """submitit's local executor (what runs where there is no SLURM): two jobs, then the report of both."""
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from probebench.cli import app

    text = SMALL_STUDY.replace('modes = ["frozen", "unfrozen"]', 'modes = ["frozen"]')
    study = write(tmp_path / "s.toml", text)
    load_study(study)  # nothing needed; the synthetic data is made by the first plan
    plan(load_study(study))
    monkeypatch.setenv("PROBEBENCH_SUBMITIT_CLUSTER", "local")
    res = CliRunner().invoke(app, ["run", str(study), "--launcher", "submitit", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert "2/2 cells done" in res.output
    logs = list((tmp_path / "runs" / "_submitit").glob("*_result.pkl"))
    assert len(logs) == 2  # one result per job, named by its job id
    assert not any("%" in p.name for p in (tmp_path / "runs").rglob("*"))  # no folder named by a pattern
    states = sorted(p.name for p in (tmp_path / "runs" / "_studies").iterdir())
    assert states == ["small.shard-1-of-2.json", "small.shard-2-of-2.json"]
    md = (tmp_path / "report" / "tables.md").read_text()
    assert "| demo_shapes | resnet50 † |" in md and "dinov2_s †" in md


@pytest.mark.slow
def test_questions_study_runs_curves_cross_validation_calibration_and_the_recommendation(tmp_path):
    """Two models, three label fractions, 5-fold CV on a second dataset, temperature calibration: one study file,
    and report.html opens with the recommendation, then shows the curve and the reliability diagrams."""
    spec = (REPO / "probebench" / "configs" / "datasets" / "demo_shapes.toml").read_text()
    write(tmp_path / "shapes_cv.toml", spec.replace('name = "demo_shapes"', 'name = "shapes_cv"'))
    text = (SMALL_STUDY.replace('modes = ["frozen", "unfrozen"]', 'modes = ["frozen"]')
            .replace('datasets = ["demo_shapes"]', 'datasets = ["demo_shapes", "shapes_cv.toml"]\nseeds = [0, 1]')
            .replace("batch_size = 16", 'batch_size = 16\nlabel_fractions = [0.25, 0.5, 1.0]\n'
                                        'cv = { shapes_cv = 5 }\ncalibrate = "temperature"'))
    study = load_study(write(tmp_path / "q.toml", text))
    cells = plan(study)
    assert {c.evaluation for c in cells} == {"5-fold CV", "test split + label curve (3 budgets x 2 seeds)"}
    result = run_study(study, progress=False, echo=lambda *a: None)
    assert not result.failed
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.index("<h2>Recommendation") < page.index("<h2>Results") < page.index("<h2>Label efficiency")
    for alt in ("critical difference diagram", "label efficiency demo_shapes", "reliability diagram demo_shapes",
                "reliability diagram shapes_cv"):
        assert f'alt="{alt}"' in page
    md = (tmp_path / "report" / "tables.md").read_text()
    curve = [ln for ln in md.splitlines() if "% of labels |" in ln]
    assert len(curve) == 6 and all("(n=2)" in ln for ln in curve)  # 2 models x 3 fractions, spread over 2 seeds
    assert md.count("linear · 5-fold CV |") >= 2 and "### shapes_cv (5-fold CV)" in md
    assert "Friedman's test over 2 datasets × 2 backbones" in md
    runs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/*/*/*/config.json")]
    assert all(r["calibration"] for r in runs)
    assert sum(1 for r in runs if r.get("budget")) == 12 and sum(1 for r in runs if r.get("cv")) == 4
    again = run_study(load_study(tmp_path / "q.toml"), progress=False, echo=lambda *a: None)
    assert {c.status for c in again.cells} == {"done"}


def test_study_label_budget_and_cv_keys_are_checked_before_any_work(tmp_path):
    def study_with(lines):
        return write(tmp_path / "s.toml", SMALL_STUDY.replace("batch_size = 16", "batch_size = 16\n" + lines))

    with pytest.raises(ProbebenchError, match=r"line 19: \[training\] cv names 'demo_shape', which is not in "
                                              r"\[study\] datasets \['demo_shapes'\] \(did you mean 'demo_shapes'"):
        load_study(study_with("cv = { demo_shape = 5 }"))
    with pytest.raises(ProbebenchError, match=r"\[training\] cv must be a number of folds from 2 to 1,000"):
        load_study(study_with("cv = 1"))
    with pytest.raises(ProbebenchError, match=r"\[training\] label_fractions must be a non-empty list of distinct "
                                              r"fractions in \(0, 1\]"):
        load_study(study_with("label_fractions = [0.5, 2]"))
    with pytest.raises(ProbebenchError, match=r"\[training\] calibrate must be one of temperature, not 'platt'"):
        load_study(study_with('calibrate = "platt"'))
    assert load_study(study_with("cv = 5")).cv_for("demo_shapes") == 5
    shipped = load_study(REPO / "configs" / "questions.toml")
    assert [shipped.cv_for(d) for d in shipped.datasets] == [None, 5] and shipped.training["calibrate"]
