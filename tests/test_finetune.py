"""The unfrozen path: replaced layers, frozen equivalence with extract + fit, resume, report compatibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from probebench.errors import ProbebenchError
from probebench.features.extract import extract
from probebench.train.finetune import Classifier, finetune
from probebench.train.fit import fit
from probebench.models.registry import create_model
from probebench.report.tables import ReportOptions, collect_rows, comparisons, render
from probebench.runs import read_run

SMALL = dict(weights="random", resize=40, crop=32, workers=0, progress=False)


@pytest.mark.parametrize("name,layer,dim", [("vgg16", "classifier.6", 4096), ("resnet50", "fc", 2048),
                                            ("densenet121", "classifier", 1024), ("dinov2_s", "head", 384)])
def test_new_layer_replaces_exactly_the_studys(name, layer, dim):
    crop = 28 if name.startswith("dinov2") else 32
    net = Classifier(create_model(name, "random", img_size=crop), 3, seed=0, freeze_backbone=False)
    names = dict(net.named_parameters())
    if name.startswith("dinov2"):
        assert names["head.weight"].shape == (3, dim) and names["head.bias"].shape == (3,)
        assert not any(k.startswith("extractor.backbone.head") for k in names)
    else:
        reference = getattr(torchvision.models, name)(weights=None)
        ours = {k.removeprefix("extractor.backbone."): v.shape for k, v in names.items()}
        theirs = {k: v.shape for k, v in reference.named_parameters()}
        assert set(ours) == set(theirs)  # same names: only the layer's shape changes
        changed = {k for k in ours if ours[k] != theirs[k]}
        assert changed == {f"{layer}.weight", f"{layer}.bias"} and ours[f"{layer}.weight"] == (3, dim)
    assert net(torch.randn(2, 3, crop, crop)).shape == (2, 3)
    frozen = Classifier(create_model(name, "random", img_size=crop), 3, seed=0, freeze_backbone=True)
    trainable = [k for k, p in frozen.named_parameters() if p.requires_grad]
    assert trainable == [k for k in names if k.endswith((f"{layer}.weight", f"{layer}.bias"))]


@pytest.mark.slow
@pytest.mark.parametrize("model,crop", [("resnet50", 32), ("dinov2_s", 28)])
def test_frozen_end_to_end_equals_extract_plus_fit(tiny, tmp_path, model, crop):
    spec, root = tiny
    opts = {**SMALL, "crop": crop}
    common = dict(epochs=4, lr=1e-2, batch_size=8, seed=3)
    extract(model, str(spec), data_root=root, cache_dir=tmp_path / "c", batch_size=8, **opts)
    fast = read_run(fit(model, str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "a",
                        progress=False, **{k: v for k, v in opts.items() if k not in ("workers", "progress")},
                        **common))
    slow = read_run(finetune(model, str(spec), data_root=root, runs_dir=tmp_path / "b", freeze_backbone=True,
                             **opts, **common))
    assert slow.config["mode"] == "frozen"
    assert np.array_equal(fast.sample_ids, slow.sample_ids)
    assert np.abs(fast.proba - slow.proba).max() < 1e-4
    assert fast.metrics["best_epoch"] == slow.metrics["best_epoch"]
    assert 0.01 < np.abs(fast.proba - 0.5).max()  # the head did learn something


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tiny, tmp_path):
    spec, root = tiny
    common = dict(data_root=root, epochs=3, lr=1e-3, batch_size=8, **SMALL)
    full = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "a", **common))

    def stop_after_two(state, row):
        if state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune("resnet50", str(spec), runs_dir=tmp_path / "b", on_epoch=stop_after_two, **common)
    work = tmp_path / "b" / "tiny" / "resnet50" / "unfrozen" / "_inprogress"
    assert (work / "last.pt").is_file() and (work / "best.pt").is_file()
    epochs_seen = []
    resumed = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "b", resume=True,
                                on_epoch=lambda s, r: epochs_seen.append(r["epoch"]), **common))
    assert epochs_seen == [3]  # only the missing epoch ran
    assert np.array_equal(resumed.proba, full.proba)
    assert [r["val_loss"] for r in _history(resumed)] == [r["val_loss"] for r in _history(full)]
    assert not work.exists()


def _history(run):
    import csv

    return list(csv.DictReader((run.path / "history.csv").open()))


def test_resume_with_other_settings_lists_differences(tiny, tmp_path):
    spec, root = tiny

    def stop(state, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune("resnet50", str(spec), data_root=root, runs_dir=tmp_path, epochs=2, on_epoch=stop, **SMALL)
    with pytest.raises(ProbebenchError, match=r"other settings:\n  lr: 0.0001 in the checkpoint, 0.01 now"):
        finetune("resnet50", str(spec), data_root=root, runs_dir=tmp_path, epochs=2, lr=1e-2, resume=True, **SMALL)
    with pytest.raises(ProbebenchError, match="nothing to resume"):
        finetune("resnet50", str(spec), data_root=root, runs_dir=tmp_path / "empty", epochs=2, resume=True, **SMALL)


@pytest.mark.slow
def test_complete_run_is_not_redone_without_force_and_report_shows_both_modes(tiny, tmp_path):
    spec, root = tiny
    kw = dict(data_root=root, runs_dir=tmp_path / "runs", epochs=2, batch_size=8, **SMALL)
    finetune("dinov2_s", str(spec), **{**kw, "crop": 28})
    with pytest.raises(ProbebenchError, match="already complete.*--force"):
        finetune("dinov2_s", str(spec), **{**kw, "crop": 28})
    finetune("dinov2_s", str(spec), force=True, **{**kw, "crop": 28})
    extract("dinov2_s", str(spec), data_root=root, cache_dir=tmp_path / "c", **{**SMALL, "crop": 28})
    fit("dinov2_s", str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "runs", epochs=2,
        weights="random", resize=40, crop=28, progress=False)
    rows = collect_rows(tmp_path / "runs")
    assert [(r.model, r.freeze) for r in rows] == [("dinov2_s", "Y"), ("dinov2_s", "N")]
    md = render(rows, "md", ReportOptions(), comparisons(rows, ReportOptions()))
    assert "| tiny | dinov2_s † | N | linear |" in md and "dinov2_s †: frozen (linear) − unfrozen (linear)" in md


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batches(tiny, tmp_path):
    spec, root = tiny
    kw = dict(data_root=root, epochs=2, lr=1e-3, batch_size=8, **{**SMALL, "crop": 28})
    one = read_run(finetune("dinov2_s", str(spec), runs_dir=tmp_path / "a", **kw))
    two = read_run(finetune("dinov2_s", str(spec), runs_dir=tmp_path / "b", accumulate=2, grad_checkpointing=True,
                            **kw))
    assert np.abs(one.proba - two.proba).max() < 1e-4


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo_match_one_process(tiny, tmp_path):
    """DDP: each rank trains on a shard of every global batch; the result equals a single process."""
    import os
    import socket
    import subprocess
    import sys

    spec, root = tiny
    args = ["finetune", "--model", "dinov2_s", "--dataset", str(spec), "--data-root", str(root), "--weights",
            "random", "--resize", "40", "--crop", "28", "--epochs", "2", "--batch-size", "7", "--lr", "1e-3",
            "--workers", "0"]
    single = read_run(finetune("dinov2_s", str(spec), data_root=root, runs_dir=tmp_path / "one", epochs=2,
                               batch_size=7, lr=1e-3, **{**SMALL, "crop": 28}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "probebench", *args,
                          "--runs-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "two" / "tiny" / "dinov2_s" / "unfrozen").iterdir())
    assert len(runs) == 1  # only rank 0 wrote
    double = read_run(runs[0])
    assert double.config["world_size"] == 2
    assert np.abs(double.proba - single.proba).max() < 1e-5


def test_study_bn_epoch1_trains_batchnorm_statistics_in_epoch_one_only():
    """The study's loop: model.train() once, model.eval() at the first validation, never train() again."""
    net = Classifier(create_model("resnet50", "random", img_size=32), 2, seed=0, freeze_backbone=True,
                     quirks=("bn_epoch1",))
    bn = net.extractor.backbone.bn1
    before = bn.running_mean.clone()
    weights = net.extractor.backbone.conv1.weight.clone()
    net.train()
    assert net.extractor.training and bn.training  # epoch 1: train mode despite the frozen backbone
    net(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(bn.running_mean, before)  # statistics re-estimated on the training images
    assert torch.equal(net.extractor.backbone.conv1.weight, weights)  # weights still frozen
    net.eval()
    net.train()  # epoch 2
    assert not net.extractor.training and not bn.training
    plain = Classifier(create_model("resnet50", "random", img_size=32), 2, seed=0, freeze_backbone=True)
    plain.train()
    assert not plain.extractor.training  # probebench's frozen path: eval mode always


def test_the_studys_fine_tuning_trains_in_eval_mode_after_the_first_validation():
    """Unfrozen with the study's loop: all weights train, but from epoch 2 in eval mode (BatchNorm fixed at its
    epoch-1 statistics, dropout off), as its train_model never calls model.train() again."""
    net = Classifier(create_model("resnet50", "random", img_size=32), 2, seed=0, freeze_backbone=False,
                     quirks=("bn_epoch1",))
    bn = net.extractor.backbone.bn1
    net.train()
    assert bn.training  # epoch 1
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    net(x)
    net.eval()  # the first validation
    net.train()  # epoch 2: the loop asks for train mode; the study's code never did
    assert not any(m.training for m in net.modules())
    stats = bn.running_mean.clone()
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    net(x).sum().backward()
    opt.step()
    assert torch.equal(bn.running_mean, stats)  # BatchNorm no longer follows the training images
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.extractor.backbone.conv1.parameters())


def test_study_vgg_features_only_trains_fc6_fc7():
    net = Classifier(create_model("vgg16", "random", img_size=32), 2, seed=0, freeze_backbone=True,
                     quirks=("vgg_features_only",))
    trainable = {n.removeprefix("extractor.backbone.") for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"classifier.{i}.{w}" for i in (0, 3, 6) for w in ("weight", "bias")}
    assert {id(p) for p in net.trainable_parameters()} == {id(p) for p in net.parameters() if p.requires_grad}
    with pytest.raises(ProbebenchError, match="frozen VGG16 only"):
        Classifier(create_model("resnet50", "random", img_size=32), 2, seed=0, freeze_backbone=True,
                   quirks=("vgg_features_only",))


@pytest.mark.slow
def test_study_quirk_runs_end_to_end_and_the_cache_path_refuses_it(tiny, tmp_path):
    from typer.testing import CliRunner

    from probebench.cli import app

    spec, root = tiny
    common = dict(data_root=root, epochs=2, lr=1e-3, batch_size=8, freeze_backbone=True, **SMALL)
    plain = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "a", **common))
    quirky = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "b", study_quirks=("bn_epoch1",),
                               **common))
    assert quirky.config["study_quirks"] == ["bn_epoch1"] and quirky.config["mode"] == "frozen"
    assert not np.allclose(plain.proba, quirky.proba)  # re-estimated BatchNorm statistics change the features
    res = CliRunner().invoke(app, ["fit", "--model", "resnet50", "--dataset", str(spec), "--data-root", str(root),
                                   "--weights", "random", "--study-bn-epoch1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "no cache can hold it" in text and "finetune --freeze-backbone" in text
    with pytest.raises(ProbebenchError, match="study's frozen VGG16: add --freeze-backbone"):
        finetune("vgg16", str(spec), runs_dir=tmp_path / "c", study_quirks=("vgg_features_only",),
                 **{**common, "freeze_backbone": False})
    unfrozen = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "d", study_quirks=("bn_epoch1",),
                                 **{**common, "freeze_backbone": False}))
    assert unfrozen.config["study_quirks"] == ["bn_epoch1"] and unfrozen.config["mode"] == "unfrozen"


def test_fit_and_finetune_write_the_same_run_record(tiny, tmp_path):
    """One record for both paths: every RunRecord field is in both config.json files with the same type, and a
    run written before the record was shared (``extract_device``) still reads."""
    from dataclasses import fields

    from probebench.runs import RunRecord

    spec, root = tiny
    opts = {**SMALL, "crop": 28}
    extract("dinov2_s", str(spec), data_root=root, cache_dir=tmp_path / "c", batch_size=8, **opts)
    cache_opts = {k: v for k, v in opts.items() if k not in ("workers", "progress")}
    a = read_run(fit("dinov2_s", str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r",
                     epochs=1, progress=False, **cache_opts))
    b = read_run(finetune("dinov2_s", str(spec), data_root=root, runs_dir=tmp_path / "r", epochs=1, **opts))
    names = [f.name for f in fields(RunRecord) if f.name != "details"]
    for name in names:
        assert name in a.config and name in b.config, name
        assert type(a.config[name]) is type(b.config[name]) or None in (a.config[name], b.config[name]), name
    assert (a.record.path, b.record.path) == ("cache", "end-to-end") and a.record.device == b.record.device == "cpu"
    assert a.record.details["cache_key"] and b.record.details["lr"] == 1e-4
    old = {k: v for k, v in a.config.items() if k != "device"} | {"extract_device": "NVIDIA H200"}
    assert RunRecord.from_config(old).device == "NVIDIA H200"


@pytest.mark.slow
def test_finetune_calibrate_applies_the_validation_temperature_to_the_same_training(tiny, tmp_path):
    spec, root = tiny
    common = dict(data_root=root, epochs=2, lr=1e-2, batch_size=8, seed=1, freeze_backbone=True, **SMALL)
    raw = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "a", **common))
    cal = read_run(finetune("resnet50", str(spec), runs_dir=tmp_path / "b", calibrate="temperature", **common))
    t = cal.config["calibration"]["temperature"]
    logits = np.log(raw.proba) / t
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(cal.proba, expected / expected.sum(1, keepdims=True), atol=2e-6)
    assert cal.config["calibrate"] == "temperature" and "calibrate" not in raw.config
