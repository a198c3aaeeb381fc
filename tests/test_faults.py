"""The fault suite: bad inputs, damaged files and hostile names, each through the command line as a user meets it.

Every case asserts the exit status, that the message names the culprit, that no traceback is printed, and
that nothing previously good (the feature cache, the runs) was changed. A small world (a 2-class dataset,
its extracted cache, one fitted run) is built once and copied for each case.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import TINY_SPEC, write_image
from typer.testing import CliRunner

from probebench.cli import app
from probebench.runs import write_checksums

MODEL = ["--model", "resnet50", "--weights", "random", "--resize", "40", "--crop", "32"]
DATA = ["--dataset", "tiny.toml", "--data-root", "data"]
EXTRACT = ["extract", *MODEL, *DATA, "--cache-dir", "cache", "--workers", "0", "--batch-size", "4", "--chunk-size",
           "8"]
FIT = ["fit", *MODEL, *DATA, "--cache-dir", "cache", "--runs-dir", "runs", "--epochs", "2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """data/tiny (20 patients), tiny.toml, cache/ with its complete store, runs/ with one linear-head run."""
    base = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBEBENCH_OFFLINE", "1")
        mp.setenv("TORCH_HOME", str(base / "torch_home"))
        mp.setenv("PROBEBENCH_HASH_CACHE", str(base / "digests.sqlite"))
        mp.chdir(base)
        i = 0
        for c, name in enumerate(["a", "b"]):
            for p in range(10):
                for k in range(2):
                    write_image(base / "data" / "tiny" / name / f"p{c}{p:02d}_{k}.png", seed=2 * i + c)
                    i += 1
        (base / "tiny.toml").write_text(TINY_SPEC)
        for args in (EXTRACT, FIT):
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def w(world, tmp_path, monkeypatch):
    """A private copy of the world, as the current directory."""
    copy = tmp_path / "w"
    shutil.copytree(world, copy, symlinks=True, ignore=shutil.ignore_patterns("digests.sqlite", "torch_home"))
    monkeypatch.chdir(copy)
    return copy


def snapshot(base: Path) -> dict[str, str]:
    """sha256 of every file under cache/ and runs/: what must survive a failed command unchanged."""
    out = {}
    for top in ("cache", "runs"):
        for p in sorted((base / top).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(base))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    text = " ".join(res.output.split())
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, text


def refused(base: Path, args, pattern: str, code: int = 2) -> str:
    """Run a command that must fail: status ``code``, ``pattern`` in the message, cache and runs unchanged."""
    before = snapshot(base)
    status, text = cli(*args)
    assert status == code, text
    assert re.search(pattern, text), text
    assert snapshot(base) == before
    return text


def spec_variant(base: Path, name: str, old: str, new: str) -> str:
    text = TINY_SPEC.replace(old, new)
    assert text != TINY_SPEC or old == new
    (base / name).write_text(text)
    return name


def extract_with(spec: str) -> list[str]:
    return ["extract", *MODEL, "--dataset", spec, "--data-root", "data", "--cache-dir", "cache", "--workers", "0"]


# ---------------------------------------------------------------- dataset specs

SPEC_CASES = {  # case -> (old text, new text, message pattern)
    "regex_invalid": ("'^(?P<group>p\\d+)_'", "'^(?P<group>p\\d+_'", r"line 8: group_regex .* is not a valid regular"),
    "regex_without_named_group": ("'^(?P<group>p\\d+)_'", "'^(p\\d+)_'", r"line 8: .*has no named group \(\?P<group>"),
    "val_fraction_text": ("val_fraction = 0.25", 'val_fraction = "lots"',
                          r"line 11: \[split\] val_fraction must be a number between 0 and 1, not 'lots'"),
    "val_fraction_one": ("val_fraction = 0.25", "val_fraction = 1.0", r"val_fraction must be a number between 0"),
    "split_dirs_list": ("[folder]\n", '[folder]\nsplit_dirs = ["train", "test"]\n',
                        r"line 8: \[folder\] split_dirs must be a table of split -> list of folders"),
    "name_dotdot": ('name = "tiny"', 'name = ".."', r"dataset name '\.\.' cannot be a folder name"),
    "name_with_slash": ('name = "tiny"', 'name = "a/b"', r"dataset name 'a/b' cannot be a folder name"),
    "root_escapes": ('root = "tiny"', 'root = "../data/tiny"', r"line 4: root must be a folder inside the data root"),
    "root_absolute": ('root = "tiny"', 'root = "/etc"', r"root must be a folder inside the data root"),
    "classes_a_string": ('classes = ["a", "b"]', 'classes = "ab"', r"line 5: classes must be a list of at least two"),
    "classes_repeated": ('classes = ["a", "b"]', 'classes = ["a", "a"]', r"classes must be a list of at least two "
                                                                          r"distinct"),
    "unknown_key": ('group = "patient"', 'groop = "patient"', r"line 6: unknown keys \['groop'\]"),
    "table_not_a_table": ('name = "tiny"', 'hdf5 = "data.h5"\nname = "tiny"', r"line 2: hdf5 must be a \[hdf5\] table"),
    "test_count_zero": ("test_fraction = 0.3", "test_count = 0", r"test_count must be an integer >= 1, not 0"),
    "kind_unknown": ('kind = "folder"', 'kind = "zip"', r"kind 'zip' is not one of: folder, csv, hdf5"),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_spec(w, case):
    old, new, pattern = SPEC_CASES[case]
    refused(w, extract_with(spec_variant(w, f"{case}.toml", old, new)), pattern)


def test_binary_spec_file(w):
    (w / "bin.toml").write_bytes(bytes(range(256)) * 4)
    refused(w, extract_with("bin.toml"), r"bin.toml: not a TOML text file")


def test_malformed_toml_names_file(w):
    (w / "broken.toml").write_text("name = \n")
    refused(w, extract_with("broken.toml"), r"broken.toml: invalid TOML")


def csv_dataset(base: Path, table: str, extra: str = "", bom: bool = False) -> str:
    """A csv-kind dataset over data/tiny's images with the given table text."""
    (base / "data" / "tiny" / "t.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + table.encode())
    (base / "csvspec.toml").write_text('name = "tinycsv"\nkind = "csv"\nroot = "tiny"\nclasses = ["a", "b"]\n'
                                       f'{extra}[csv]\nfile = "t.csv"\n[split]\ntest_fraction = 0.3\n'
                                       'val_fraction = 0.25\n')
    return "csvspec.toml"


def table_rows(base: Path, paths=None) -> str:
    files = sorted((base / "data" / "tiny").rglob("*.png"))
    rows = [(f.relative_to(base / "data" / "tiny").as_posix(), f.parent.name, f.stem.split("_")[0]) for f in files]
    if paths:
        rows[0] = (paths, rows[0][1], rows[0][2])
    return "path,label,patient\n" + "".join(f"{p},{label},{g}\n" for p, label, g in rows)


def test_csv_with_byte_order_mark_is_read(w):
    spec = csv_dataset(w, table_rows(w), bom=True)
    status, text = cli("datasets", "--check", "--data-root", "data")
    assert status == 0, text
    os.makedirs(w / "configs" / "datasets")
    shutil.copy(w / spec, w / "configs" / "datasets" / "tinycsv.toml")
    status, text = cli("datasets", "--check", "--data-root", "data")
    assert status == 0 and re.search(r"tinycsv csv, folder tiny: present; classes a, b found in data "
                                     r"train/val/test: 20/8/12 images", text), text


def test_csv_missing_column(w):
    spec = csv_dataset(w, table_rows(w).replace("label", "diagnosis", 1))
    refused(w, extract_with(spec), r"t.csv: missing column\(s\) 'label' \(label_column\) named by spec .*"
                                   r"the file has columns \['path', 'diagnosis', 'patient'\]")


def test_csv_path_climbing_out_of_the_dataset(w):
    secret = write_image(w / "outside.png", seed=1)
    spec = csv_dataset(w, table_rows(w, paths="../../outside.png"))
    refused(w, extract_with(spec), rf"1 image file\(s\) resolve outside the dataset folder .*-> {secret}.*"
                                   r"allow_outside_root = true")


def test_csv_absolute_path(w):
    outside = write_image(w / "elsewhere" / "x.png", seed=1)
    spec = csv_dataset(w, table_rows(w, paths=str(outside)))
    refused(w, extract_with(spec), r"resolve outside the dataset folder")


def test_symlink_to_a_file_outside(w):
    target = write_image(w / "private" / "scan.png", seed=3)
    link = w / "data" / "tiny" / "a" / "p000_0.png"
    link.unlink()
    link.symlink_to(target)
    refused(w, EXTRACT, r"dataset 'tiny': 1 image file\(s\) resolve outside the dataset folder")


def test_symlink_outside_allowed_when_the_spec_says_so(w):
    target = write_image(w / "private" / "scan.png", seed=3)
    link = w / "data" / "tiny" / "a" / "p000_0.png"
    link.unlink()
    link.symlink_to(target)
    spec = spec_variant(w, "allowed.toml", 'group = "patient"', 'group = "patient"\nallow_outside_root = true')
    status, text = cli("datasets", "--data-root", "data")
    assert status == 0
    from probebench.data.datasets import load_manifest

    m = load_manifest(spec, w / "data")
    assert str(link) in m.paths


def test_a_dataset_folder_that_is_a_link_is_fine(w):
    """Linking a dataset folder into the data root from another disk is common and stays allowed."""
    shutil.move(w / "data" / "tiny", w / "disk2")
    (w / "data" / "tiny").symlink_to(w / "disk2")
    from probebench.data.datasets import load_manifest

    assert len(load_manifest("tiny.toml", "data")) == 40


def test_label_map_to_an_unknown_class(w):
    spec = csv_dataset(w, table_rows(w))
    text = (w / spec).read_text().replace('[csv]\nfile = "t.csv"\n', '[csv]\nfile = "t.csv"\nlabel_map = { a = "c" }\n')
    (w / spec).write_text(text)
    refused(w, extract_with(spec), r"maps to \['c'\], which are not among the classes")


# ---------------------------------------------------------------- study files

STUDY = """[study]
name = "s"
datasets = ["tiny.toml"]
models = ["resnet50"]
modes = ["frozen"]
weights = "random"
data_root = "data"
[training]
epochs = 2
[extract]
resize = 40
crop = 32
"""

STUDY_CASES = {
    "datasets_a_string": ('datasets = ["tiny.toml"]', 'datasets = "chest_xray"',
                          r"s.toml, line 3: datasets must be a non-empty list of dataset names.*not 'chest_xray'"),
    "optimizer_typo": ("epochs = 2", 'epochs = 2\noptimizer = "adamm"',
                       r"line 10: \[training\] optimizer must be one of adam, adamw, sgd, not 'adamm'"),
    "resize_text": ("resize = 40", 'resize = "big"', r"line 11: \[extract\] resize must be an integer number of "
                                                     r"pixels >= 1, not 'big'"),
    "lr_nan": ("epochs = 2", "epochs = 2\nlr = nan", r"\[training\] lr must be a finite number > 0, not nan"),
    "weight_decay_negative": ("epochs = 2", "epochs = 2\nweight_decay = -1",
                              r"\[training\] weight_decay must be a finite number >= 0, not -1"),
    "select_metric_typo": ("epochs = 2", 'epochs = 2\nselect_metric = "val_f1"',
                           r"select_metric must be one of val_accuracy, val_loss, not 'val_f1'"),
    "precision_fp8": ("resize = 40", 'resize = 40\nprecision = "fp8"', r"\[extract\] precision must be one of fp32"),
    "report_method": ("[extract]", '[report]\nmethod = "foo"\n[extract]', r"\[report\] method must be one of "
                                                                         r"percentile, bca, not 'foo'"),
    "seeds_not_integers": ('modes = ["frozen"]', 'modes = ["frozen"]\nseeds = [1, "x"]',
                           r"\[study\] seeds must be a non-empty list of integers"),
    "study_name_escapes": ('name = "s"', 'name = "../../elsewhere"', r"study name '\.\./\.\./elsewhere' cannot be a "
                                                                     r"folder name"),
    "section_not_a_table": ("[extract]\nresize = 40\ncrop = 32\n", "", None),
    "mean_two_numbers": ("crop = 32", "crop = 32\nmean = [0.5, 0.5]", r"\[extract\] --mean needs 1 or 3 numbers"),
    "grid_with_knn": ('modes = ["frozen"]', 'modes = ["frozen"]\ngrid = true\nheads = ["linear", "knn"]',
                      r"line 6: grid = true works with the linear and mlp heads only, not \['knn'\]"),
    "resamples_unbounded": ("[extract]", "[report]\nresamples = 1000000000\n[extract]",
                            r"\[report\] resamples must be an integer from 2 to 1,000,000 .*not 1000000000"),
    "cv_unbounded": ("epochs = 2", "epochs = 2\ncv = 100000",
                     r"cv must be a number of folds from 2 to 1,000 for every dataset.*not 100000"),
    "epochs_unbounded": ("epochs = 2", "epochs = 1000000000", r"epochs must be an integer from 1 to 100,000"),
    "grid_with_patience": ('data_root = "data"\n[training]\nepochs = 2',
                           'data_root = "data"\ngrid = true\n[training]\nepochs = 2\npatience = 3',
                           r"line 11: grid = true trains with Adam for the full epochs"),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_bad_study_file_is_refused_before_any_work(w, case):
    old, new, pattern = STUDY_CASES[case]
    if pattern is None:  # a key that should be a section
        text, pattern = 'extract = "fast"\n' + STUDY.replace(old, new), r"extract must be a \[extract\] table"
    else:
        text = STUDY.replace(old, new)
    assert text != STUDY
    (w / "s.toml").write_text(text)
    refused(w, ["run", "s.toml"], pattern)
    refused(w, ["run", "s.toml", "--dry-run"], pattern)  # the plan refuses it too
    assert not (w / "runs" / "_studies").exists()  # nothing planned, nothing extracted


def test_binary_study_file(w):
    (w / "s.toml").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    refused(w, ["run", "s.toml", "--dry-run"], r"s.toml: not a TOML text file")


def test_planner_records_any_failure_and_goes_on(w, monkeypatch):
    """A cell whose dataset fails to resolve with an unexpected error is blocked with its message; the others
    are planned (the planner used to stop at the first error that was not probebench's own)."""
    import probebench.features.spec

    real = probebench.features.spec.resolve_job

    def flaky(model, dataset, **kw):
        if dataset == "broken.toml":
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real(model, dataset, **kw)

    monkeypatch.setattr(probebench.features.spec, "resolve_job", flaky)
    shutil.copy(w / "tiny.toml", w / "broken.toml")
    (w / "s.toml").write_text(STUDY.replace('["tiny.toml"]', '["tiny.toml", "broken.toml"]'))
    status, text = cli("run", "s.toml", "--dry-run")
    assert status == 0, text
    assert re.search(r"blocked: broken\.toml × resnet50: UnicodeDecodeError", text) and "todo" in text, text


# ---------------------------------------------------------------- option values

OPTION_CASES = {
    "workers_negative": ([*EXTRACT, "--workers", "-1"], r"--workers must be an integer >= 0, not -1"),
    "batch_size_zero": ([*EXTRACT, "--batch-size", "0"], r"--batch-size must be an integer from 1 to 65,536, not 0"),
    "batch_size_negative": ([*EXTRACT, "--batch-size", "-1"],
                            r"--batch-size must be an integer from 1 to 65,536, not -1"),
    "chunk_size_zero": ([*EXTRACT, "--chunk-size", "0"], r"--chunk-size must be an integer from 1 to 65,536"),
    "precision_fp8": ([*EXTRACT, "--precision", "fp8"], r"--precision must be one of fp32, bf16, fp16, not 'fp8'"),
    "store_dtype": ([*EXTRACT, "--store-dtype", "int8"], r"--store-dtype must be one of float32, float16"),
    "resize_zero": ([*EXTRACT, "--resize", "0"], r"--resize must be an integer number of pixels >= 1, not 0"),
    "epochs_zero": ([*FIT, "--epochs", "0"], r"--epochs must be an integer from 1 to 100,000, not 0"),
    "seeds_not_integers": ([*FIT, "--seeds", "1,x"], r"--seeds '1,x': expected integers separated by commas"),
    "lr_nan": ([*FIT, "--lr", "nan"], r"--lr must be a finite number > 0, not nan"),
    "lr_negative": ([*FIT, "--lr", "-0.1"], r"--lr must be a finite number > 0"),
    "optimizer_typo": ([*FIT, "--optimizer", "adamm"], r"--optimizer must be one of adam, adamw, sgd, not 'adamm'"),
    "select_metric_typo": ([*FIT, "--select-metric", "val_f1"], r"--select-metric must be one of val_accuracy"),
    "head_unknown": ([*FIT, "--head", "svm"], r"--head must be one of linear, mlp, study_mlp, logreg, knn, not 'svm'"),
    "patience_zero": ([*FIT, "--patience", "0"], r"--patience must be an integer >= 1"),
    "weight_decay_negative": ([*FIT, "--weight-decay", "-1"], r"--weight-decay must be a finite number >= 0"),
    "mean_two_numbers": ([*FIT, "--mean", "0.5,0.5"], r"--mean needs 1 or 3 numbers, got 2"),
    "std_zero": ([*FIT, "--std", "0"], r"--std values must be positive"),
    "finetune_epochs_zero": (["finetune", *MODEL, *DATA, "--runs-dir", "runs", "--epochs", "0"],
                             r"--epochs must be an integer from 1 to 100,000, not 0"),
    "finetune_precision": (["finetune", *MODEL, *DATA, "--runs-dir", "runs", "--precision", "fp4"],
                           r"--precision must be one of auto, fp32, bf16, fp16"),
    "weights_typo": ([*FIT, "--weights", "radnom"], r"radnom"),
    "unknown_model": ([*FIT[:1], "--model", "resnet5", *FIT[3:]], r"resnet5"),
    "timm_bad_tag": ([*FIT[:1], "--model", "timm:resnet18.badtag", *FIT[3:]],
                     r"timm model 'resnet18' has no pretrained tag 'badtag'; tags: a1_in1k"),
    "several_bad_values_at_once": ([*FIT, "--epochs", "0", "--lr", "0"], r"--epochs must .*; --lr must"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_value(w, case):
    args, pattern = OPTION_CASES[case]
    refused(w, args, pattern)


# ---------------------------------------------------------------- the feature cache

def store_of(base: Path) -> Path:
    (store,) = (base / "cache").glob("tiny/resnet50/*.zarr")
    return store


def test_deleted_chunk_is_refused_then_verify_marks_it_and_extract_recomputes(w):
    (w / "cache" / store_of(w).relative_to(w / "cache") / "features" / "c" / "1" / "0").unlink()
    refused(w, FIT, r"8 row\(s\) hold non-finite features .*rows 8 .*rerun the same `probebench extract`")
    refused(w, ["verify"], r"damaged store .*chunk\(s\) \[1\] unreadable or non-finite .*1 problem\(s\) left", code=1)
    status, text = cli("verify", "--repair")
    assert status == 0 and "marked 1 chunk(s) for recomputation" in text, text
    status, text = cli(*EXTRACT)
    assert status == 0, text
    status, text = cli("verify")
    assert status == 0 and "0 problem(s) left" in text, text
    assert cli(*FIT)[0] == 0


def test_corrupt_chunk(w):
    (store_of(w) / "features" / "c" / "0" / "0").write_bytes(b"\x00garbage")
    refused(w, FIT, r"has an unreadable chunk .*rerun the same `probebench extract`")


def test_missing_array_metadata(w):
    (store_of(w) / "features" / "zarr.json").unlink()
    refused(w, FIT, r"is damaged: array\(s\) features cannot be opened; rerun extract with --force")


def test_missing_store_metadata_is_refused_without_writing(w):
    store = store_of(w)
    (store / "zarr.json").unlink()
    refused(w, EXTRACT, r"zarr.json .* is missing; rerun extract with --force")
    assert not (store / "zarr.json").exists()  # no empty group written over it


def test_cache_dir_that_is_a_file(w):
    shutil.rmtree(w / "cache")
    (w / "cache").write_text("not a folder")
    status, text = cli(*EXTRACT)
    assert status == 2 and re.search(r"error: .*cache.*(Not a directory|File exists)", text), text


def test_runs_dir_that_cannot_be_written_is_refused_before_training(w):
    (w / "blocked").write_text("a file where a folder should be")
    refused(w, [*FIT, "--runs-dir", "blocked/runs"], r"cannot write into blocked/runs .*choose a writable folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_runs_dir(w):
    (w / "ro").mkdir()
    os.chmod(w / "ro", 0o555)
    refused(w, [*FIT, "--runs-dir", "ro"], r"cannot write into ro \(no permission\)")


# ---------------------------------------------------------------- runs and reports

def the_run(base: Path) -> Path:
    (run,) = (base / "runs").glob("tiny/resnet50/frozen/*/")
    return run


def test_nan_probabilities_are_refused_by_report_and_moved_aside_by_verify(w):
    pred = the_run(w) / "predictions.csv"
    lines = pred.read_text().splitlines()
    cells = lines[1].split(",")
    cells[-1] = "nan"
    pred.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    write_checksums(the_run(w))  # written so (NaN features give such runs), not edited afterwards
    refused(w, ["report", "--strict"], rf"run {the_run(w).relative_to(w)}: 1 prediction row\(s\) hold "
                                       r"probabilities that are not finite")
    refused(w, ["report"], r"no runs found under runs \(1 damaged run\(s\) left out")
    status, text = cli("verify", "--repair")
    assert status == 0 and "moved to runs/_damaged/" in text, text
    assert cli("report")[0] == 2  # no run left to report, said as a message


def test_truncated_config_names_the_run(w):
    config = the_run(w) / "config.json"
    config.write_text(config.read_text()[:40])
    refused(w, ["report", "--strict"], rf"run {the_run(w).relative_to(w)} is damaged: config.json cannot be read")


def test_compare_with_a_damaged_run(w):
    run = the_run(w)
    (run / "metrics.json").write_text("{")
    refused(w, ["compare", run, run], rf"run {run} is damaged")


def test_export_refuses_a_format_that_contradicts_the_name(w):
    good = w / "g.h5"
    good.write_bytes(b"previous export")
    refused(w, ["export", *MODEL, *DATA, "--cache-dir", "cache", "--out", good, "--format", "npz"],
            r"--out .*g.h5 names a .h5 file but --format is npz")
    assert good.read_bytes() == b"previous export" and not (w / "g.h5.npz").exists()


def test_export_keeps_the_name_given(w):
    status, text = cli("export", *MODEL, *DATA, "--cache-dir", "cache", "--out", "feats", "--format", "npz")
    assert status == 0 and (w / "feats").is_file() and not (w / "feats.npz").exists(), text
    assert np.load(w / "feats")["features"].shape == (40, 2048)


def test_a_failed_export_leaves_the_previous_file_intact(w):
    """The process may write at most 64 KiB per file (as on a nearly full disk); the export (40 x 2048 floats)
    fails, the previous file is untouched and no temporary file is left."""
    good = w / "g.h5"
    good.write_bytes(b"previous export")
    env = {**os.environ, "PROBEBENCH_OFFLINE": "1", "PROBEBENCH_HASH_CACHE": str(w / "digests.sqlite")}
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
            "from probebench.cli import app; sys.argv = ['probebench'] + sys.argv[1:]; app()")
    res = subprocess.run([sys.executable, "-c", code, "export", *MODEL, *DATA, "--cache-dir", "cache", "--out",
                          str(good)], cwd=w, env=env, capture_output=True, text=True, timeout=300)
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2 and "Traceback" not in text, text
    assert re.search(r"error: .*(File too large|larger than this process may write)", text), text
    assert good.read_bytes() == b"previous export"
    assert [p.name for p in w.glob(".g*")] == []


# ---------------------------------------------------------------- checkpoints

def test_truncated_weights_file(w):
    torch.save(torch.nn.Linear(2, 2).state_dict(), w / "w.pt")
    (w / "w.pt").write_bytes((w / "w.pt").read_bytes()[:100])
    text = refused(w, ["extract", "--model", "resnet50", "--weights", "w.pt", *DATA, "--cache-dir", "cache"],
                   r"weights file w.pt cannot be read \(truncated or damaged")
    assert "weights_only" not in text


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_weights_file_with_code_is_refused_without_advice_to_run_it(w):
    with open(w / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": Payload()}, fh)
    text = refused(w, ["extract", "--model", "resnet50", "--weights", "evil.pt", *DATA, "--cache-dir", "cache"],
                   r"weights file evil.pt holds Python objects other than tensors .*could run arbitrary code")
    assert "weights_only" not in text and "pwned" not in text


def test_truncated_and_malicious_last_checkpoint(w):
    work = w / "runs" / "tiny" / "resnet50" / "unfrozen" / "_inprogress"
    work.mkdir(parents=True)
    with open(work / "last.pt", "wb") as fh:
        pickle.dump(Payload(), fh)
    args = ["finetune", *MODEL, *DATA, "--runs-dir", "runs", "--epochs", "1", "--workers", "0", "--resume"]
    text = refused(w, args, r"checkpoint .*last.pt holds Python objects .*run without --resume")
    assert "weights_only" not in text
    torch.save({"numbers": {}, "loop": {}}, work / "last.pt")
    (work / "last.pt").write_bytes((work / "last.pt").read_bytes()[:30])
    refused(w, args, r"checkpoint .*last.pt cannot be read \(truncated or damaged")


# ---------------------------------------------------------------- debug

def test_debug_shows_the_traceback(w, monkeypatch):
    monkeypatch.setenv("PROBEBENCH_DEBUG", "1")
    res = CliRunner().invoke(app, [*FIT, "--epochs", "0"])
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)


# ---------------------------------------------------------------- data that cannot train, interrupted work

def test_a_class_without_training_images(w):
    files = sorted((w / "data" / "tiny").rglob("*.png"))
    rows = []
    for f in files:
        cls, patient = f.parent.name, int(f.stem[2:4])
        split = "test" if cls == "b" else "train" if patient < 5 else "val" if patient < 8 else "test"
        rows.append(f"{f.relative_to(w / 'data' / 'tiny').as_posix()},{cls},{f.stem.split('_')[0]},{split}\n")
    spec = csv_dataset(w, "path,label,patient,split\n" + "".join(rows))
    text = (w / spec).read_text().replace("[split]\ntest_fraction = 0.3\nval_fraction = 0.25\n", "")
    (w / spec).write_text(text.replace('[csv]\nfile = "t.csv"\n', '[csv]\nfile = "t.csv"\ngroup_column = "patient"\n'))
    status, text = cli(*extract_with(spec), "--batch-size", "8")
    assert status == 0, text
    refused(w, ["fit", *MODEL, "--dataset", spec, "--data-root", "data", "--cache-dir", "cache", "--runs-dir", "runs",
                "--epochs", "1"], r"class\(es\) \['b'\] have no training images.*a: 10/6/4, b: 0/0/20")


def dead_pid() -> int:
    """The id of a process that has ended (the writer of a leftover)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_verify_removes_leftovers_of_interrupted_writes(w):
    pid = dead_pid()
    partial = w / "runs" / "tiny" / "resnet50" / "frozen" / f"20260101-000000-linear-abc.{pid}.probebench-partial"
    partial.mkdir()
    (partial / "config.json").write_text("{")
    tmp = w / "runs" / "_studies" / f".s.probebench-{pid}.tmp.json"
    tmp.parent.mkdir()
    tmp.write_text("{")
    status, text = cli("verify")
    assert status == 1 and text.count("leftover") >= 2 and "2 problem(s) left" in text, text
    status, text = cli("verify", "--repair")
    assert status == 0 and not partial.exists() and not tmp.exists(), text
    assert cli("report")[0] == 0  # the good run is untouched


@pytest.mark.slow
def test_run_resumes_an_interrupted_fine_tune(w, capsys):
    """A crash mid fine-tune leaves _inprogress/last.pt; `run` continues after the last finished epoch."""
    from probebench.train.finetune import finetune
    from probebench.study import load_study, run_study

    (w / "s.toml").write_text(STUDY.replace('modes = ["frozen"]', 'modes = ["unfrozen"]')
                              .replace("[extract]", "[unfrozen]\nworkers = 0\n[extract]"))

    def crash(state, row):
        if state.epoch == 1:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        finetune("resnet50", "tiny.toml", data_root="data", runs_dir="runs", weights="random", resize=40, crop=32,
                 epochs=2, workers=0, progress=False, on_epoch=crash)
    result = run_study(load_study(w / "s.toml"), progress=False, write_report=False, echo=lambda t: None)
    assert [c.status for c in result.cells] == ["done"]
    assert re.search(r"resuming \S*runs/tiny/resnet50/unfrozen/_inprogress after epoch 1", capsys.readouterr().err)
    (run,) = (w / "runs" / "tiny" / "resnet50" / "unfrozen").glob("*-linear-*")
    assert [r.split(",")[0] for r in (run / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_prepare_mri_killed_at_the_switch_leaves_the_previous_preparation(tmp_path, monkeypatch):
    """The new preparation becomes live by one rename; a kill just before it leaves every modality of the
    previous preparation (same split seed), none missing."""
    from test_mri import make_cohort

    from probebench.data import mri

    cohort, labels = make_cohort(tmp_path, n_per_grade=3, modalities=("t1", "t2"))
    out = tmp_path / "data"
    mri.prepare_mri(cohort, labels, out, modalities=["t1", "t2"], seed=0, workers=1, progress=False)
    before = {m: (out / m / "manifest.csv").read_text() for m in ("t1", "t2")}
    real_replace = os.replace

    def killed(src, dst):
        if Path(dst).name == "current":
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(mri.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        mri.prepare_mri(cohort, labels, out, modalities=["t1", "t2"], seed=5, workers=1, progress=False)
    assert {m: (out / m / "manifest.csv").read_text() for m in ("t1", "t2")} == before
    monkeypatch.setattr(mri.os, "replace", real_replace)
    mri.prepare_mri(cohort, labels, out, modalities=["t1", "t2"], seed=5, workers=1, progress=False)
    after = {m: (out / m / "manifest.csv").read_text() for m in ("t1", "t2")}
    assert after != before and len(list((out / ".prepare-mri").iterdir())) == 2  # one generation + current


def test_a_weights_file_with_nan_is_refused(w):
    from torchvision.models import resnet50

    state = resnet50(weights=None).state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, w / "nan.pt")
    refused(w, ["extract", "--model", "resnet50", "--weights", "nan.pt", *DATA, "--cache-dir", "cache", "--workers",
                "0", "--resize", "40", "--crop", "32"],
            r"weights file nan.pt holds non-finite values \(NaN or inf\) in 1 tensor\(s\): layer1.0.conv1.weight")
    assert not list((w / "cache" / "tiny" / "resnet50").glob("*.zarr"))[1:]  # no new store beside the good one


def test_non_finite_features_stop_extraction_and_are_never_stored(w, monkeypatch):
    """A model that overflows (fp16) or is broken must not fill a store with NaN that fit would refuse and
    extract would recompute forever."""
    import probebench.models.registry as ex

    real = ex.build_model

    def overflowing(*args, **kwargs):
        net = real(*args, **kwargs)
        forward = net.forward
        net.forward = lambda x: forward(x) * float("inf")
        return net

    monkeypatch.setattr(ex, "build_model", overflowing)
    shutil.rmtree(w / "cache")
    status, text = cli(*EXTRACT)
    assert status == 2 and re.search(r"resnet50 gave non-finite features for 4 image\(s\) of this batch, e.g. "
                                     r"data/tiny/a/p000_0.png; the weights or the model are broken", text), text
    import zarr

    (store,) = (w / "cache" / "tiny" / "resnet50").glob("*.zarr")
    assert not zarr.open_group(str(store), mode="r")["chunk_done"][:].any()


def test_the_option_rules_name_what_the_code_accepts():
    """validate.py keeps light copies of the allowed values (the CLI must not import torch to check an option);
    they must equal the code's own tables."""
    from probebench import validate
    from probebench.train import heads
    from probebench.train import loop as training
    from probebench.features.precision import AUTOCAST

    assert set(validate.SELECT_METRICS) == set(training.SELECT_METRICS)
    assert set(validate.PRECISIONS) == set(AUTOCAST)
    # heads and the statistics' vocabularies are read from their owners: the rule accepts exactly their names
    from probebench.stats import bootstrap, evaluate, metrics

    for key, names in (("head", heads.HEADS), ("method", bootstrap.METHODS), ("unit", bootstrap.UNITS),
                       ("stratify", bootstrap.STRATIFY), ("level", evaluate.LEVELS),
                       ("aggregate", evaluate.AGGREGATIONS)):
        assert all(validate.problem(key, n) is None for n in names)
        assert validate.problem(key, "nothing") == f"must be one of {', '.join(names)}, not 'nothing'"
    assert validate.problem("metrics", list(metrics.ALL_METRICS)) is None
    assert "did you mean 'auroc_macro'" in validate.problem("metrics", ["auroc_marco"])
    for name in validate.OPTIMIZERS:
        training.make_optimizer([torch.nn.Parameter(torch.zeros(1))], name, 1e-4, 0.0)
    with pytest.raises(ValueError):
        training.make_optimizer([torch.nn.Parameter(torch.zeros(1))], "adamm", 1e-4, 0.0)


# ---------------------------------------------------------------- integrity: memo, run files, names, identity


def test_an_image_rewritten_in_place_with_its_mtime_restored_gets_fresh_features(w, monkeypatch):
    """Same inode, same size, mtime put back (``cp -p``, ``rsync -t``): the memo sees the ctime and hashes again."""
    from probebench.data import filehash
    from probebench.features.cache import read_features

    monkeypatch.setattr(filehash, "RACY_NS", 0)  # the stamp itself must catch it, not the recent-write guard
    assert cli(*EXTRACT)[0] == 0  # the memo now holds every image of this copy
    first = store_of(w)
    old = read_features(first)
    target = w / "data" / "tiny" / "a" / "p000_0.png"
    before = target.stat()
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24), 250, np.uint8)).save(buffer, format="PNG")  # another picture, fewer bytes
    new = buffer.getvalue()
    assert len(new) < before.st_size
    with open(target, "r+b") as fh:  # in place: the same inode
        fh.write(new + b"\0" * (before.st_size - len(new)))  # PNG readers stop at IEND: same size, valid image
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    status, text = cli(*EXTRACT)
    assert status == 0, text
    stores = sorted((w / "cache" / "tiny" / "resnet50").glob("*.zarr"))
    assert len(stores) == 2, stores  # a new manifest hash, so a new store
    fresh = read_features(next(s for s in stores if s != first))
    row = list(fresh.sample_ids).index("a/p000_0.png")
    assert not np.allclose(fresh.features[row], old.features[list(old.sample_ids).index("a/p000_0.png")])
    filehash.forget()  # --rehash: every file is read again
    reads = []
    real = filehash.digest_file
    monkeypatch.setattr(filehash, "digest_file", lambda p: reads.append(p) or real(p))
    assert cli(*EXTRACT, "--rehash")[0] == 0 and len(reads) == 40


def test_repair_removes_only_probebench_leftovers_of_finished_writers(w):
    """User files named like temporaries, zarr's own files inside a store, a live writer's temporary and a
    foreign folder survive ``verify --repair``; only a dead writer's probebench temporaries go."""
    pid = dead_pid()
    user = [w / "runs" / "notes" / ".draft.tmp.txt", w / "runs" / "my.tmp", w / "cache" / ".a.123.tmp.json",
            w / "runs" / "mine.partial" / "keep.txt", w / "cache" / "tiny" / "resnet50" / "x.zarr.partial" / "f",
            store_of(w) / f".zarr.probebench-{pid}.tmp.json", store_of(w) / "features" / f"zarr.{pid}.partial",
            w / "runs" / "tiny" / "resnet50" / "frozen" / f".live.probebench-{os.getpid()}.tmp.json"]
    for p in user:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("mine")
    ours = [w / "runs" / "tiny" / "resnet50" / "frozen" / f"20260101-000000-linear-abc.{pid}.probebench-partial",
            w / "cache" / "tiny" / "resnet50" / f"0123.zarr.{pid}.probebench-partial",
            w / "runs" / "_studies" / f".s.probebench-{pid}.tmp.json"]
    for p in ours[:2]:
        (p / "inner").mkdir(parents=True)
    ours[2].parent.mkdir(parents=True, exist_ok=True)
    ours[2].write_text("{")
    status, text = cli("verify")
    assert status == 1 and text.count("left by an interrupted write") == 3, text
    status, text = cli("verify", "--repair")
    assert status == 0, text
    assert [p for p in ours if p.exists()] == [] and all(p.read_text() == "mine" for p in user)


def edit_csv(path: Path, edit) -> None:
    """Rewrite predictions.csv row by row (a dict per row) with ``edit(row)``."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0])
    rows = [r for row in rows for r in (edit(row) or [row])]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def set_pred_to_truth(row):
    row["pred"] = row["true"]


def probabilities_summing_to_1_8(row):
    row["prob_a"], row["prob_b"] = "0.9", "0.9"


def first_row_twice(row, seen=[]):  # noqa: B006 - the state is the point: the first row is written twice
    if not seen:
        seen.append(row)
        return [row, dict(row)]
    return None


@pytest.mark.parametrize("edit, reason", [
    (set_pred_to_truth, r"name a predicted class that is not the most probable one"),
    (probabilities_summing_to_1_8, r"probabilities that do not sum to 1 \(first: sample .*, sum 1\.8\)"),
    (first_row_twice, r"1 sample id\(s\) appear more than once in predictions.csv"),
])
def test_edited_predictions_are_refused_even_with_fresh_checksums(w, edit, reason):
    """Edited after writing: the checksum names the file. Written so (or checksums forged): the content checks."""
    run = the_run(w)
    edit_csv(run / "predictions.csv", edit)
    refused(w, ["report", "--strict"], r"predictions.csv was changed after the run was written")
    write_checksums(run)
    refused(w, ["report", "--strict"], reason)
    status, text = cli("verify")
    assert status == 1 and re.search(reason, text), text


@pytest.mark.parametrize("file, change, reason", [
    ("metrics.json", lambda d: {**d, "val_accuracy": "high"}, r"metrics.json: val_accuracy must be a number"),
    ("metrics.json", lambda d: [d], r"metrics.json: not a JSON object"),
    ("config.json", lambda d: {k: v for k, v in d.items() if k != "weights"}, r"config.json: weights must be an "),
    ("config.json", lambda d: {**d, "n": {**d["n"], "test": "12"}}, r"config.json: n must map"),
    ("config.json", lambda d: {**d, "classes": ["a"]}, r"config.json: classes must be a list of at least two"),
])
def test_malformed_json_is_named_by_report_verify_recommend_and_out(w, file, change, reason):
    import json

    run = the_run(w)
    path = run / file
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    write_checksums(run)  # valid checksums: the schema must catch it
    refused(w, ["report", "--strict"], rf"run {run.relative_to(w)} is damaged: {reason}")
    for args in (["report"], ["report", "--recommend"], ["report", "--out", "out"]):
        status, text = cli(*args)
        assert status == 2 and "1 damaged run(s) left out" in text, (args, text)
    status, text = cli("verify")
    assert status == 1 and re.search(reason, text) and "1 problem(s) left" in text, text


def test_verify_and_report_with_one_edited_one_malformed_one_good_run(w):
    """The issue's acceptance case: verify names exactly the two bad runs; report shows the good one, noting both."""
    import json

    for epochs in ("3", "4"):
        assert cli(*FIT[:-1], epochs)[0] == 0
    good, edited, malformed = sorted((w / "runs" / "tiny" / "resnet50" / "frozen").iterdir())
    edit_csv(edited / "predictions.csv", set_pred_to_truth)
    (malformed / "metrics.json").write_text(json.dumps({"test": {}, "fit_seconds": "fast"}))
    write_checksums(malformed)
    status, text = cli("verify")
    assert status == 1 and "2 problem(s) left" in text, text
    damaged = re.findall(r"damaged run (\S+):", text)
    assert sorted(damaged) == sorted([str(edited.relative_to(w)), str(malformed.relative_to(w))]), text
    status, text = cli("report", "--format", "md")
    assert status == 0, text
    assert text.count("| tiny |") == 1 and f"left out: run {edited.relative_to(w)} is damaged" in text
    assert f"left out: run {malformed.relative_to(w)} is damaged: metrics.json: fit_seconds must be a number" in text
    status, text = cli("report", "--json")
    import json as _json
    record = _json.loads(text[text.index("{"):])
    assert [r["run"] for r in record["rows"]] == [str(good.relative_to(w))]
    assert len(record["skipped_runs"]) == 2


def test_identical_inputs_reuse_the_run_after_a_re_extraction(w):
    """The run's identity holds no measurement: a re-extraction (another speed) leaves fit's run reused."""
    assert cli(*EXTRACT, "--force")[0] == 0
    status, text = cli(*FIT)
    assert status == 0 and "an identical run exists, reused" in text, text
    assert len(list((w / "runs" / "tiny" / "resnet50" / "frozen").iterdir())) == 1


def test_a_damaged_identical_run_is_not_reused(w):
    (the_run(w) / "predictions.csv").unlink()
    status, text = cli(*FIT)
    assert status == 0 and "an identical earlier run is not reused" in text and "predictions.csv is missing" in text
    assert len(list((w / "runs" / "tiny" / "resnet50" / "frozen").iterdir())) == 2
    status, text = cli("report")  # the new run is reported; the damaged one noted
    assert status == 0 and "left out" in text, text


HOSTILE_SPEC = TINY_SPEC.replace('name = "tiny"', 'name = "x=1+1"').replace('classes = ["a", "b"]',
                                                                          'classes = ["<script>x|y", "@SUM(1)"]')


def test_hostile_class_names_and_a_non_utf8_file_name_are_escaped_in_every_output(w):
    """Classes named like HTML and a formula, and an image whose name is not UTF-8: read, and reported with
    escaped names; Markdown, LaTeX, HTML and the terminal never carry them raw (dataset names are restricted
    to safe folder names, so results.csv holds no class name; its cells are checked below by hand)."""
    from probebench.report.tables import csv_cell

    for old, new in (("a", "<script>x|y"), ("b", "@SUM(1)")):
        (w / "data" / "tiny" / old).rename(w / "data" / "tiny" / new)
    bad = os.fsencode(w / "data" / "tiny" / "<script>x|y" / "p000_0.png")
    os.rename(bad, bad.replace(b"p000_0.png", b"p000_\xff.png"))
    (w / "hostile.toml").write_text(HOSTILE_SPEC)
    args = [*MODEL, "--dataset", "hostile.toml", "--data-root", "data", "--cache-dir", "cache"]
    status, text = cli("extract", *args, "--workers", "0")
    assert status == 0, text
    status, text = cli("fit", *args, "--runs-dir", "runs", "--epochs", "2")
    assert status == 0, text
    (store,) = (w / "cache").glob("x*/resnet50/*.zarr")
    from probebench.features.cache import read_features
    assert "<script>x|y/p000_\\xff.png" in read_features(store).sample_ids.tolist()  # read, named escaped
    status, text = cli("report", "--dataset", "x=1+1", "--out", "out", "--format", "md")
    assert status == 0, text
    for name in ("tables.md", "report.html"):
        page = (w / "out" / name).read_text()
        assert "<script>" not in page and "script" in page, name
    assert "&lt;script&gt;x\\|y" in (w / "out" / "tables.md").read_text()  # one cell, not a column break
    assert "$<$script$>$x|y" in (w / "out" / "tables.tex").read_text()
    res = CliRunner().invoke(app, ["report", "--dataset", "x=1+1", "--out", "out2"])  # terminal: as written
    assert res.exit_code == 0 and "x=1+1" in res.output
    assert [csv_cell(x) for x in ("=HYPERLINK(1)", "+1", "-1", "@SUM(1)", "\tx", "a=b", "1")] == \
        ["'=HYPERLINK(1)", "'+1", "'-1", "'@SUM(1)", "'\tx", "a=b", "1"]


# ---------------------------------------------------------------- stores under concurrency and interruption


@pytest.mark.slow
def test_processes_started_together_on_one_new_store_fill_it_together(w):
    """Three ``extract`` processes started at once on one new store, twice: every one succeeds, one store is
    made, complete, with features equal to a single process's."""
    from probebench.features.cache import read_features

    reference = read_features(store_of(w))
    env = {**os.environ, "PROBEBENCH_OFFLINE": "1"}
    for attempt in range(2):
        shutil.rmtree(w / "cache")
        procs = [subprocess.Popen([sys.executable, "-m", "probebench", *EXTRACT], cwd=w, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        assert all("Traceback" not in o for o in outputs), outputs
        (store,) = (w / "cache" / "tiny" / "resnet50").iterdir()  # no partial folder left beside it
        got = read_features(store)
        assert got.attrs["complete"] and np.array_equal(got.features, reference.features)


def test_a_store_whose_creation_failed_leaves_nothing_and_the_next_extract_creates_it(w, monkeypatch):
    """A full disk while the empty store is laid out: no store at the final path, no partial folder; the next
    extract succeeds without --force. A half-made store from an older probebench (metadata, no attributes) is
    recognised and made again."""
    import errno

    from probebench.features import cache as fcache

    shutil.rmtree(w / "cache")
    real = fcache._lay_out

    def disk_full(root, *args):
        root.create_array("labels", shape=(1,), dtype="int64")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fcache, "_lay_out", disk_full)
    status, text = cli(*EXTRACT)
    assert status == 2 and "disk is full" in text, text
    assert list((w / "cache" / "tiny" / "resnet50").iterdir()) == []
    monkeypatch.setattr(fcache, "_lay_out", real)
    assert cli(*EXTRACT)[0] == 0
    store = store_of(w)
    shutil.rmtree(store)
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    status, text = cli(*EXTRACT)
    assert status == 0 and "half-created by an interrupted extract; creating it again" in text, text
    assert cli(*FIT)[0] == 0


# ---------------------------------------------------------------- work that cannot finish, whole outputs


def test_requests_that_cannot_finish_are_refused_before_any_work(w, monkeypatch):
    refused(w, ["report", "--resamples", "1000000000"], r"--resamples must be an integer from 2 to 1,000,000")
    refused(w, [*FIT, "--batch-size", "10000000"], r"--batch-size must be an integer from 1 to 65,536")
    refused(w, [*FIT, "--cv", "100000"], r"--cv must be an integer number of folds from 2 to 1,000")
    from probebench import budget

    monkeypatch.setattr(budget, "available_memory", lambda: 50 * 2 ** 20)  # a node with 50 MiB left
    refused(w, ["report", "--resamples", "1000000"], r"the bootstrap of 12 samples x 1,000,000 replicates needs "
                                                     r"about 0\.2 GiB, and this process may use 50 MiB: lower "
                                                     r"--resamples")


def test_available_memory_reads_the_address_space_limit():
    """``ulimit -v`` in a child process: the estimate of what is left is below the limit (and near it)."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30)); "
            "from probebench.budget import available_memory; print(available_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 2 * 2 ** 30 < int(out) < 3 * 2 ** 30


def test_a_report_killed_while_writing_leaves_the_old_report_whole(w, monkeypatch):
    from probebench.report import publish

    assert cli("report", "--out", "out")[0] == 0
    before = {p.name: p.read_bytes() for p in (w / "out").rglob("*") if p.is_file()}
    assert {"tables.md", "tables.tex", "results.csv", "report.html"} <= set(before)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill mid-report looks like from inside

    real = publish.forest_plot
    monkeypatch.setattr(publish, "forest_plot", killed)
    status, text = cli("report", "--out", "out", "--resamples", "2000")
    assert status == 130
    assert {p.name: p.read_bytes() for p in (w / "out").rglob("*") if p.is_file()} == before
    assert [p.name for p in w.iterdir() if "probebench" in p.name] == []  # no staging folder left
    monkeypatch.setattr(publish, "forest_plot", real)
    assert cli("report", "--out", "out", "--resamples", "2000")[0] == 0
    assert (w / "out" / "tables.md").read_bytes() != before["tables.md"]  # the new report, whole


def test_a_report_never_replaces_a_folder_with_other_files(w):
    (w / "paper").mkdir()
    (w / "paper" / "draft.tex").write_text("my paper")
    refused(w, ["report", "--out", "paper"], r"paper holds files that are not part of a report \(draft.tex\)")
    assert (w / "paper" / "draft.tex").read_text() == "my paper"


def test_an_error_in_a_data_loader_worker_is_one_line(w, monkeypatch):
    """A worker that fails (here: a file-size limit on its shared-memory file) is reported by its cause, not by
    the worker's traceback."""
    import errno

    from probebench.features import images

    def too_large(self, i):
        raise OSError(errno.EFBIG, "File too large", "/dev/shm/torch_0")

    monkeypatch.setattr(images.ImageDataset, "__getitem__", too_large)
    status, text = cli(*EXTRACT[:-6], "--workers", "1", "--batch-size", "4", "--chunk-size", "8", "--force")
    assert status == 2 and "File too large" in text and "worker process 0" in text, text
    assert "Original Traceback" not in text and 'File "' not in text


def test_verify_names_a_run_whose_ids_are_not_its_stores_test_split(w):
    """Whole files and valid checksums, but predictions for training images: only the store can tell."""
    from probebench.features.cache import read_features

    feats = read_features(store_of(w))
    train = iter(feats.sample_ids[feats.split == "train"].tolist())

    def to_train(row):
        row["sample_id"] = next(train)

    edit_csv(the_run(w) / "predictions.csv", to_train)
    write_checksums(the_run(w))
    status, text = cli("verify")
    assert status == 1 and "its sample ids are not the test split of its store" in text, text
    assert "12 foreign" in text and "12 missing" in text


def test_a_labels_csv_with_a_byte_order_mark_is_read(tmp_path):
    from probebench.data.mri import read_labels

    path = tmp_path / "labels.csv"
    path.write_bytes("patient_id,grade\nP1,II\nP2,IV\n".encode("utf-8-sig"))  # as Excel saves "CSV UTF-8"
    assert read_labels(path) == {"P1": "II", "P2": "IV"}


CRASH = r'''
import os, signal, sys
import probebench.report.tables as tables
from probebench.supervise import step

SIG = getattr(signal, sys.argv[1])

def crash(*args, **kwargs):
    step("report: the bootstrap of runs/x (1,000 replicates)")
    os.kill(os.getpid(), SIG)

tables.collect_rows = crash
sys.argv = ["probebench", "report"]
from probebench.cli import entry
entry()
'''


@pytest.mark.parametrize("sig, cause", [("SIGSEGV", "a crash inside native code"),
                                        ("SIGKILL", "most often by the system for lack of memory")])
def test_a_command_killed_by_a_signal_ends_in_one_message_naming_its_step(w, sig, cause):
    """Native code crashing, or the out-of-memory killer, in the middle of a report: one line naming the step and
    the likely cause, exit status 128 + signal, no bare signal."""
    res = subprocess.run([sys.executable, "-c", CRASH, sig], capture_output=True, text=True, cwd=w)
    assert res.returncode == 128 + getattr(__import__("signal"), sig), res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: probebench was stopped by {sig} during: report: the "
                                                   "bootstrap of runs/x") and cause in lines[0], res.stderr


def test_the_supervised_command_keeps_exit_statuses_and_output(w):
    entry = [sys.executable, "-c", "import sys; from probebench.cli import entry; sys.argv[0] = 'probebench'; entry()"]
    ok = subprocess.run([*entry, "report", "--format", "md"], capture_output=True, text=True, cwd=w)
    assert ok.returncode == 0 and "| tiny |" in ok.stdout
    bad = subprocess.run([*entry, "report", "--resamples", "1"], capture_output=True, text=True, cwd=w)
    assert bad.returncode == 2 and "--resamples must be" in bad.stderr


def test_a_report_into_a_link_replaces_the_folder_it_names_and_keeps_the_link(w):
    (w / "real").mkdir()
    (w / "out").symlink_to("real")
    for _ in range(2):
        status, text = cli("report", "--out", "out")
        assert status == 0, text
    assert (w / "out").is_symlink() and (w / "real" / "tables.md").is_file()
    assert [p.name for p in w.iterdir() if "probebench" in p.name] == []


def test_verify_says_when_a_runs_ids_could_not_be_checked_against_its_store(w):
    (store_of(w) / "split" / "zarr.json").unlink()  # the store cannot give its splits
    status, text = cli("verify")
    assert status == 1 and re.search(r"unchecked +run .*ids not checked: its store .* cannot be read", text), text
    assert "1 problem(s) left" in text  # the store's; the run is not called damaged
