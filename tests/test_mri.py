"""prepare-mri on synthetic NIfTI cohorts: geometry, thresholds, splits, bad input, end to end."""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from probebench.errors import ProbebenchError
from probebench.data.mri import (parse_grade, prepare_mri, process_volume, resample_to_grid, settings_for,
                            target_grid)

T1 = (0.9, 0.9, 0.9)


def affine_for(spacing, shape, kind="plain"):
    a = np.diag([*spacing, 1.0])
    if kind == "flipped":  # stored left-right and superior-inferior reversed
        a[0, 0], a[2, 2] = -spacing[0], -spacing[2]
        a[0, 3], a[2, 3] = (shape[0] - 1) * spacing[0], (shape[2] - 1) * spacing[2]
    elif kind == "oblique":  # rotated 12 degrees about the z axis
        t = np.deg2rad(12)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a[:3, :3] = rot @ np.diag(spacing)
    return a


def volume_and_mask(shape=(40, 40, 16), radius=6.0, seed=0, centre=None):
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    c = np.array(centre if centre is not None else [s / 2 for s in shape])
    dist = np.sqrt(sum(((idx[i] - c[i]) * (1 if i < 2 else 2.5)) ** 2 for i in range(3)))
    mask = (dist < radius).astype(np.uint8)
    image = 100 + 20 * rng.standard_normal(shape) + 300.0 * mask
    return image.astype(np.float32), mask


def save(path: Path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def make_cohort(root: Path, n_per_grade=3, modalities=("t1", "t2", "flair"), layout="default"):
    """A small cohort with different spacings per modality and a mix of plain, flipped and oblique affines."""
    cohort = root / "cohort"
    grades = {}
    spacings = {"t1": (1.0, 1.0, 1.0), "t2": (0.5, 0.5, 3.0), "flair": (0.9, 0.9, 0.9)}
    kinds = ["plain", "flipped", "oblique"]
    for g, grade in enumerate(("2", "III", "grade4")):
        for i in range(n_per_grade):
            pid = f"P{g}{i:02d}"
            grades[pid] = grade
            for m in modalities:
                shape = (40, 40, 16) if m != "t2" else (64, 64, 6)
                data, mask = volume_and_mask(shape, radius=6.0 if m != "t2" else 10.0, seed=zlib.crc32(f"{pid}{m}".encode()))
                aff = affine_for(spacings[m], shape, kinds[(g + i) % 3])
                if layout == "brats":
                    save(cohort / pid / f"{pid}_{m}.nii.gz", data, aff)
                    if m == modalities[0]:
                        save(cohort / pid / f"{pid}_seg.nii.gz", mask, aff)
                else:
                    save(cohort / pid / f"{m}.nii.gz", data, aff)
                    save(cohort / pid / f"{m}_mask.nii.gz", mask, aff)
    labels = root / "labels.csv"
    labels.write_text("patient_id,grade\n" + "".join(f"{p},{g}\n" for p, g in grades.items()))
    return cohort, labels


def read_manifest(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("raw,grade", [("2", "II"), ("II", "II"), ("grade3", "III"), ("Grade IV", "IV"),
                                       ("WHO 4", "IV"), ("g3", "III"), ("5", None), ("low", None)])
def test_parse_grade(raw, grade):
    assert parse_grade(raw) == grade


def test_cohort_end_to_end_datasets_splits_and_summary(tmp_path):
    cohort, labels = make_cohort(tmp_path)
    # bad and odd input, one each
    (cohort / "P000" / "flair.nii.gz").unlink()  # missing modality
    save(cohort / "P001" / "t2_mask.nii.gz", np.zeros((64, 64, 6), np.uint8), affine_for((0.5, 0.5, 3), (64, 64, 6)))
    data, mask = volume_and_mask()
    save(cohort / "P002" / "flair.nii.gz", np.stack([data, data], -1), affine_for(T1, data.shape))  # 4D
    save(cohort / "P100" / "t1_mask.nii.gz", mask.astype(np.float32) * 0.9, affine_for((1, 1, 1), mask.shape))
    big = np.kron(mask, np.ones((2, 2, 1), np.uint8))  # the mask on a finer grid than its image
    save(cohort / "P101" / "t1_mask.nii.gz", big, affine_for((0.5, 0.5, 1.0), big.shape))
    (cohort / "P999").mkdir()  # a folder without a grade
    with labels.open("a") as fh:
        fh.write("P777,3\n")  # a grade without a folder
    out = tmp_path / "data"
    summary = prepare_mri(cohort, labels, out, workers=1, progress=False)

    t1, t2, fl = (summary["modalities"][m] for m in ("t1", "t2", "flair"))
    reasons = {(m, s["patient"]): s["reason"] for m in ("t1", "t2", "flair") for s in summary["modalities"][m]["skipped"]}
    assert reasons[("flair", "P000")] == "no flair image (P000/flair.nii.gz or .nii)"  # the file looked for
    assert "the mask is empty" in reasons[("t2", "P001")]
    assert "4D image with 2 volumes" in reasons[("flair", "P002")]
    notes = " ".join(n["note"] for n in t1["notes"])
    assert "float mask thresholded at 0.5" in notes and "resampled onto the image grid with nearest neighbour" in notes
    assert summary["unlabelled_folders"] == ["P999"] and summary["labels_without_images"] == ["P777"]
    assert t1["settings"]["spacing"] == [0.9, 0.9, 0.9] and t2["settings"]["spacing"] == [0.5, 0.5, 3.0]

    split_of = {}
    for m in ("t1", "t2", "flair"):
        rows = read_manifest(out / m / "manifest.csv")
        assert rows and all((out / m / r["path"]).is_file() for r in rows)
        assert all(int(r["roi_pixels"]) > 30 for r in rows)
        for r in rows:
            assert split_of.setdefault(r["patient_id"], r["split"]) == r["split"]  # same split in every modality
        assert {r["grade"] for r in rows} == {"II", "III", "IV"}
    assert summary["patients_per_split"] == {"train": 3, "val": 3, "test": 3}  # one per grade at least
    img = Image.open(out / "t1" / read_manifest(out / "t1" / "manifest.csv")[0]["path"])
    assert img.mode == "L" and img.size == (44, 44)  # 40 voxels of 1.0 mm -> 44 of 0.9 mm
    assert json.loads((out / "prepare_summary.json").read_text())["modalities"]["t1"]["splits"]["test"]["patients"]
    gens = sorted(x.name for x in (out / ".prepare-mri").iterdir())  # one live preparation, no staging left
    assert len(gens) == 2 and "current" in gens and not any(g.endswith(".partial") for g in gens)
    assert (out / "t1").resolve().parent == (out / ".prepare-mri" / gens[0]).resolve()


def test_rerun_is_byte_identical(tmp_path):
    cohort, labels = make_cohort(tmp_path, n_per_grade=2, modalities=("t1",))
    prepare_mri(cohort, labels, tmp_path / "a", modalities=("t1",), workers=2, progress=False)
    prepare_mri(cohort, labels, tmp_path / "b", modalities=("t1",), workers=1, progress=False)
    for name in ("manifest.csv", "summary.json"):
        assert (tmp_path / "a" / "t1" / name).read_bytes() == (tmp_path / "b" / "t1" / name).read_bytes()
    pngs = sorted((tmp_path / "a" / "t1").rglob("*.png"))
    assert pngs and all(p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in pngs)


def test_roi_threshold_is_more_than_30_pixels_after_resampling(tmp_path):
    shape = (20, 20, 8)
    mask = np.zeros(shape, np.uint8)
    mask[2:7, 2:8, 3] = 1  # exactly 30 pixels: dropped
    mask[2:7, 2:8, 5] = 1
    mask[10, 10, 5] = 1  # 31 pixels: kept
    data = np.random.default_rng(0).normal(100, 10, shape).astype(np.float32)
    img = save(tmp_path / "t1.nii.gz", data, affine_for(T1, shape))  # already at the target spacing
    msk = save(tmp_path / "t1_mask.nii.gz", mask, affine_for(T1, shape))
    _, _, keep, _, _ = process_volume(img, msk, settings_for("t1"))
    assert keep == [5]
    _, _, keep, _, _ = process_volume(img, msk, settings_for("t1", min_roi_pixels=29))
    assert keep == [3, 5]


@pytest.mark.parametrize("kind", ["plain", "flipped", "oblique"])
def test_mask_stays_aligned_after_resampling(kind):
    shape, spacing = (48, 48, 20), (1.0, 1.0, 2.0)
    affine = affine_for(spacing, shape, kind)
    _, mask = volume_and_mask(shape, radius=7, centre=(20.3, 27.1, 9.4))
    new_affine, new_shape = target_grid(affine, shape, (0.5, 0.5, 3.0))
    moved = resample_to_grid(mask, affine, new_affine, new_shape, order=0)

    def world_com(m, aff):
        return aff[:3, :3] @ np.argwhere(m).mean(axis=0) + aff[:3, 3]

    shift = np.abs(world_com(mask, affine) - world_com(moved, new_affine))
    assert (shift < np.array([0.5, 0.5, 3.0])).all()  # less than one target voxel on every axis
    assert new_shape == (96, 96, 13)


def test_bad_volumes_are_skipped_with_the_reason(tmp_path):
    cohort, labels = make_cohort(tmp_path, n_per_grade=2, modalities=("t1",))
    data, mask = volume_and_mask()
    data[0, 0, 0] = np.nan
    save(cohort / "P000" / "t1.nii.gz", data, affine_for((1, 1, 1), data.shape))
    raw = gzip.compress(b"\0" * 100)[:30]
    (cohort / "P100" / "t1.nii.gz").write_bytes(raw)  # truncated
    shifted = affine_for((1, 1, 1), mask.shape)
    shifted[:3, 3] = 500.0  # far away: cannot be reconciled with its image
    save(cohort / "P200" / "t1_mask.nii.gz", mask, shifted)
    summary = prepare_mri(cohort, labels, tmp_path / "out", modalities=("t1",), workers=1, progress=False)
    reasons = {s["patient"]: s["reason"] for s in summary["modalities"]["t1"]["skipped"]}
    assert "1 NaN or inf voxels" in reasons["P000"]
    assert "unreadable image" in reasons["P100"] and "P100/t1.nii.gz" in reasons["P100"]
    assert "does not overlap the image" in reasons["P200"]
    with pytest.raises(ProbebenchError, match="P000: .*NaN"):
        prepare_mri(cohort, labels, tmp_path / "strict", modalities=("t1",), workers=1, progress=False, strict=True)


def test_unknown_grade_and_missing_cohort_are_errors(tmp_path):
    cohort, labels = make_cohort(tmp_path, n_per_grade=1, modalities=("t1",))
    labels.write_text("patient_id,grade\nP000,2\nP100,grade five\n")
    with pytest.raises(ProbebenchError, match=r"labels.csv, line 3: grade 'grade five' is not a WHO grade"):
        prepare_mri(cohort, labels, tmp_path / "out", modalities=("t1",), progress=False)
    with pytest.raises(ProbebenchError, match="cohort folder not found"):
        prepare_mri(tmp_path / "nope", labels, tmp_path / "out", progress=False)


def test_4d_first_volume_when_allowed_and_brats_layout(tmp_path):
    cohort, labels = make_cohort(tmp_path, n_per_grade=2, modalities=("t1", "t2"), layout="brats")
    data, _ = volume_and_mask()
    save(cohort / "P000" / "P000_t1.nii.gz", np.stack([data, data], -1), affine_for((1, 1, 1), data.shape))
    summary = prepare_mri(cohort, labels, tmp_path / "out", modalities=("t1", "t2"), layout="brats",
                          allow_4d=True, workers=1, progress=False)
    t1 = summary["modalities"]["t1"]
    assert not t1["skipped"] and any("4D image, first volume used" in n["note"] for n in t1["notes"])
    # one shared seg file, on the t1 grid, serves t2 too (resampled onto the t2 grid)
    assert not summary["modalities"]["t2"]["skipped"]
    assert read_manifest(tmp_path / "out" / "t2" / "manifest.csv")


def test_prepare_then_extract_fit_report_on_t1(tmp_path):
    from typer.testing import CliRunner

    from probebench.cli import app

    cohort, labels = make_cohort(tmp_path, n_per_grade=3, modalities=("t1",))
    runner = CliRunner()
    data = tmp_path / "data"
    res = runner.invoke(app, ["prepare-mri", "--cohort", str(cohort), "--labels", str(labels), "--out", str(data),
                              "--modalities", "t1", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "Tables I and II" in res.output and "probebench extract --model dinov2_b --dataset t1" in res.output
    common = ["--model", "resnet50", "--dataset", "t1", "--data-root", str(data), "--weights", "random",
              "--resize", "40", "--crop", "32"]
    assert runner.invoke(app, ["extract", *common, "--workers", "0"]).exit_code == 0
    assert runner.invoke(app, ["fit", *common, "--epochs", "3"]).exit_code == 0
    res = runner.invoke(app, ["report", "--format", "md", "--level", "patient"])
    assert res.exit_code == 0 and "| t1 | resnet50 † | Y |" in res.output and "[CI by patient]" in res.output


def test_a_modality_without_usable_volumes_leaves_the_others_prepared(tmp_path):
    """Every t2 volume is 4D: t1 is still written, t2 is named with the reason and the flag that takes the first
    volume; the same reason for several patients is said once."""
    from probebench.data.mri import render_summary

    cohort, labels = make_cohort(tmp_path, n_per_grade=2, modalities=("t1", "t2"))
    for pid in [p.name for p in cohort.iterdir()]:
        data, _ = volume_and_mask((64, 64, 6), radius=10.0)
        save(cohort / pid / "t2.nii.gz", np.stack([data, data], -1), affine_for((0.5, 0.5, 3.0), data.shape))
    summary = prepare_mri(cohort, labels, tmp_path / "out", modalities=("t1", "t2"), workers=1, progress=False)
    assert list(summary["modalities"]) == ["t1"] and read_manifest(tmp_path / "out" / "t1" / "manifest.csv")
    assert not (tmp_path / "out" / "t2").exists()
    reasons = {s["reason"] for s in summary["modalities_without_volumes"]["t2"]}
    assert reasons == {"t2.nii.gz: 4D image with 2 volumes (prepare-mri --allow-4d, or allow_4d = true in the "
                       "spec's [mri], takes the first)"}
    text = render_summary(summary)
    assert "t2: no usable volume, not written" in text and text.count("4D image with 2 volumes") == 1
    assert "6 patients (P000, P001, P100, …): t2.nii.gz: 4D image" in text
    with pytest.raises(ProbebenchError, match=r"no usable volume in .* for any modality; t2: P000: t2.nii.gz: 4D"):
        prepare_mri(cohort, labels, tmp_path / "out2", modalities=("t2",), workers=1, progress=False)
