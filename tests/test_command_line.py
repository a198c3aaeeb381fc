"""The command line as researchers use it: help and errors that keep their text, progress in logs, JSON out,
names checked with suggestions, idempotent fit, studies with any model, overrides, and an open cache format."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from importlib.metadata import version
from pathlib import Path

import click
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from probebench.cli import app
from conftest import fake_run, write_image

runner = CliRunner()


def invoke(*args, **env):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100", **env})


def flat(text: str) -> str:
    """Help text with its line wrapping undone (click wraps at spaces and after hyphens)."""
    return re.sub(r"\s+", " ", re.sub(r"-\s*\n\s*", "-", text)).strip()


def commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


ALL_COMMANDS = list(commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path,cmd", ALL_COMMANDS, ids=[" ".join(p) for p, _ in ALL_COMMANDS])
def test_help_shows_every_option_text_and_default(path, cmd):
    res = invoke(*path, "--help")
    assert res.exit_code == 0, res.output
    shown = flat(res.output)
    for p in cmd.params:
        if getattr(p, "hidden", False) or not getattr(p, "help", None):
            continue
        assert flat(p.help) in shown, f"{' '.join(path)} {p.opts}: help text lost"
        if isinstance(p.show_default, str):
            assert f"[default: ({flat(p.show_default)})]" in shown, f"{p.opts}: default lost"
        elif p.show_default and p.default not in (None, False) and not p.is_flag:
            assert f"[default: {p.default}]" in shown.replace("[default: ", "[default: "), p.opts


def test_top_level_help_version_and_exit_codes():
    res = invoke("--help")
    assert res.exit_code == 0 and "--version" in res.output and "--install-completion" in res.output
    assert "Exit status: 0 success, 1 a check or cell failed" in flat(res.output)
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"probebench {version('probebench')}"


def test_error_messages_keep_bracketed_text(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('[study]\ndatasets = ["demo_shapes"]\nmodels = ["resnet50"]\n[training]\nepoch = 2\n')
    res = invoke("run", study, "--dry-run")
    assert res.exit_code == 2
    assert "unknown key 'epoch' in [training] (did you mean 'epochs'?)" in flat(res.output)
    assert "s.toml, line 5" in res.output


@pytest.mark.parametrize("args,expected", [
    (["fit", "-m", "resnet5", "-d", "chest_xray"], "unknown model 'resnet5' (did you mean 'resnet50'?)"),
    (["fit", "-m", "ResNet50", "-d", "chest_xray"], "(did you mean 'resnet50'?)"),
    (["fit", "-m", "resnet50", "-d", "chest_xra"], "unknown dataset 'chest_xra' (did you mean 'chest_xray'?)"),
    (["fit", "-m", "resnet50", "-d", "chest_xray", "--head", "lineer"],
     "--head must be one of linear, mlp, study_mlp, logreg, knn, not 'lineer' (did you mean 'linear'?)"),
    (["report", "--metrics", "acuracy"], "unknown metrics ['acuracy'] (did you mean 'accuracy'?)"),
])
def test_names_get_a_suggestion(args, expected, tmp_path):
    (tmp_path / "runs").mkdir()
    fake_run(tmp_path / "runs", [0, 1], np.array([[0.8, 0.2], [0.3, 0.7]]))
    res = invoke(*args, "--runs-dir", tmp_path / "runs") if args[0] == "report" else invoke(*args)
    assert res.exit_code == 2, res.output
    assert expected in flat(res.output)


def test_unknown_dataset_list_hides_the_internal_demo_spec():
    res = invoke("fit", "-m", "resnet50", "-d", "nothing_like_it")
    assert "known datasets: chest_xray" in flat(res.output) and "demo_shapes" not in res.output
    res = invoke("datasets")
    assert res.exit_code == 0 and "demo_shapes" not in res.output and "chest_xray" in res.output


def test_bad_weights_value_lists_the_accepted_forms(tiny):
    spec, root = tiny
    res = invoke("extract", "-m", "resnet50", "-d", spec, "--data-root", root, "--weights", "radnom")
    msg = flat(res.output)
    assert res.exit_code == 2
    assert "takes auto" in msg and "random or random:SEED" in msg and "(did you mean 'random'?)" in msg


# ---------------------------------------------------------------- JSON

def test_models_json_lists_the_registry():
    from probebench.models.registry import REGISTRY

    doc = json.loads(invoke("models", "--json").output)
    assert doc["schema"] == "probebench.models" and doc["version"] == 1
    assert [m["name"] for m in doc["models"]] == list(REGISTRY)
    resnet = next(m for m in doc["models"] if m["name"] == "resnet50")
    assert resnet["taps"] == {"avgpool": 2048} and resnet["preprocessing"]["crop"] == 224
    assert resnet["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet, as torchvision documents it
    one = json.loads(invoke("models", "--model", "dinov2_b", "--json").output)
    assert one["schema"] == "probebench.model" and one["preprocessing"]["interpolation"] == "bicubic"


def test_datasets_json_counts_what_is_on_disk(tiny, tmp_path):
    spec, root = tiny
    (tmp_path / "configs" / "datasets").mkdir(parents=True)  # ./configs/datasets registers specs by name
    (tmp_path / "configs" / "datasets" / "tiny.toml").write_text(spec.read_text())
    res = invoke("datasets", "--data-root", root, "--check", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == "probebench.datasets" and doc["data_roots"] == [str(root)]
    by_name = {d["name"]: d for d in doc["datasets"]}
    assert {"chest_xray", "ham10000", "tiny"} <= set(by_name) and "demo_shapes" not in by_name
    assert not by_name["chest_xray"]["present"] and "splits" not in by_name["chest_xray"]
    tiny_doc = by_name["tiny"]
    on_disk = {c: len(list((root / "tiny" / c).glob("*.png"))) for c in ("a", "b")}
    assert tiny_doc["present"] and tiny_doc["images"] == sum(on_disk.values()) == 40
    assert tiny_doc["groups"] == 20 and tiny_doc["group_kind"] == "patient"
    assert sum(tiny_doc["splits"].values()) == 40
    assert {c: sum(tiny_doc["per_class"][s][c] for s in ("train", "val", "test")) for c in on_disk} == on_disk
    groups = {s: len({p.name.split("_")[0] for p in (root / "tiny").rglob("*.png")
                      if p.relative_to(root / "tiny").as_posix() in ids}) for s, ids in _split_ids(root).items()}
    assert tiny_doc["split_groups"] == groups and sum(groups.values()) == 20  # patients per split, disjoint
    text = invoke("datasets", "--data-root", root, "--check", COLUMNS="80").output  # as in an 80-column log
    assert "\nchest_xray  folder, folder chest_xray: not present" in text  # names whole, one dataset a line
    assert f"train/val/test: 20/8/12 images, {groups['train']}/{groups['val']}/{groups['test']} patients (20 in all)" \
        in text


def _split_ids(root) -> dict:
    from probebench.data.datasets import load_manifest

    m = load_manifest("tiny", root)
    return {s: set(m.sample_ids[m.splits == s].tolist()) for s in ("train", "val", "test")}


def test_report_json_values_equal_sklearn(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p1 = np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1)
    proba = np.stack([1 - p1, p1], axis=1)
    fake_run(tmp_path / "runs", y, proba, dataset="d", model="m")
    res = invoke("report", "--runs-dir", tmp_path / "runs", "--json", "--resamples", "200")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == "probebench.report" and doc["bootstrap"]["n_resamples"] == 200
    (row,) = doc["rows"]
    pred = proba.argmax(1)
    m = row["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"]["value"] == pytest.approx(f1_score(y, pred, average="weighted"))  # weighted, as the study
    assert m["auroc_macro"]["value"] == pytest.approx(roc_auc_score(y, p1))
    assert m["accuracy"]["low"] <= m["accuracy"]["value"] <= m["accuracy"]["high"]
    assert row["mode"] == "frozen" and row["n_test"] == 60


# ---------------------------------------------------------------- progress

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_log_lines_carry_the_true_rate():
    from rich.console import Console

    from probebench.progress import LoggedProgress, RateColumn

    buf, clock = io.StringIO(), Clock()
    bar = LoggedProgress(RateColumn("img"), console=Console(file=buf, width=200), disable=True, unit="img",
                         every=10.0, log=True, get_time=clock)
    with bar:
        task = bar.add_task("extract m × d", total=100, completed=20, info="")  # 20 done before a resume
        for _ in range(8):
            clock.t += 6.0  # 10 images every 6 s
            bar.update(task, advance=10)
    lines = buf.getvalue().splitlines()
    # a line at most every 10 s: at 12, 24, 36 s (each is >= 10 s after the previous), then the final one
    assert [ln.split(":")[1].split(",")[0].strip() for ln in lines[:-1]] == ["40/100 (40.0%)", "60/100 (60.0%)",
                                                                            "80/100 (80.0%)"]
    assert lines[-1] == "extract m × d: 100/100 (100.0%) done in 0:00:48 (1.67 img/s)"  # 80 images / 48 s


def test_progress_of_a_real_extract_reaches_a_log(tiny, tmp_path, monkeypatch):
    spec, root = tiny
    monkeypatch.setenv("PROBEBENCH_PROGRESS_EVERY", "0")
    res = runner.invoke(app, ["extract", "-m", "resnet50", "-d", str(spec), "--data-root", str(root), "--weights",
                              "random", "--resize", "32", "--crop", "28", "--workers", "0",
                              "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    done = [ln for ln in res.output.splitlines() if " done in " in ln]
    assert len(done) == 1 and done[0].startswith("extract resnet50 × tiny: 40/40 (100.0%) done in ")
    assert re.search(r"done in \d+:\d\d:\d\d \(\d[\d,.]* img/s\)", done[0])


# ---------------------------------------------------------------- fit reuses an identical run

def test_fit_reuses_an_identical_run_unless_forced(tiny, tmp_path):
    spec, root = tiny
    common = ["-m", "resnet50", "-d", spec, "--data-root", root, "--weights", "random", "--resize", "32", "--crop",
              "28", "--cache-dir", tmp_path / "cache"]
    assert invoke("extract", *common, "--workers", "0").exit_code == 0
    fit = ["fit", *common, "--runs-dir", tmp_path / "runs", "--epochs", "2"]
    first = invoke(*fit)
    assert first.exit_code == 0, first.output
    again = invoke(*fit)
    assert again.exit_code == 0 and "an identical run exists, reused" in again.output
    folder = tmp_path / "runs" / "tiny" / "resnet50" / "frozen"
    assert len(list(folder.iterdir())) == 1
    path = [re.search(r"^run: (\S+)$", r.output, re.M).group(1) for r in (first, again)]
    assert path[0] == path[1] == str(next(folder.iterdir()))
    assert invoke(*fit, "--seed", "1").exit_code == 0 and len(list(folder.iterdir())) == 2  # another seed
    assert invoke(*fit, "--force").exit_code == 0 and len(list(folder.iterdir())) == 3

    # the cache is an open format: xarray and plain zarr read it, with named dimensions
    xr = pytest.importorskip("xarray")
    import zarr

    from probebench.features.cache import read_features

    (store,) = (tmp_path / "cache").glob("*/*/*.zarr")
    feats = read_features(store)
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["features"].dims == ("sample", "feature") and ds.sizes["sample"] == 40
    assert np.array_equal(ds["features"].values, feats.features)
    assert list(ds["sample_ids"].values) == list(feats.sample_ids)
    assert np.array_equal(ds["labels"].values, feats.labels)
    codes = {"train": 0, "val": 1, "test": 2}
    assert np.array_equal(ds["split"].values, [codes[s] for s in feats.split])
    group = zarr.open_group(str(store), mode="r")
    assert group["features"].metadata.dimension_names == ("sample", "feature")


# ---------------------------------------------------------------- studies

def write_tiny_dataset(root: Path) -> None:
    for c in ("a", "b"):
        for p in range(6):
            for k in range(2):
                write_image(root / "tiny" / c / f"p{p}{c}_{k}.png", seed=p * 2 + (c == "b"))


TINY_SPEC = 'kind = "folder"\nroot = "tiny"\nclasses = ["a", "b"]\ngroup = "patient"\n' \
            '[folder]\ngroup_regex = \'^(?P<group>p\\d+[ab])_\'\n[split]\ntest_fraction = 0.3\n'


def test_only_selections_are_checked(tmp_path):
    write_tiny_dataset(tmp_path / "data")
    (tmp_path / "tiny.toml").write_text(TINY_SPEC)
    study = tmp_path / "s.toml"
    study.write_text('[study]\ndatasets = ["tiny.toml"]\nmodels = ["resnet50", "vgg16"]\nmodes = ["frozen"]\n'
                     'weights = "random"\ndata_root = "data"\n')
    res = invoke("run", study, "--dry-run", "--only", "model=resnet5")
    assert res.exit_code == 2
    assert "--only model=resnet5: no cell of the plan has it (did you mean 'resnet50'?); the plan's models: " \
           "resnet50, vgg16" in flat(res.output)
    res = invoke("run", study, "--dry-run", "--only", "modle=resnet50")
    assert "unknown key 'modle' (did you mean 'mode' or 'model'?)" in flat(res.output)
    res = invoke("run", study, "--dry-run", "--only", "model=resnet50,mode=unfrozen")
    assert res.exit_code == 2 and "no cell of the plan has it" in res.output  # frozen only in this study
    res = invoke("run", study, "--dry-run", "--json", "--only", "model=resnet50|vgg16")
    doc = json.loads(res.output)
    assert doc["schema"] == "probebench.plan" and [c["model"] for c in doc["cells"]] == ["resnet50", "vgg16"]
    assert all(c["status"] == "todo" and c["images"] == 24 for c in doc["cells"])


def test_set_overrides_are_checked_as_if_written_in_the_file(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('[study]\ndatasets = ["chest_xray"]\nmodels = ["resnet50"]\n[training]\nepochs = 2\n')
    res = invoke("run", study, "--dry-run", "--set", "training.lr=-1")
    assert res.exit_code == 2 and "--set training.lr=-1: [training] lr must be a finite number > 0, not -1" \
        in flat(res.output)
    res = invoke("run", study, "--dry-run", "--set", "trainig.lr=1e-3")
    assert "--set trainig.lr=1e-3: unknown section [trainig] (did you mean 'training'?)" in flat(res.output)
    res = invoke("run", study, "--dry-run", "--set", "lr=1")
    assert "expected section.key=value" in flat(res.output)
    from probebench.study import load_study

    s = load_study(study, overrides=["training.lr=3e-4", "study.seeds=[1, 2]", "training.optimizer=adamw"])
    assert s.training == {"epochs": 2, "lr": 3e-4, "optimizer": "adamw"} and s.seeds == [1, 2]


def test_paths_in_a_study_file_are_relative_to_it(tmp_path, monkeypatch):
    from probebench.study import load_study

    (tmp_path / "project" / "studies").mkdir(parents=True)
    study = tmp_path / "project" / "studies" / "s.toml"
    study.write_text('[study]\ndatasets = ["../specs/x.toml", "chest_xray"]\nmodels = ["resnet50", "vgg16"]\n'
                     'data_root = ["../data", "/abs/data"]\ncache_dir = "../cache"\nruns_dir = "s3://bucket/runs"\n'
                     '[weights]\nvgg16 = "../weights/vgg.pth"\nresnet50 = "random:3"\n')
    monkeypatch.chdir(tmp_path)  # somewhere else than the file
    s = load_study(Path("project/studies/s.toml"))
    assert s.data_roots() == [Path("project/data"), Path("/abs/data")]
    assert s.cache_dir == "project/cache" and s.runs_dir == "s3://bucket/runs" and s.report_dir == \
        "project/studies/report"
    assert s.datasets == ["project/specs/x.toml", "chest_xray"]
    assert s.weights_for("vgg16") == "project/weights/vgg.pth" and s.weights_for("resnet50") == "random:3"
    s = load_study(study, data_root=["elsewhere"])  # the command line's own paths: relative to where it runs
    assert s.data_roots() == [Path("elsewhere")] and s.overrides == ["data_root=['elsewhere']"]


def test_a_study_mixing_builtin_timm_and_hugging_face_models_runs(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from probebench.models.dinov2 import meta_to_hf
    from probebench.models.registry import create_model

    project = tmp_path / "project"
    write_tiny_dataset(project / "data")
    (project / "tiny.toml").write_text(TINY_SPEC)
    weights = project / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(timm.create_model("test_convnext", pretrained=False).state_dict(), weights / "convnext.pth")
    vit = create_model("dinov2_s", "random:5", img_size=518).backbone.vit  # a full-size ViT-S/14, random
    meta = {k: v for k, v in vit.state_dict().items()}
    snapshot = weights / "dinov2-small"
    snapshot.mkdir()
    save_file({k: v.contiguous() for k, v in meta_to_hf(meta, 12).items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({
        "model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": 384, "num_hidden_layers": 12,
        "num_attention_heads": 6, "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layerscale_value": 1.0,
        "use_swiglu_ffn": False, "layer_norm_eps": 1e-6}))
    study = project / "study.toml"
    study.write_text("""[study]
name = "mixed"
datasets = ["tiny.toml"]
models = ["resnet50", "timm:test_convnext", "dinov2_s"]
modes = ["frozen"]
weights = "random"
data_root = "data"
cache_dir = "cache"
runs_dir = "runs"
report_dir = "report"

[weights]
"timm:test_convnext" = "weights/convnext.pth"
dinov2_s = "weights/dinov2-small"

[models."timm:test_convnext"]
resize = 36
crop = 32

[training]
epochs = 3

[extract]
resize = 32
crop = 28
workers = 0

[report]
resamples = 100
""")
    plan = invoke("run", study, "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    assert [c["model"] for c in json.loads(plan.output)["cells"]] == ["resnet50", "timm:test_convnext", "dinov2_s"]
    res = invoke("run", study, "--set", "training.epochs=2")
    assert res.exit_code == 0, res.output
    assert "3/3 cells done" in res.output
    configs = {json.loads(p.read_text())["model"]: json.loads(p.read_text())
               for p in (project / "runs").glob("tiny/*/frozen/*/config.json")}
    assert set(configs) == {"resnet50", "timm:test_convnext", "dinov2_s"}
    sha = hashlib.sha256((weights / "convnext.pth").read_bytes()).hexdigest()
    assert configs["timm:test_convnext"]["weights"]["sha256"] == sha
    digest = {n: hashlib.sha256((snapshot / n).read_bytes()).hexdigest() for n in ("config.json", "model.safetensors")}
    folder_sha = hashlib.sha256(f"config.json:{digest['config.json']}\nmodel.safetensors:"  # the folder's rule
                                f"{digest['model.safetensors']}".encode()).hexdigest()
    assert configs["dinov2_s"]["weights"]["sha256"] == folder_sha
    assert configs["resnet50"]["weights"]["source"] == "random"  # [study] weights, for the models without an entry
    assert configs["timm:test_convnext"]["preprocessing"]["crop"] == 32  # the per-model override
    assert configs["dinov2_s"]["preprocessing"]["crop"] == 28
    state = json.loads((project / "runs" / "_studies" / "mixed.json").read_text())
    assert all(cell["overrides"] == ["training.epochs=2"] for cell in state.values())
    assert "overridden on the command line: training.epochs=2" in (project / "report" / "report.html").read_text()


# ---------------------------------------------------------------- tracking

def test_tensorboard_tracking_logs_curves_metrics_and_config(tiny, tmp_path):
    from sklearn.metrics import accuracy_score
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec, root = tiny
    common = ["-m", "resnet50", "-d", spec, "--data-root", root, "--weights", "random", "--resize", "32", "--crop",
              "28", "--cache-dir", tmp_path / "cache"]
    assert invoke("extract", *common, "--workers", "0").exit_code == 0
    res = invoke("fit", *common, "--runs-dir", tmp_path / "runs", "--epochs", "3", "--seeds", "0,1",
                 "--track", "tensorboard")
    assert res.exit_code == 0, res.output
    assert f"logged to {tmp_path / 'runs' / '_tensorboard'} (tensorboard --logdir" in flat(res.output)
    runs = sorted((tmp_path / "runs" / "tiny" / "resnet50" / "frozen").iterdir())
    assert len(runs) == 2  # both seeds logged
    for run in runs:
        logs = tmp_path / "runs" / "_tensorboard" / "tiny" / "resnet50" / "frozen" / run.name
        acc = EventAccumulator(str(logs)).Reload()  # TensorBoard's own reader
        with (run / "history.csv").open() as fh:
            history = list(csv.DictReader(fh))
        curve = acc.Scalars("epoch/val_accuracy")
        assert [e.step for e in curve] == [int(r["epoch"]) for r in history] == [1, 2, 3]
        assert [e.value for e in curve] == pytest.approx([float(r["val_accuracy"]) for r in history])
        with (run / "predictions.csv").open() as fh:
            pred = list(csv.DictReader(fh))
        (test_acc,) = acc.Scalars("test/accuracy")
        assert test_acc.value == pytest.approx(accuracy_score([r["true"] for r in pred], [r["pred"] for r in pred]))
        (low,), (high,) = acc.Scalars("test/accuracy_low"), acc.Scalars("test/accuracy_high")
        assert low.value <= test_acc.value <= high.value
        assert "config" in acc.Tags()["tensors"] or "config/text_summary" in acc.Tags()["tensors"]
    from probebench.report.tables import collect_rows

    assert len(collect_rows(tmp_path / "runs", latest_only=False)) == 2  # the tracker's folder is not a run


def test_tracking_options_are_checked_before_any_work(monkeypatch, tmp_path):
    import sys

    res = invoke("fit", "-m", "resnet50", "-d", "chest_xray", "--track", "tensorbord")
    assert res.exit_code == 2 and "unknown tracker (did you mean 'tensorboard'?)" in flat(res.output)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    res = invoke("run", tmp_path / "nothing.toml", "--track", "mlflow")
    assert res.exit_code == 2
    assert 'needs the mlflow package, which is not installed: pip install "probebench[mlflow]"' in flat(res.output)


def test_mlflow_tracking_calls(monkeypatch, tmp_path):
    """The calls made to MLflow's fluent API (a recording stand-in: mlflow itself is an optional extra)."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("mlflow")

    class Active:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append(("end",))

    for name in ("set_tracking_uri", "set_experiment", "log_params", "log_metrics", "log_artifact"):
        setattr(fake, name, lambda *a, _n=name, **k: calls.append((_n, a, k)))
    fake.start_run = lambda **k: (calls.append(("start_run", k)), Active())[1]
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7],
                      [0.1, 0.9]])
    run = fake_run(tmp_path / "runs", y, proba, dataset="d", model="m")
    from probebench.report.tracking import track_run

    track_run(run, "mlflow")
    names = [c[0] for c in calls]
    assert names == ["set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "log_artifact",
                     "end"]
    assert calls[0][1][0] == (tmp_path / "runs" / "_mlruns").resolve().as_uri()
    assert calls[2][1] == {"run_name": run.name}
    final = calls[4][1][0]
    assert final["test_accuracy"] == pytest.approx(6 / 8)  # 2 of 8 predictions wrong, counted by hand
    assert final["test_accuracy_low"] <= 0.75 <= final["test_accuracy_high"]
    assert calls[5][1][0] == str(run / "config.json")


def test_any_error_message_is_printed_verbatim(monkeypatch, tmp_path):
    """What rich would take for markup ([bold], [/], [study]) reaches the user unchanged."""
    import probebench.study as study_module
    from probebench.errors import ProbebenchError

    text = "x.toml, line 3: in [study] the [bold]name[/] [red] stays [/red] as written\\n[default: 1]"

    def refuse(*a, **k):
        raise ProbebenchError(text)

    monkeypatch.setattr(study_module, "load_study", refuse)
    res = invoke("run", tmp_path / "x.toml")
    assert res.exit_code == 2 and res.output == f"error: {text}\n"


def test_models_and_the_plan_stay_readable_at_80_columns(tmp_path):
    """Plain lines, names whole: what a log or an 80-column terminal shows of `models` and `run --dry-run`."""
    from probebench.models.registry import REGISTRY

    text = invoke("models", COLUMNS="80").output
    for name, c in REGISTRY.items():
        assert f"\n{name}  {c.family.name}; taps " in text and c.weight_file in text
        if c.card:  # a named backbone: where it is, its licence, whether gated, the card's feature
            assert f"\n  {c.card.source}\n  licence {c.card.licence}" in text and c.card.feature in text
    study = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"
    text = invoke("run", study, "--dry-run", COLUMNS="80").output
    assert "  todo    demo_shapes × resnet50 · frozen · linear: 72 img + head" in text
    assert "  todo    demo_shapes × dinov2_s · unfrozen · linear: 72 img-passes (2 ep), end to end" in text
