"""The public releases as released, hospital pixel formats, and bad data that must name the file.

Fixtures reproduce each release's quirks (ids numbered per shipped split, ISIC lesion groupings, the
site's and Dataverse's folder names, clutter, Excel's byte-order mark); pixel values are checked
against closed forms and against pydicom's own LUT functions, never against the code under test.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from probebench.features.cache import read_features
from probebench.cli import app
from probebench.data.datasets import load_manifest
from probebench.errors import ProbebenchError
from probebench.features.extract import extract
from probebench.features.spec import resolve_job
from probebench.train.fit import fit
from probebench.features.images import load_image
from probebench.data.pixels import PixelRules, read_dicom
from probebench.report.tables import collect_rows

from conftest import TINY_SPEC, make_chest_xray, write_dicom, write_image, write_spec

OPTS = dict(weights="random", resize=40, crop=32)
RUN = dict(workers=0, progress=False)


def assert_group_disjoint(m):
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(m.groups[m.splits == a]) & set(m.groups[m.splits == b]), (a, b)


# ---------------------------------------------------------------- chest X-ray: ids numbered per shipped split

def test_chest_xray_ids_repeat_across_shipped_splits_and_still_load(tmp_path, capsys):
    make_chest_xray(tmp_path / "data")
    m = load_manifest("chest_xray", tmp_path / "data")
    # person1..3, IM-0001..3 and NORMAL2-IM-0001..3 exist in train and in test: 9 ids, different children
    assert m.shipped_overlap["count"] == 9 and m.shipped_overlap["scope"] == "split"
    assert "IM-0001 (test/train)" in m.shipped_overlap["examples"]
    by_id = dict(zip(m.sample_ids, m.groups))
    assert by_id["train/PNEUMONIA/person1_bacteria_3.jpeg"] == "train/person1"
    assert by_id["test/PNEUMONIA/person1_virus_3.jpeg"] == "test/person1"
    # the val folder was cut from train and shares its numbering: the same patient as train's IM-0001
    assert by_id["val/NORMAL/IM-0001-0002.jpeg"] == by_id["train/NORMAL/IM-0001-0001.jpeg"] == "train/IM-0001"
    assert_group_disjoint(m)  # the val split probebench carves never splits a patient
    assert not any("chest_xray/chest_xray" in p for p in m.paths)  # the zip's nested copy is never read
    err = capsys.readouterr().err
    assert err.count("repeat across the shipped splits") == 1
    load_manifest("chest_xray", tmp_path / "data")
    assert "repeat across" not in capsys.readouterr().err  # said once per process


def test_global_ids_in_two_shipped_splits_stay_a_loud_error(tmp_path):
    make_chest_xray(tmp_path / "data")
    text = (Path(__file__).parents[1] / "configs" / "datasets" / "chest_xray.toml").read_text()
    spec = write_spec(tmp_path / "cxr_global.toml", text.replace('group_scope = "split"', 'group_scope = "global"'))
    with pytest.raises(ProbebenchError, match=r"9 patient\(s\) sit in more than one shipped split.*group_scope"):
        load_manifest(str(spec), tmp_path / "data")


def test_datasets_check_reports_repeats_and_where_each_dataset_was_found(tmp_path):
    make_chest_xray(tmp_path / "data")
    res = CliRunner().invoke(app, ["datasets", "--check", "--data-root", str(tmp_path / "empty"),
                                   "--data-root", str(tmp_path / "data")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"found in {tmp_path / 'data'}" in res.output
    assert "9 patient id(s) in more than one shipped split (ids numbered per shipped split" in res.output


# ---------------------------------------------------------------- HAM10000 + ISIC 2018 as the ISIC site ships it

def make_isic_release(root: Path, groupings: bool = True, bom: bool = False) -> Path:
    """HAM10000 train (two image folders) and the ISIC 2018 test set as its zips unpack:
    ``ISIC2018_Task3_Test_Input/`` and ``ISIC2018_Task3_Test_GroundTruth/…csv``, with lesion groupings."""
    base = root / "HAM10000"
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for i in range(42):
        image_id = f"ISIC_{i:07d}"
        write_image(base / f"HAM10000_images_part_{1 + (i >= 21)}" / f"{image_id}.jpg", seed=i, size=8, mode="RGB")
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image_id, "dx": classes[(i // 2) % 7],
                     "dx_type": "histo", "age": "50.0", "sex": "male", "localization": "back", "dataset": "vidir_modern"})
    with (base / "HAM10000_metadata.csv").open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    gt = base / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    gt.parent.mkdir(parents=True)
    cols = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    with gt.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image"] + cols)
        for i in range(14):
            write_image(base / "ISIC2018_Task3_Test_Input" / f"ISIC_{100 + i:07d}.jpg", seed=i, size=8, mode="RGB")
            w.writerow([f"ISIC_{100 + i:07d}"] + ["1.0" if j == i % 7 else "0.0" for j in range(7)])
    for clutter in ("LICENSE.txt", "ATTRIBUTION.txt"):
        (base / "ISIC2018_Task3_Test_Input" / clutter).write_text("junk")
    if groupings:  # test lesions: pairs, one lesion (HAM_0000003) shared with the training images, one image absent
        with (base / "ISIC2018_Task3_Test_LesionGroupings.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "lesion_id", "diagnosis_confirm_type"])
            for i in range(13):
                w.writerow([f"ISIC_{100 + i:07d}", "HAM_0000003" if i == 0 else f"HAM_{9000 + i // 2:07d}", "histopathology"])
    return base


def test_isic_test_images_take_their_lesions_from_the_groupings_file(tmp_path, capsys):
    make_isic_release(tmp_path / "data")
    m = load_manifest("ham10000", tmp_path / "data")
    assert len(m) == 56 and (m.splits == "test").sum() == 14
    by_id = dict(zip(m.sample_ids, m.groups))
    assert by_id["ISIC2018_Task3_Test_Input/ISIC_0000102.jpg"] == by_id["ISIC2018_Task3_Test_Input/ISIC_0000103.jpg"]
    assert by_id["ISIC2018_Task3_Test_Input/ISIC_0000113.jpg"] == "ISIC2018_Task3_Test_Input/ISIC_0000113.jpg"
    # the lesion the challenge's test set shares with HAM10000 training images is reported, not hidden
    assert m.shipped_overlap == {"scope": "global", "count": 1, "examples": ["HAM_0000003 (test/train)"]}
    err = capsys.readouterr().err
    assert "1 lesion(s) appear in more than one shipped split, e.g. HAM_0000003" in err
    assert "1 image(s) of ISIC2018_Task3_Test_GroundTruth.csv have no lesion" in err
    junk = " ".join(m.junk)
    assert "LICENSE.txt" in junk and "ATTRIBUTION.txt" in junk


def test_missing_groupings_file_is_said_once(tmp_path, capsys):
    make_isic_release(tmp_path / "data", groupings=False)
    m = load_manifest("ham10000", tmp_path / "data")
    assert len(set(m.groups[m.splits == "test"].tolist())) == 14  # each test image its own lesion
    load_manifest("ham10000", tmp_path / "data")
    err = capsys.readouterr().err
    assert err.count("ISIC2018_Task3_Test_LesionGroupings.csv not found") == 1


def test_excel_csv_with_byte_order_mark_loads(tmp_path):
    make_isic_release(tmp_path / "data", bom=True)
    assert (tmp_path / "data" / "HAM10000" / "HAM10000_metadata.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    m = load_manifest("ham10000", tmp_path / "data")
    assert len(m) == 56 and set(m.groups[m.splits == "train"].tolist()) <= {f"HAM_{i:07d}" for i in range(21)}


def test_missing_column_names_the_file_the_column_and_what_is_there(tmp_path):
    base = make_isic_release(tmp_path / "data")
    meta = base / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace("lesion_id,", "lesion,", 1))
    res = CliRunner().invoke(app, ["extract", "-m", "resnet50", "-d", "ham10000", "--data-root",
                                   str(tmp_path / "data"), "--weights", "random"], env={"COLUMNS": "300"})
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "HAM10000_metadata.csv: missing column(s) 'lesion_id' (group_column)" in msg
    assert "the file has columns ['lesion', 'image_id', 'dx'" in msg and "Traceback" not in res.output


@pytest.mark.parametrize("where", ["other_part", "other_suffix"])
def test_an_image_id_found_twice_names_both_files(tmp_path, where):
    base = make_isic_release(tmp_path / "data")
    copy = (base / "HAM10000_images_part_2" / "ISIC_0000005.jpg" if where == "other_part"
            else base / "HAM10000_images_part_1" / "ISIC_0000005.png")
    write_image(copy, seed=5, size=8, mode="RGB")
    with pytest.raises(ProbebenchError, match=r"image id 'ISIC_0000005' is found twice: .*ISIC_0000005.jpg and "
                                              rf".*{copy.parent.name}/{copy.name}"):
        load_manifest("ham10000", tmp_path / "data")


# ---------------------------------------------------------------- iChallenge-AMD and datasets too small for a spec

def make_amd(root: Path, n_amd: int = 89, n_non: int = 311) -> Path:
    base = root / "iChallenge-AMD" / "Training400"
    for i in range(n_amd):
        write_image(base / "AMD" / f"A{i + 1:04d}.jpg", seed=i, size=8, mode="RGB")
    for i in range(n_non):
        write_image(base / "Non-AMD" / f"N{i + 1:04d}.jpg", seed=i + 1, size=8, mode="RGB")
    (base / "AMD" / "Fovea_location.xlsx").write_bytes(b"junk")
    return base


def test_dataset_too_small_for_its_spec_names_dataset_key_and_counts(tmp_path):
    make_amd(tmp_path / "data", n_amd=10, n_non=30)
    res = CliRunner().invoke(app, ["datasets", "--check", "--data-root", str(tmp_path / "data")],
                             env={"COLUMNS": "400"})
    with pytest.raises(ProbebenchError) as info:
        load_manifest("ichallenge_amd", tmp_path / "data")
    msg = str(info.value)
    assert "dataset 'ichallenge_amd' is too small for split.test_count = 155" in msg
    assert "cannot hold out 155 of 40 groups" in msg and "{'AMD': 10, 'Non-AMD': 30}" in msg
    assert "ichallenge_amd.toml" in msg and "lower split.test_count" in msg
    assert "too small for split.test_count" in " ".join(res.output.split())


# ---------------------------------------------------------------- the three releases, extract -> fit -> report

@pytest.mark.parametrize("dataset", ["chest_xray", "ham10000", "ichallenge_amd"])
def test_public_releases_run_extract_fit_report(tmp_path, dataset):
    {"chest_xray": make_chest_xray, "ham10000": make_isic_release, "ichallenge_amd": make_amd}[dataset](
        tmp_path / "data")
    opts = dict(data_root=tmp_path / "data", cache_dir=tmp_path / "c", **OPTS)
    store = extract("resnet50", dataset, batch_size=16, chunk_size=64, **opts, **RUN)
    feats = read_features(store)
    assert np.isfinite(feats.features).all()
    if dataset == "chest_xray":
        assert feats.attrs["group_scope"] == "split" and feats.attrs["shipped_overlap"]["count"] == 9
    if dataset == "ham10000":
        assert feats.attrs["shipped_overlap"]["examples"] == ["HAM_0000003 (test/train)"]
    fit("resnet50", dataset, runs_dir=tmp_path / "runs", epochs=2, progress=False, **opts)
    rows = collect_rows(tmp_path / "runs")
    assert len(rows) == 1 and rows[0].dataset == dataset
    assert rows[0].n_test == int((feats.split == "test").sum())
    if dataset != "ichallenge_amd":  # patients / lesions are resampled as clusters
        assert rows[0].unit == {"chest_xray": "patient", "ham10000": "lesion"}[dataset]


# ---------------------------------------------------------------- several data roots

def test_several_data_roots_first_that_has_the_dataset_wins(tmp_path, monkeypatch, tiny):
    spec, root = tiny
    other = tmp_path / "downloads"
    (other / "tiny").mkdir(parents=True)  # an empty copy in an earlier root would win: it must be the first only
    monkeypatch.setenv("PROBEBENCH_DATA", f"{tmp_path / 'prepared'}:{root}")
    m = load_manifest(str(spec))
    assert m.data_root == root and len(m) == 40
    m2 = load_manifest(str(spec), [tmp_path / "nothing", root])
    assert m2.data_root == root and m2.hash() == m.hash()
    with pytest.raises(ProbebenchError, match=r"tried .*nothing/tiny, .*also/tiny; roots from --data-root"):
        load_manifest(str(spec), [tmp_path / "nothing", tmp_path / "also"])
    res = CliRunner().invoke(app, ["extract", "-m", "resnet50", "-d", str(spec), "--data-root", str(tmp_path / "x"),
                                   "--data-root", str(root), "--weights", "random", "--resize", "40", "--crop", "32",
                                   "--workers", "0", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- more than 8 bits

def test_intensity_rules_give_the_closed_form_pixel_values(tmp_path):
    x = np.arange(10000, dtype=np.uint16).reshape(100, 100)  # 0 .. 9999, 16-bit PNG
    path = tmp_path / "x.png"
    Image.fromarray(x).save(path)
    f = x.astype(np.float64)

    def expect(lo, hi):
        return np.floor((np.clip(f, lo, hi) - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)

    # np.percentile (linear) of 0..N-1 at p is p/100 * (N-1): written out, not computed by the code under test
    cases = {PixelRules(): expect(0, 9999),
             PixelRules(intensity="percentile", percentiles=(0.5, 99.5)): expect(0.005 * 9999, 0.995 * 9999),
             PixelRules(intensity="bits", bits=14): expect(0, 16383),
             PixelRules(intensity="full16"): expect(0, 65535)}
    for rules, expected in cases.items():
        got = np.asarray(load_image(path, rules=rules))
        assert got.dtype == np.uint8 and np.array_equal(got, expected), rules
    eight = tmp_path / "y.png"
    Image.fromarray((x % 256).astype(np.uint8)).save(eight)
    for rules in cases:  # 8-bit images never pass through the rules
        assert np.array_equal(np.asarray(load_image(eight, rules=rules)), x % 256)


def test_a_12_bit_image_in_16_bits_darkness_is_gone_under_the_default(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("eight", "twelve"):
        write_spec(tmp_path / f"{name}.toml", f'kind = "folder"\nroot = "{name}"\nclasses = ["a", "b"]\n'
                   '[split]\ntest_fraction = 0.3\n')
    for c in ("a", "b"):
        for i in range(6):
            a8 = rng.integers(0, 256, (48, 48)).astype(np.uint8)
            a8[0, 0], a8[0, 1] = 0, 255
            (tmp_path / "data" / "eight" / c).mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / "twelve" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a8).save(tmp_path / "data" / "eight" / c / f"{i}.png")
            a12 = np.floor(a8.astype(np.float64) * 4095 / 255 + 0.5).astype(np.uint16)  # a 12-bit radiograph
            Image.fromarray(a12).save(tmp_path / "data" / "twelve" / c / f"{i}.png")
    feats = {}
    for name in ("eight", "twelve"):
        store = extract("resnet50", str(tmp_path / f"{name}.toml"), data_root=tmp_path / "data",
                        cache_dir=tmp_path / "c", **OPTS, **RUN)
        feats[name] = read_features(store).features
    a, b = feats["eight"], feats["twelve"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999
    # the old rule (x / 257) crushed it: 0-4095 became 0-16 of 255
    crushed = np.asarray(load_image(tmp_path / "data" / "twelve" / "a" / "0.png", rules=PixelRules(intensity="full16")))
    assert crushed.max() <= 16


def test_pixel_rules_are_part_of_the_cache_key(tiny, tmp_path):
    spec, root = tiny
    text = Path(spec).read_text()
    other = write_spec(tmp_path / "tiny_bits.toml", text + '\n[pixels]\nintensity = "bits"\nbits = 12\n')
    a = resolve_job("resnet50", str(spec), data_root=root, **OPTS)
    b = resolve_job("resnet50", str(other), data_root=root, **OPTS)
    assert b.manifest.pixels == PixelRules(intensity="bits", bits=12)
    assert a.request.manifest_hash != b.request.manifest_hash and a.request.key != b.request.key
    bad = write_spec(tmp_path / "tiny_bad.toml", text + '\n[pixels]\nintensity = "bits"\n')
    with pytest.raises(ProbebenchError, match=r"tiny_bad.toml: \[pixels\] intensity = \"bits\" needs bits = N"):
        load_manifest(str(bad), root)


# ---------------------------------------------------------------- DICOM

def window_linear(x, c, w):
    """PS3.3 C.11.2.1.2.1, written out case by case."""
    out = np.empty_like(x, dtype=np.float64)
    low, high = x <= c - 0.5 - (w - 1) / 2, x > c - 0.5 + (w - 1) / 2
    out[low], out[high] = 0.0, 255.0
    mid = ~(low | high)
    out[mid] = ((x[mid] - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.floor(out + 0.5).astype(np.uint8)


def test_dicom_rescale_then_window_matches_the_standard_and_pydicom(tmp_path):
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    raw = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60)  # 12-bit stored values 0..3780
    path = write_dicom(tmp_path / "a.dcm", raw, bits_stored=12, slope=2.0, intercept=-1024.0, center=1000, width=2000)
    hu = raw * 2.0 - 1024.0
    got = read_dicom(path)
    assert np.array_equal(got, window_linear(hu, 1000, 2000))
    ds = pydicom.dcmread(path)  # pydicom's own window maps to the rescaled range of the stored bits
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = -1024.0, 4095 * 2.0 - 1024.0
    assert np.abs(got.astype(float) - (ref - lo) / (hi - lo) * 255).max() <= 0.5 + 1e-9
    # the window ignored on request: the dataset's intensity rule (min-max of the rescaled values)
    plain = read_dicom(path, PixelRules(dicom_window=False))
    assert np.array_equal(plain, np.floor((hu - hu.min()) / (hu.max() - hu.min()) * 255 + 0.5))


def test_dicom_monochrome1_signed_eight_bit_and_voi_lut(tmp_path):
    raw = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60)
    normal = read_dicom(write_dicom(tmp_path / "m2.dcm", raw, bits_stored=12))
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", raw, bits_stored=12, photometric="MONOCHROME1"))
    assert np.array_equal(normal, np.floor(raw / 3780 * 255 + 0.5)) and np.array_equal(inverted, 255 - normal)
    signed = np.arange(-32, 32, dtype=np.int16).reshape(8, 8) * 100  # CT-like negative values
    got = read_dicom(write_dicom(tmp_path / "s.dcm", signed))
    assert np.array_equal(got, np.floor((signed + 3200.0) / 6300 * 255 + 0.5))
    eight = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    assert np.array_equal(read_dicom(write_dicom(tmp_path / "e.dcm", eight)), eight)  # kept as stored
    from pydicom import dcmread, dcmwrite
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dcmread(write_dicom(tmp_path / "lut.dcm", (np.arange(64, dtype=np.uint16) % 4).reshape(8, 8)))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first input 0, 8-bit output
    item.LUTData = np.array([0, 10, 200, 255], dtype=np.uint16).tobytes()
    ds.VOILUTSequence = Sequence([item])
    dcmwrite(tmp_path / "lut.dcm", ds)
    lut = read_dicom(tmp_path / "lut.dcm")
    assert np.array_equal(lut, np.array([0, 10, 200, 255])[(np.arange(64) % 4).reshape(8, 8)])


def test_dicom_that_cannot_be_read_gets_a_clear_error(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    frames = write_dicom(tmp_path / "multi.dcm", np.zeros((2, 8, 8), np.uint16), frames=2)
    with pytest.raises(ValueError, match=r"multi-frame DICOM \(2 frames\).*\[pixels\] dicom_frame = \"middle\""):
        read_dicom(frames)
    compressed = write_dicom(tmp_path / "j2k.dcm", np.zeros((8, 8), np.uint16), syntax=JPEG2000Lossless)
    with pytest.raises(ValueError, match=r"compressed as JPEG 2000.*pip install \"probebench\[dicom\]\""):
        read_dicom(compressed)
    (tmp_path / "text.dcm").write_text("not a dicom")
    with pytest.raises(ValueError, match=r"not a DICOM file"):
        read_dicom(tmp_path / "text.dcm")


def test_pydicoms_own_files_palette_colour_multi_frame_undecodable_and_damaged_headers():
    """Files from pydicom's own test set, as real scanners and PACS wrote them: PALETTE COLOR through its lookup
    tables, a 2-frame RLE file by the spec's frame choice, JPEG-LS without a decoder (the error names the extra),
    and a header with an invalid value (no pydicom warning printed; a clear error)."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    palette = get_testdata_file("examples_palette.dcm")
    ds = pydicom.dcmread(palette)
    lut = apply_color_lut(ds.pixel_array, ds).astype(np.float64)  # 16-bit table entries (descriptor [256, 0, 16])
    got = read_dicom(palette)
    assert got.shape == (*ds.pixel_array.shape, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.rint(lut * 255 / 65535).astype(np.uint8))
    two = get_testdata_file("SC_rgb_rle_2frame.dcm")
    frames = pydicom.dcmread(two).pixel_array  # (2, H, W, 3)
    for choice, i in (("first", 0), ("middle", 1), (1, 1)):
        assert np.array_equal(read_dicom(two, PixelRules(dicom_frame=choice)), frames[i])
    with pytest.raises(ValueError, match=r"dicom_frame 2 is outside this file's 2 frames"):
        read_dicom(two, PixelRules(dicom_frame=2))
    with pytest.raises(ValueError, match=r"JPEG-LS Lossless.*install a decoder: pip install \"probebench\[dicom\]\""):
        read_dicom(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning reaching the caller fails the test
        with pytest.raises(ValueError, match=r"NumberOfFrames '1A' is not a number"):
            read_dicom(get_testdata_file("badVR.dcm"))


def test_the_frame_rule_is_checked_and_leaves_older_manifests_unchanged():
    assert PixelRules().as_dict() == {"intensity": "minmax", "percentiles": [0.5, 99.5], "bits": None,
                                      "dicom_window": True}  # as before dicom_frame existed: same manifest hashes
    assert PixelRules.from_spec({"dicom_frame": "middle"}, "s.toml").as_dict()["dicom_frame"] == "middle"
    with pytest.raises(ProbebenchError, match=r"s.toml: \[pixels\] dicom_frame must be"):
        PixelRules.from_spec({"dicom_frame": "last"}, "s.toml")


# the tiny spec's grouping and splits, for an X-ray folder of DICOM or 16-bit PNG files
FOLDER_SPEC = TINY_SPEC.replace('name = "tiny"\n', "").replace('"tiny"', '"{root}"').replace(
    '["a", "b"]', '["normal", "abnormal"]')


@pytest.mark.parametrize("fmt", ["dcm", "png16"])
def test_dicom_and_16_bit_folders_run_extract_fit_report(tmp_path, fmt):
    rng = np.random.default_rng(1)
    for c, cls in enumerate(["normal", "abnormal"]):
        for p in range(6):
            for k in range(2):
                arr = (rng.integers(0, 2048, (40, 40)) + 1500 * c).astype(np.uint16)
                path = tmp_path / "data" / "xr" / cls / f"p{c}{p}_{k}.{fmt[:3]}"
                if fmt == "dcm":
                    write_dicom(path, arr, bits_stored=12, photometric="MONOCHROME1" if k else "MONOCHROME2")
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(path)
    spec = write_spec(tmp_path / "xr.toml", FOLDER_SPEC.replace("{root}", "xr"))
    opts = dict(data_root=tmp_path / "data", cache_dir=tmp_path / "c", **OPTS)
    feats = read_features(extract("resnet50", str(spec), **opts, **RUN))
    assert len(feats.features) == 24 and np.isfinite(feats.features).all() and feats.attrs["pixels"]["intensity"] == "minmax"
    fit("resnet50", str(spec), runs_dir=tmp_path / "runs", epochs=2, progress=False, **opts)
    assert collect_rows(tmp_path / "runs")[0].dataset == "xr"


# ---------------------------------------------------------------- HDF5 NaN pixels

def test_hdf5_nan_pixel_names_the_index_or_is_skipped(tmp_path):
    import h5py

    path = tmp_path / "data" / "slices" / "slices.h5"
    path.parent.mkdir(parents=True)
    x = np.random.default_rng(0).random((24, 20, 20)).astype(np.float32)
    x[5, 3, 4] = np.nan
    x[7, 0, 0] = np.inf
    with h5py.File(path, "w") as fh:
        fh["x"], fh["y"], fh["pid"] = x, np.arange(24) % 2, np.array([f"p{i // 2}".encode() for i in range(24)])
    spec = write_spec(tmp_path / "slices.toml", 'kind = "hdf5"\nroot = "slices"\nclasses = ["a", "b"]\n[hdf5]\n'
                      'file = "slices.h5"\nimages = "x"\nlabels = "y"\ngroups = "pid"\nfloat_rule = "unit"\n'
                      '[split]\ntest_fraction = 0.3\n')
    opts = dict(data_root=tmp_path / "data", cache_dir=tmp_path / "c", **OPTS, **RUN)
    with pytest.raises(ProbebenchError, match=r"slices.h5::x::5::unit: ValueError: 1 non-finite pixel value\(s\) "
                                              r"\(NaN or inf\), the first at \(3, 4\)"):
        extract("resnet50", str(spec), **opts)
    feats = read_features(extract("resnet50", str(spec), skip_bad=True, force=True, **opts))
    assert len(feats.features) == 22 and np.isfinite(feats.features).all()
    skipped = read_features(extract("resnet50", str(spec), skip_bad=True, **opts)).attrs["skipped"]
    assert [s["index"] for s in skipped] == [5, 7]


# ---------------------------------------------------------------- each model's own preprocessing

def write_snapshot(folder: Path, preprocessor: dict | None) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": 384,
                                                    "num_hidden_layers": 12, "num_attention_heads": 6}))
    save_file({"embeddings.cls_token": torch.zeros(1, 1, 384)}, str(folder / "model.safetensors"))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


MEDICAL_PREPROCESSOR = {"crop_size": {"height": 28, "width": 28}, "do_center_crop": True, "do_normalize": True,
                        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                        "image_std": [0.25, 0.25, 0.25], "resample": 2, "rescale_factor": 0.00392156862745098,
                        "size": {"shortest_edge": 40}, "image_processor_type": "BitImageProcessor"}


def test_hugging_face_snapshot_brings_its_own_preprocessing(tiny, tmp_path):
    spec, root = tiny
    snap = write_snapshot(tmp_path / "med-dinov2", MEDICAL_PREPROCESSOR)
    job = resolve_job("dinov2_s", str(spec), data_root=root, weights=str(snap))
    assert job.request.preprocessing == {"resize": 40, "crop": 28, "interpolation": "bilinear", "mean": [0.5] * 3,
                                         "std": [0.25] * 3, "draft": False,
                                         "crop_offset": "floor"}  # transformers' centre crop: (size - crop) // 2
    plain = resolve_job("dinov2_s", str(spec), data_root=root,
                        weights=str(write_snapshot(tmp_path / "plain", None)))
    assert plain.request.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert plain.request.preprocessing["interpolation"] == "bicubic"
    # the user's --mean/--std win over any model's, and change the cache key
    over = resolve_job("dinov2_s", str(spec), data_root=root, weights=str(snap), mean=(0.1,), std=(0.2, 0.3, 0.4))
    assert over.request.preprocessing["mean"] == [0.1] * 3 and over.request.preprocessing["std"] == [0.2, 0.3, 0.4]
    assert len({job.request.key, plain.request.key, over.request.key}) == 3
    res = CliRunner().invoke(app, ["models", "--model", "dinov2_s", "--weights", str(snap)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "40/28 bilinear, mean (0.5, 0.5, 0.5), std (0.25, 0.25, 0.25)" in res.output
    assert "[preprocessor_config.json]" in res.output


def test_mean_std_override_reaches_the_pixels(tiny, tmp_path):
    """A feature extracted with --mean/--std equals the model applied to images normalised by hand."""
    import torch

    from probebench.models.registry import create_model

    spec, root = tiny
    feats = read_features(extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c",
                                  mean=(0.5,), std=(0.25,), **OPTS, **RUN))
    sid = feats.sample_ids[0]
    img = Image.open(root / "tiny" / sid).convert("L").resize((40, 40), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)[4:36, 4:36] / 255.0
    x = torch.from_numpy((arr - 0.5) / 0.25).expand(1, 3, 32, 32)
    with torch.inference_mode():
        ref = create_model("resnet50", "random", img_size=32)(x).numpy()[0]
    assert np.allclose(ref, feats.features[0], atol=2e-3 * np.abs(ref).max())


def test_study_file_accepts_mean_std_and_several_data_roots(tmp_path):
    from probebench.study import load_study

    path = write_spec(tmp_path / "s.toml", '[study]\ndatasets = ["t1"]\nmodels = ["dinov2_s"]\n'
                      'data_root = ["prepared", "downloads"]\n[extract]\nmean = [0.5]\nstd = [0.25]\n')
    study = load_study(path)
    assert study.data_roots() == [tmp_path / "prepared", tmp_path / "downloads"]  # relative to the study file
    assert study.extract["mean"] == [0.5]


def test_a_global_group_in_a_shipped_test_split_and_the_unsplit_pool_is_refused(tmp_path):
    for split, pids in (("pool", (1, 2, 3, 4, 5)), ("test", (5, 6))):
        for c in ("a", "b"):
            for p in pids:
                write_image(tmp_path / "data" / "mix" / split / c / f"p{p}_{c}.png", seed=p)
    spec = write_spec(tmp_path / "mix.toml", 'kind = "folder"\nroot = "mix"\nclasses = ["a", "b"]\n[folder]\n'
                      'split_dirs = { pool = ["pool"], test = ["test"] }\ngroup_regex = \'^(?P<group>p\\d+)_\'\n')
    with pytest.raises(ProbebenchError, match=r"1 group\(s\) sit in more than one shipped split.*p5 \(test/unsplit\)"):
        load_manifest(str(spec), tmp_path / "data")


def test_bad_mean_std_values_are_refused_with_the_option_named():
    from probebench.models.config import Preprocessing, with_normalization

    assert with_normalization(Preprocessing(), 0.5, [2]).mean == (0.5, 0.5, 0.5)  # a bare number in a study file
    for mean, std, message in (((0.1, 0.2), None, r"--mean needs 1 or 3 numbers"),
                               (None, (0.2, 0.0, 0.2), r"--std values must be positive"),
                               (("x",), None, r"--mean \('x',\): expected 1 or 3 numbers"),
                               ((float("nan"),), None, r"--mean values must be finite")):
        with pytest.raises(ProbebenchError, match=message):
            with_normalization(Preprocessing(), mean, std)
    res = CliRunner().invoke(app, ["models", "--model", "resnet50", "--mean", "0.5,abc"])
    assert res.exit_code == 2 and "--mean '0.5,abc': expected numbers" in res.output


def test_extract_says_each_kind_of_decoder_warning_once_with_its_count(tiny, tmp_path, capsys):
    """Two files from pydicom's test set that decode with warnings (excess padding; explicit VR announced, implicit
    found), the first copied twice: each kind said once, with how many files, and recorded in the store."""
    import shutil

    import zarr
    from pydicom.data import get_testdata_file

    spec, root = tiny
    padded, implicit = get_testdata_file("MR_small_padded.dcm"), get_testdata_file("SC_rgb_jpeg.dcm")
    shutil.copy(padded, root / "tiny" / "a" / "p000_9.dcm")
    shutil.copy(padded, root / "tiny" / "b" / "p100_9.dcm")
    shutil.copy(implicit, root / "tiny" / "a" / "p001_9.dcm")
    capsys.readouterr()
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", workers=0, progress=False,
                    **OPTS)
    said = capsys.readouterr().err
    assert said.count("excess padding") == 1 and said.count("using implicit VR") == 1, said
    assert re.search(r"note: the decoder warned for 2 image\(s\), read nonetheless: The pixel data is N bytes long, "
                     r"which indicates it contains N bytes of excess padding", said), said
    recorded = zarr.open_group(str(store), mode="r").attrs["decode_warnings"]
    assert sorted(v["files"] for v in recorded.values()) == [1, 2]
    assert "UserWarning" not in said  # nothing raw from pydicom reaches the terminal
