"""Dataset kinds, the three public layouts built synthetically, junk handling, splits and errors."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probebench.data.datasets import list_specs, load_manifest
from probebench.errors import ProbebenchError
from probebench.features.images import load_rgb
from probebench.data.splits import check_disjoint, stratified_group_holdout

from conftest import TINY_SPEC, make_chest_xray, write_image, write_spec


def assert_group_disjoint(m):
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(m.groups[m.splits == a]) & set(m.groups[m.splits == b]), (a, b)


def test_shipped_specs_are_listed():
    assert {"chest_xray", "ichallenge_amd", "ham10000"} <= set(list_specs())


def test_chest_xray_layout(tmp_path):
    make_chest_xray(tmp_path / "data")
    m = load_manifest("chest_xray", tmp_path / "data")
    assert m.classes == ["NORMAL", "PNEUMONIA"]
    assert len(m) == 2 * 2 * (6 + 1 + 3)
    assert (m.splits == "test").sum() == 12
    assert sum(m.counts()["train"]) + sum(m.counts()["val"]) == 28  # shipped val joins the training pool
    # patients parsed from file names and numbered per shipped split: test/person1 is not train/person1
    assert set(m.groups[m.splits == "test"]) == {f"test/person{p}" for p in range(1, 4)} | {
        f"test/IM-{p:04d}" for p in range(1, 4)} | {f"test/NORMAL2-IM-{p:04d}" for p in range(1, 4)}
    assert_group_disjoint(m)
    assert (m.splits == "val").any()
    junk = " ".join(m.junk)
    assert len(m.junk) == 4 and ".DS_Store" in junk and "Thumbs.db" in junk and "__MACOSX" in junk
    assert not any(p.endswith((".DS_Store", ".db", ".xlsx")) for p in m.paths)


def test_ichallenge_amd_study_split(tmp_path):
    base = tmp_path / "data" / "iChallenge-AMD" / "Training400"
    for i in range(89):
        write_image(base / "AMD" / f"A{i:04d}.jpg", seed=i, size=8, mode="RGB")
    for i in range(311):
        write_image(base / "Non-AMD" / f"N{i:04d}.jpg", seed=i + 1, size=8, mode="RGB")
    (base / "AMD" / "Fovea_location.xlsx").write_bytes(b"junk")
    m = load_manifest("ichallenge_amd", tmp_path / "data")
    assert (m.splits == "test").sum() == 155
    assert ((m.splits == "train") | (m.splits == "val")).sum() == 245
    test_amd = (m.labels[m.splits == "test"] == 0).sum()
    assert test_amd in (34, 35)  # 155 * 89 / 400 = 34.5: stratified
    assert m.junk and m.junk[0].endswith("Fovea_location.xlsx")
    again = load_manifest("ichallenge_amd", tmp_path / "data")
    assert np.array_equal(m.splits, again.splits) and m.hash() == again.hash()  # seeded


def make_ham10000(root: Path) -> Path:
    base = root / "HAM10000"
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for i in range(42):
        lesion = f"HAM_{i // 2:07d}"  # two images per lesion
        image_id = f"ISIC_{i:07d}"
        part = 1 if i < 21 else 2
        write_image(base / f"HAM10000_images_part_{part}" / f"{image_id}.jpg", seed=i, size=8, mode="RGB")
        rows.append({"lesion_id": lesion, "image_id": image_id, "dx": classes[(i // 2) % 7], "dx_type": "histo",
                     "age": "50.0", "sex": "male", "localization": "back"})
    with (base / "HAM10000_metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    with (base / "ISIC2018_Task3_Test_GroundTruth.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image"] + cols)
        for i in range(14):
            image_id = f"ISIC_{100 + i:07d}"
            write_image(base / "ISIC2018_Task3_Test_Images" / f"{image_id}.jpg", seed=i, size=8, mode="RGB")
            w.writerow([image_id] + ["1.0" if j == i % 7 else "0.0" for j in range(7)])
    (base / "ISIC2018_Task3_Test_Images" / "LICENSE.txt").write_text("junk")
    (base / "HAM10000_images_part_1" / ".DS_Store").write_bytes(b"junk")
    return base


def test_ham10000_layout(tmp_path):
    make_ham10000(tmp_path / "data")
    m = load_manifest("ham10000", tmp_path / "data")
    assert len(m.classes) == 7 and len(m) == 56
    test = m.splits == "test"
    assert test.sum() == 14
    # one-hot ground truth: ISIC_0000100 has MEL, ISIC_0000101 NV, ...
    by_id = dict(zip(m.sample_ids, m.labels))
    assert m.classes[by_id["ISIC2018_Task3_Test_Images/ISIC_0000100.jpg"]] == "mel"
    assert m.classes[by_id["ISIC2018_Task3_Test_Images/ISIC_0000101.jpg"]] == "nv"
    assert m.classes[by_id["HAM10000_images_part_2/ISIC_0000030.jpg"]] == "bcc"  # lesion 15 -> 15 % 7 = 1
    train_val = m.groups[~test]
    assert set(np.unique(train_val)) == {f"HAM_{i:07d}" for i in range(21)}  # lesions are the groups
    assert_group_disjoint(m)
    assert len(m.junk) == 2


def test_csv_kind_with_split_column_and_onehot(tmp_path):
    root = tmp_path / "data" / "mine"
    with (root.parent.mkdir(parents=True) or (root.mkdir() or root / "labels.csv")).open("w") as fh:
        fh.write("path,group,split,cat,dog\n")
        for i in range(16):
            write_image(root / "img" / f"{i}.bmp", seed=i)
            split = "test" if i >= 12 else ("val" if i >= 10 else "train")
            fh.write(f"img/{i}.bmp,g{i // 2},{split},{int(i % 2 == 0)},{int(i % 2 == 1)}\n")
    spec = write_spec(tmp_path / "mine.toml", """
kind = "csv"
root = "mine"
classes = ["cat", "dog"]
[csv]
file = "labels.csv"
onehot_columns = { cat = "cat", dog = "dog" }
group_column = "group"
""")
    m = load_manifest(str(spec), tmp_path / "data")
    assert m.dataset == "mine"
    assert list(m.counts()["train"]) == [5, 5] and list(m.counts()["val"]) == [1, 1]
    assert m.labels[list(m.sample_ids).index("img/3.bmp")] == 1


def test_csv_label_outside_classes(tmp_path):
    root = tmp_path / "data" / "bad"
    write_image(root / "x.png", seed=0)
    (root / "m.csv").write_text("path,label,split\nx.png,zebra,train\n")
    spec = write_spec(tmp_path / "bad.toml", 'kind = "csv"\nroot = "bad"\nclasses = ["cat", "dog"]\n[csv]\nfile = "m.csv"\n')
    with pytest.raises(ProbebenchError, match=r"m.csv, line 2: label 'zebra' is not one of the classes"):
        load_manifest(str(spec), tmp_path / "data")


def test_missing_data_root_is_explained(tmp_path, tiny):
    spec, _ = tiny
    with pytest.raises(ProbebenchError, match=r"data for dataset 'tiny' not found: .*tried .*nowhere/tiny"):
        load_manifest(str(spec), tmp_path / "nowhere")


def test_unknown_dataset_lists_known():
    with pytest.raises(ProbebenchError, match=r"unknown dataset 'xray'; known datasets: .*chest_xray"):
        load_manifest("xray")


def test_empty_class_folder(tmp_path, tiny):
    spec, root = tiny
    for p in (root / "tiny" / "b").iterdir():
        p.unlink()
    (root / "tiny" / "b" / ".DS_Store").write_bytes(b"")
    with pytest.raises(ProbebenchError, match=r"class folder .*tiny/b holds no images"):
        load_manifest(str(spec), root)


def test_folder_outside_class_list(tmp_path, tiny):
    spec, root = tiny
    write_image(root / "tiny" / "c" / "p99_0.png", seed=0)
    with pytest.raises(ProbebenchError, match=r"folder 'c' is not one of the classes"):
        load_manifest(str(spec), root)


def test_unknown_spec_key_is_an_error(tmp_path):
    spec = write_spec(tmp_path / "typo.toml", "clases = []\n" + TINY_SPEC)
    with pytest.raises(ProbebenchError, match=r"typo.toml, line 1: unknown keys \['clases'\]"):
        load_manifest(str(spec), tmp_path)
    spec = write_spec(tmp_path / "typo2.toml", TINY_SPEC + "val_fractoin = 0.1\n")
    with pytest.raises(ProbebenchError, match=r"unknown keys \['val_fractoin'\] in \[split\]"):
        load_manifest(str(spec), tmp_path)


def test_tiny_splits_are_grouped_stratified_and_seeded(tiny):
    spec, root = tiny
    m = load_manifest(str(spec), root)
    assert_group_disjoint(m)
    counts = m.counts()
    assert counts["test"] == [6, 6]  # 3 of 10 patients per class, 2 images each
    assert counts["val"] == [4, 4]  # 25% of the 7 remaining patients -> 2 per class
    assert m.hash() == load_manifest(str(spec), root).hash()


def test_data_change_changes_manifest_hash(tiny):
    spec, root = tiny
    before = load_manifest(str(spec), root).hash()
    write_image(root / "tiny" / "a" / "p0_1.png", seed=123, size=30)  # same name, other content size
    assert load_manifest(str(spec), root).hash() != before


def test_check_disjoint_fails_loudly():
    with pytest.raises(ProbebenchError, match=r"1 group\(s\) sit in more than one split.*p1 \(test/train\)"):
        check_disjoint(np.array(["p1", "p1", "p2"]), np.array(["train", "test", "train"]))


def test_holdout_never_splits_a_group():
    rng = np.random.default_rng(0)
    groups = np.array([f"g{i}" for i in rng.integers(0, 40, 300)])
    labels = np.array([int(g[1:]) % 3 for g in groups])
    held = stratified_group_holdout(labels, groups, fraction=0.2, seed=5)
    assert not set(groups[held]) & set(groups[~held])
    assert 0.1 < held.mean() < 0.3


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("RGB", "jpg"), ("RGBA", "png"), ("RGB", "bmp"),
                                      ("L", "tif"), ("I;16", "png"), ("I;16", "tif"), ("P", "png")])
def test_image_modes_become_rgb(tmp_path, mode, ext):
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    if mode == "I;16":
        img = Image.fromarray(arr16)
    else:
        img = Image.fromarray((arr16 // 256).astype(np.uint8), mode="L").convert(mode)
    path = tmp_path / f"x.{ext}"
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":  # 16-bit data, default rule: per-image min-max (0 -> 0, 63000 -> 255)
        expected = np.floor(arr16 / 63000 * 255 + 0.5)
        assert np.array_equal(np.asarray(out)[..., 0], expected)


def test_grayscale_fast_path_gives_the_same_tensor_as_rgb(tmp_path):
    from probebench.features.images import load_image, make_transform
    from probebench.models.config import Preprocessing

    rng = np.random.default_rng(1)
    path = tmp_path / "x.jpg"
    Image.fromarray((rng.random((90, 120)) * 255).astype(np.uint8), mode="L").save(path)
    for interpolation in ("bilinear", "bicubic"):
        tf = make_transform(Preprocessing(resize=64, crop=56, interpolation=interpolation))
        gray = load_image(path)
        assert gray.mode == "L"
        assert torch.equal(tf(gray), tf(gray.convert("RGB")))


def test_val_unit_sample_carves_validation_by_image_and_keeps_test_disjoint(tiny):
    """The study's code split validation from training images at random: patients then straddle train and
    validation (validation optimistic). As an option only; test stays patient-disjoint, and it is said."""
    from probebench.data.datasets import load_manifest

    spec, root = tiny
    by_group = load_manifest(str(spec), root)
    by_image = load_manifest(str(spec), root, val_unit="sample")
    assert by_image.hash() != by_group.hash()
    assert np.array_equal(by_image.splits == "test", by_group.splits == "test")  # test carved the same way
    shared = set(by_image.groups[by_image.splits == "train"]) & set(by_image.groups[by_image.splits == "val"])
    assert shared  # 2 images per patient, validation drawn per image: some patients straddle
    assert not set(by_image.groups[by_image.splits == "test"]) & set(by_image.groups[by_image.splits != "test"])
    assert not set(by_group.groups[by_group.splits == "train"]) & set(by_group.groups[by_group.splits == "val"])
    assert any("val_unit = sample" in n for n in by_image.notes)
    with pytest.raises(ProbebenchError, match="val_unit 'patient' is not one of group, sample"):
        load_manifest(str(spec), root, val_unit="patient")


def test_an_unstratified_validation_split_draws_groups_from_all_classes_at_once(tmp_path):
    """``[split] val_stratify = false`` (the study's 8:2 split): the held-out groups are a seeded draw from every
    group regardless of class, here written out with numpy; the default stays stratified."""
    from probebench.data.splits import stratified_group_holdout

    rng = np.random.default_rng(0)
    groups = np.array([f"g{i:02d}" for i in range(40) for _ in range(2)])
    labels = np.repeat((rng.random(40) < 0.2).astype(int), 2)  # a rare class: about 8 of 40 groups
    held = stratified_group_holdout(labels, groups, fraction=0.2, seed=3, stratify=False)
    names = sorted(set(groups.tolist()))
    expect = {names[i] for i in np.random.default_rng(3).permutation(40)[:8]}
    assert set(groups[held].tolist()) == expect
    strat = stratified_group_holdout(labels, groups, fraction=0.2, seed=3)
    n_rare = len(set(groups[labels == 1].tolist()))
    assert len(set(groups[strat & (labels == 1)].tolist())) == max(1, round(0.2 * n_rare))


def test_specs_are_found_where_users_keep_them_in_a_stated_order(tiny, tmp_path, monkeypatch):
    """A spec named without a path: $PROBEBENCH_SPECS, then the working folder, ./configs/datasets, the data roots,
    then the shipped specs (first match wins); other TOML files there are not datasets; the error names the folders."""
    from probebench.data.datasets import list_specs, load_manifest, load_spec, spec_dirs

    spec, root = tiny  # tiny.toml in the working folder (the test's tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert "pyproject" not in list_specs() and load_spec("tiny").source == spec
    assert len(load_manifest("tiny", root)) == 40
    (root / "beside.toml").write_text(spec.read_text().replace('name = "tiny"', 'name = "beside"'))
    assert load_spec("beside", root).name == "beside"  # a spec next to the data, found through --data-root
    mine = tmp_path / "specs"
    mine.mkdir()
    (mine / "tiny.toml").write_text(spec.read_text().replace("test_fraction = 0.3", "test_fraction = 0.4"))
    monkeypatch.setenv("PROBEBENCH_SPECS", str(mine))
    assert load_spec("tiny").source == mine / "tiny.toml"  # $PROBEBENCH_SPECS first
    assert spec_dirs(root)[:4] == [mine, tmp_path, tmp_path / "configs" / "datasets", root]
    with pytest.raises(ProbebenchError, match=r"unknown dataset 'tinny' \(did you mean 'tiny'\?\)(.|\n)*looked for, "
                                              r"first match winning, in: " + re.escape(str(mine))):
        load_spec("tinny")
