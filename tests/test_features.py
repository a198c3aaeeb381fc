"""FeatureSpec and finding a store: with the data and weights (by key), and from the cache alone."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torchvision

from probebench.errors import ProbebenchError
from probebench.features.extract import extract
from probebench.features.spec import FeatureSpec, locate_store
from probebench.train.fit import fit
from probebench.runs import read_run

SMALL = dict(resize=40, crop=32)
RUN = dict(batch_size=4, workers=0, progress=False)


def test_a_spec_is_validated_once_and_gives_back_its_flags():
    spec = FeatureSpec("dinov2_s", weights="random:3", crop=28, mean=[0.5], interpolation="bilinear",
                       channels_last=False, precision="bf16")
    assert spec.mean == (0.5,) and hash(spec) == hash(spec.replace())  # a value: hashable, equal to its copy
    assert spec.flags() == ("--weights random:3 --crop 28 --mean 0.5 --interpolation bilinear --precision bf16 "
                            "--no-channels-last")
    with pytest.raises(ProbebenchError, match="--precision"):
        FeatureSpec("resnet50", precision="fp8")
    with pytest.raises(ProbebenchError, match="unknown model"):
        FeatureSpec("resnet5")
    assert FeatureSpec.of("resnet50", crop=32) == FeatureSpec("resnet50", crop=32)
    assert FeatureSpec.of(spec, crop=56).crop == 56 and FeatureSpec.of(spec) is spec


def test_fit_export_and_report_need_only_the_cache(tiny, tmp_path, capsys):
    """Extract where the images and the weights are; then move both away: fit, export and report still work, on
    the same store (same probabilities as a fit made with the data present)."""
    from typer.testing import CliRunner

    from probebench.cli import app

    spec, root = tiny
    torch.manual_seed(0)
    weights = tmp_path / "resnet50-weights.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    features = FeatureSpec("resnet50", weights=str(weights), **SMALL)
    store = extract(features, str(spec), data_root=root, cache_dir=tmp_path / "c", **RUN)
    here = read_run(fit(features, str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r1",
                        epochs=3, progress=False))

    shutil.move(root, tmp_path / "elsewhere")
    weights.unlink()
    capsys.readouterr()
    assert locate_store(features, str(spec), data_root=root, cache_dir=tmp_path / "c") == store
    assert "using the feature cache" in capsys.readouterr().err
    away = read_run(fit(features, str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r2",
                        epochs=3, progress=False))
    assert np.array_equal(here.proba, away.proba) and list(here.sample_ids) == list(away.sample_ids)
    res = CliRunner().invoke(app, ["export", "--model", "resnet50", "--dataset", str(spec), "--data-root", str(root),
                                   "--cache-dir", str(tmp_path / "c"), "--weights", str(weights), "--resize", "40",
                                   "--crop", "32", "--out", str(tmp_path / "f.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "f.npz")["features"].shape == (40, 2048)
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(tmp_path / "r2"), "--format", "csv"])
    assert res.exit_code == 0 and "resnet50" in res.output


def test_several_matching_stores_are_listed_with_the_option_that_tells_them_apart(tiny, tmp_path):
    spec, root = tiny
    for crop in (32, 24):
        extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random", resize=40,
                crop=crop, **RUN)
    shutil.move(root, tmp_path / "elsewhere")
    with pytest.raises(ProbebenchError, match=r"2 feature caches of resnet50 × tiny match") as err:
        locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random")
    text = str(err.value)
    assert ": crop=32\n" in text and ": crop=24\n" in text and text.endswith("choose one with --crop")
    one = locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random", crop=24)
    assert one.suffix == ".zarr"
    with pytest.raises(ProbebenchError, match=r"not found(.|\n)*no complete feature cache .* matches"):
        locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random:1", crop=24)


def test_with_the_data_here_a_changed_dataset_is_never_served_from_the_old_store(tiny, tmp_path):
    """The record-based search is only for data that is not here: present data is always keyed afresh."""
    from conftest import write_image

    spec, root = tiny
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random", **SMALL, **RUN)
    write_image(root / "tiny" / "a" / "p000_0.png", seed=12345)
    with pytest.raises(ProbebenchError, match="does not exist; run first"):
        locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random", **SMALL)


def test_after_extract_fit_and_export_find_the_store_without_repeating_the_weights(tiny, tmp_path, capsys):
    """The data is here, no weights are: the one complete store of exactly this data and model is used, and the note
    says it was made with random weights; two such stores are listed with --weights; a changed image means none."""
    from typer.testing import CliRunner

    from conftest import write_image
    from probebench.cli import app

    spec, root = tiny
    common = ["--dataset", str(spec), "--data-root", str(root), "--cache-dir", str(tmp_path / "c"), "--resize", "40",
              "--crop", "32"]
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "--model", "resnet50", "--weights", "random", "--workers", "0", *common])
    assert res.exit_code == 0, res.output
    capsys.readouterr()
    store = locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", resize=40, crop=32)
    note = capsys.readouterr().err
    assert store.suffix == ".zarr" and "random weights (random:0, untrained)" in note and "crop=32" in note
    res = runner.invoke(app, ["fit", "--model", "resnet50", "--runs-dir", str(tmp_path / "r"), "--epochs", "2",
                              *common])
    assert res.exit_code == 0, res.output
    assert read_run(next((tmp_path / "r").rglob("config.json")).parent).record.random_weights
    res = runner.invoke(app, ["export", "--model", "resnet50", *common, "--out", str(tmp_path / "f.npz")])
    assert res.exit_code == 0 and np.load(tmp_path / "f.npz")["features"].shape == (40, 2048), res.output
    extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", weights="random:1", resize=40, crop=32,
            **RUN)
    with pytest.raises(ProbebenchError, match=r"2 feature caches of resnet50 × tiny match(.|\n)*choose one with "
                                              r"--weights"):
        locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", resize=40, crop=32)
    write_image(root / "tiny" / "a" / "p000_0.png", seed=12345)  # the data changed: neither store is of it
    with pytest.raises(ProbebenchError, match=r"no complete feature cache .* matches"):
        locate_store("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", resize=40, crop=32)
