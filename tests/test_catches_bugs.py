"""Tests aimed at bugs that once passed the whole suite: each expectation is computed independently of the code
under test (literal constants, hand-worked sequences, a hand-computed volume, the store read directly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_image, write_spec
from PIL import Image

from probebench.train.loop import LoopState, train_loop


def test_patience_stops_at_the_exact_epoch():
    """Validation accuracy 0.5, 0.6, 0.6, 0.55, 0.58, 0.59, 0.7 with patience 3: epoch 2 is best (a tie is no
    improvement), epochs 3, 4, 5 are stale, so training stops after epoch 5; epoch 6 never runs."""
    scores = iter([0.5, 0.6, 0.6, 0.55, 0.58, 0.59, 0.7])
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = lambda epoch: [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))]  # noqa: E731
    state = train_loop(model, opt, batches, lambda m: {"val_loss": 0.0, "val_accuracy": next(scores)}, epochs=7,
                       seed=0, select="val_accuracy", patience=3, state=LoopState())
    assert state.epoch == 5 and state.best_epoch == 2 and [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5]
    scores = iter([0.5, 0.6, 0.6, 0.55, 0.58, 0.59, 0.7])
    state = train_loop(model, opt, batches, lambda m: {"val_loss": 0.0, "val_accuracy": next(scores)}, epochs=7,
                       seed=0, select="val_accuracy", patience=None, state=LoopState())
    assert state.epoch == 7 and state.best_epoch == 7  # without patience every epoch runs


def test_the_best_epoch_is_chosen_on_validation_not_training():
    """Training accuracy rises every epoch while validation peaks at epoch 2: the kept weights are epoch 2's."""
    val = iter([0.4, 0.9, 0.5, 0.3])
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.eye(2), torch.tensor([0, 1])
    snapshots = []

    def validate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"val_loss": 0.0, "val_accuracy": next(val)}

    state = train_loop(model, opt, lambda e: [(x, y)], validate, epochs=4, seed=0, select="val_accuracy",
                       patience=None, state=LoopState())
    assert state.best_epoch == 2
    assert all(torch.equal(state.best_state[k], snapshots[1][k]) for k in snapshots[1])
    assert [r["train_accuracy"] for r in state.history] == sorted(r["train_accuracy"] for r in state.history)


def test_labels_follow_the_specs_class_order_not_the_alphabet(tmp_path):
    from probebench.data.datasets import load_manifest

    root = tmp_path / "data"
    for i in range(6):
        write_image(root / "zoo" / "zebra" / f"p{i}_0.png", seed=i)
        write_image(root / "zoo" / "ant" / f"q{i}_0.png", seed=10 + i)
    spec = write_spec(tmp_path / "zoo.toml", 'kind = "folder"\nroot = "zoo"\nclasses = ["zebra", "ant"]\n'
                                              "[split]\ntest_fraction = 0.3\n")
    m = load_manifest(str(spec), root)
    assert {p.split("/")[-2]: int(lab) for p, lab in zip(m.paths, m.labels)} == {"zebra": 0, "ant": 1}


def test_default_preprocessing_equals_a_literal_torchvision_pipeline():
    """Resize 256 (bilinear), centre-crop 224, ImageNet mean and std written out here, not taken from the code."""
    from torchvision import transforms as T

    from probebench.features.images import make_transform
    from probebench.models.registry import get_config

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 260, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)
    ours = make_transform(get_config("resnet50").preprocessing)(img)
    assert ours.shape == (3, 224, 224) and torch.allclose(ours, reference, atol=1e-5)
    dino = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                      T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)
    assert torch.allclose(make_transform(get_config("dinov2_s").preprocessing)(img), dino, atol=1e-5)


@pytest.mark.parametrize("change", ["label", "group", "split_seed", "pixels"])
def test_the_manifest_hash_covers_labels_groups_splits_and_pixel_rules(tiny, tmp_path, change):
    from probebench.data.datasets import load_manifest

    from conftest import TINY_SPEC

    spec, root = tiny
    before = load_manifest(str(spec), root).hash()
    text = {"label": TINY_SPEC.replace('classes = ["a", "b"]', 'classes = ["b", "a"]'),
            "group": TINY_SPEC.replace("'^(?P<group>p\\d+)_'", "'^(?P<group>p\\d+_\\d)'"),
            "split_seed": TINY_SPEC.replace("seed = 0", "seed = 1"),
            "pixels": TINY_SPEC + '[pixels]\nintensity = "percentile"\n'}[change]
    assert text != TINY_SPEC
    other = write_spec(tmp_path / "other.toml", text)
    assert load_manifest(str(other), root).hash() != before


def test_precision_is_part_of_the_cache_key(tiny):
    from probebench.features.spec import resolve_job

    spec, root = tiny
    keys = {p: resolve_job("resnet50", str(spec), data_root=root, weights="random", precision=p).request.key
            for p in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3


def test_export_writes_groups_where_groups_belong(tiny, tmp_path):
    """Every array of every format against the store read directly with zarr."""
    import h5py
    import zarr

    from probebench.features.export import export_features
    from probebench.features.extract import extract

    spec, root = tiny
    opts = dict(data_root=root, cache_dir=tmp_path / "c", weights="random", resize=40, crop=32)
    store = extract("resnet50", str(spec), workers=0, progress=False, **opts)
    z = zarr.open_group(str(store), mode="r")
    want_groups = [str(g) for g in z["groups"][:]]
    want_ids = [str(s) for s in z["sample_ids"][:]]
    assert want_groups != want_ids
    out = export_features("resnet50", str(spec), tmp_path / "f.h5", **opts)
    with h5py.File(out, "r") as fh:
        assert [g.decode() for g in fh["groups"][()]] == want_groups
        assert [s.decode() for s in fh["sample_ids"][()]] == want_ids
    with np.load(export_features("resnet50", str(spec), tmp_path / "f.npz", **opts)) as npz:
        assert npz["groups"].tolist() == want_groups and npz["sample_ids"].tolist() == want_ids
    pt = torch.load(export_features("resnet50", str(spec), tmp_path / "f.pt", **opts), weights_only=True)
    assert pt["groups"] == want_groups and pt["sample_ids"] == want_ids


def test_prepare_mri_scales_each_volume_by_its_percentiles(tmp_path):
    """A volume with one extreme voxel: percentile scaling (0.5-99.5) maps the bulk to the full 0-255 range; min-max
    scaling would crush it near 0. Expected values computed here with numpy from the volume itself."""
    from probebench.data.mri import scale_volume

    rng = np.random.default_rng(0)
    vol = rng.uniform(100, 200, (20, 20, 4)).astype(np.float32)
    vol[0, 0, 0] = 10_000.0  # a hot voxel
    lo, hi = np.percentile(vol, [0.5, 99.5])
    expected = np.clip((vol[:, :, 2] - lo) / (hi - lo), 0, 1) * 255
    scaled, info = scale_volume(vol)
    assert np.abs(scaled[:, :, 2].astype(float) - expected).max() <= 1.0
    assert scaled[:, :, 2].max() >= 250  # the bulk spans the range: not min-max
    assert info["low"] == pytest.approx(lo) and info["high"] == pytest.approx(hi)
    assert scale_volume(np.full((4, 4, 2), 7.0))[0] is None


@pytest.mark.slow
def test_fine_tuned_predictions_use_batchnorm_in_eval_mode(tiny, tmp_path):
    """The test probabilities a fine-tune writes are the eval-mode forward of its best weights (BatchNorm with
    running statistics); a train-mode forward (batch statistics) gives other numbers, so the check can fail."""
    import copy

    from probebench.features.spec import resolve_job
    from probebench.train.finetune import Classifier, finetune
    from probebench.features.images import load_image, make_transform
    from probebench.models.registry import create_model
    from probebench.runs import read_run

    spec, root = tiny
    best = {}
    run = read_run(finetune("resnet50", str(spec), data_root=root, runs_dir=tmp_path / "runs", weights="random",
                            resize=40, crop=32, epochs=2, lr=1e-2, batch_size=8, workers=0, progress=False,
                            on_epoch=lambda s, row: best.update(state=copy.deepcopy(s.best_state))))
    job = resolve_job("resnet50", str(spec), data_root=root, weights="random", resize=40, crop=32)
    m = job.manifest
    transform = make_transform(job.config.preprocessing)
    index = {sid: i for i, sid in enumerate(m.sample_ids)}
    x = torch.stack([transform(load_image(m.paths[index[s]], None, m.pixels)) for s in run.sample_ids])
    net = Classifier(create_model("resnet50", "random", img_size=32), 2, seed=0, freeze_backbone=False)
    net.load_state_dict(best["state"])
    with torch.no_grad():
        eval_proba = torch.softmax(net.eval()(x), 1).numpy()
        train_proba = torch.softmax(net.train()(x), 1).numpy()
    assert np.abs(eval_proba - run.proba).max() < 1e-4
    assert np.abs(train_proba - run.proba).max() > 1e-3


def test_the_manifest_hash_changes_when_only_one_label_changes(tmp_path):
    """Same files, same classes, same groups and splits: one row of the table relabelled."""
    from probebench.data.datasets import load_manifest

    root = tmp_path / "data" / "tab"
    rows = []
    for i in range(12):
        write_image(root / f"img{i}.png", seed=i)
        split = "train" if i < 6 else "val" if i < 9 else "test"  # shipped: nothing is carved, so only the label moves
        rows.append(f"img{i}.png,{'ab'[i % 2]},{split}\n")
    spec = write_spec(tmp_path / "tab.toml", 'kind = "csv"\nroot = "tab"\nclasses = ["a", "b"]\n[csv]\n'
                                              'file = "t.csv"\n')
    (root / "t.csv").write_text("path,label,split\n" + "".join(rows))
    before = load_manifest(str(spec), tmp_path / "data").hash()
    rows[0] = rows[0].replace(",a,", ",b,")
    (root / "t.csv").write_text("path,label,split\n" + "".join(rows))
    assert load_manifest(str(spec), tmp_path / "data").hash() != before


@pytest.mark.parametrize("change", [
    {"weights": "random:1"}, {"tap": "cls_patchmean"}, {"resize": 300}, {"crop": 196}, {"mean": 0.5}, {"std": 0.5},
    {"interpolation": "bilinear"}, {"precision": "bf16"}, {"store_dtype": "float16"}, {"channels_last": True},
    {"draft": True}, {"val_unit": "sample"}])
def test_every_input_of_the_cache_key_changes_it(tiny, change):
    """One field at a time against the same baseline (DINOv2-S, random weights): the key must move."""
    from probebench.features.spec import resolve_job

    spec, root = tiny
    base = resolve_job("dinov2_s", str(spec), data_root=root, weights="random")
    other = resolve_job("dinov2_s", str(spec), data_root=root, **{"weights": "random", **change})
    assert other.request.key != base.request.key, change


def test_resnet50_features_equal_torchvisions_own_model_and_pipeline(tiny, tmp_path):
    """The expectation is built without probebench: torchvision's resnet50 with the same weight file, every layer
    but ``fc``, on images prepared by a torchvision pipeline with literal constants."""
    import torchvision
    from torchvision import transforms as T

    from probebench.features.cache import read_features
    from probebench.features.extract import extract

    spec, root = tiny
    torch.manual_seed(5)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet50-weights.pth")
    feats = read_features(extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c",
                                  weights=str(tmp_path / "resnet50-weights.pth"), resize=40, crop=32, batch_size=4,
                                  workers=0, progress=False))
    pipeline = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(32), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([pipeline(Image.open(root / "tiny" / sid).convert("RGB")) for sid in feats.sample_ids[:6]])
    trunk = torch.nn.Sequential(*list(reference.children())[:-1]).eval()
    with torch.no_grad():
        expected = trunk(x).flatten(1).numpy()
    assert np.abs(feats.features[:6] - expected).max() < 1e-4


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_torchrun_shares_are_disjoint_and_cover_the_missing_chunks(world):
    """Each rank extracts its own share: no chunk twice (N times the work), none forgotten, done ones skipped."""
    from probebench.features.extract import shard_chunks

    done = np.array([True, False, False, True, False, False, False, True, False, False, False])
    shares = [shard_chunks(done, rank, world) for rank in range(world)]
    flat = [c for share in shares for c in share]
    assert sorted(flat) == [1, 2, 4, 5, 6, 8, 9, 10] and len(flat) == len(set(flat))
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1  # balanced


def test_frozen_fit_and_frozen_finetune_both_equal_a_hand_written_loop(tiny, tmp_path):
    """The fast path (extract + fit) and the slow path (finetune --freeze-backbone) share batch order, head
    initialisation and the training loop, so comparing them with each other cannot catch a bug in those. Here
    both are compared with a loop written out below from the documented rules only: torchvision's resnet50 on a
    literal pipeline, nn.Linear built right after torch.manual_seed(seed), Adam, epoch e's batches cut from
    numpy's permutation seeded by [seed, e], validation accuracy over all validation images, the first best
    epoch kept."""
    import torchvision
    import zarr
    from torchvision import transforms as T

    from probebench.features.extract import extract
    from probebench.train.finetune import finetune
    from probebench.train.fit import fit
    from probebench.runs import read_run

    spec, root = tiny
    seed, epochs, lr, batch = 3, 6, 1e-2, 8
    torch.manual_seed(11)
    reference = torchvision.models.resnet50(weights=None)
    weights = tmp_path / "resnet50-weights.pth"
    torch.save(reference.state_dict(), weights)
    opts = dict(weights=str(weights), resize=40, crop=32)
    store = extract("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", batch_size=4, workers=0,
                    progress=False, **opts)
    common = dict(epochs=epochs, lr=lr, batch_size=batch, seed=seed)
    fast = read_run(fit("resnet50", str(spec), data_root=root, cache_dir=tmp_path / "c", runs_dir=tmp_path / "a",
                        progress=False, **opts, **common))
    slow = read_run(finetune("resnet50", str(spec), data_root=root, runs_dir=tmp_path / "b", freeze_backbone=True,
                             workers=0, progress=False, **opts, **common))

    # the inputs: which file is in which split, in manifest order (read from the store, not recomputed)
    group = zarr.open_group(str(store), mode="r")
    ids = [str(s) for s in group["sample_ids"][:]]
    names = {code: name for name, code in group.attrs["split_codes"].items()}
    split = np.asarray([names[int(c)] for c in group["split"][:]])
    labels = np.asarray(group["labels"][:], dtype=np.int64)
    pipeline = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(32), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    trunk = torch.nn.Sequential(*list(reference.children())[:-1]).eval()
    with torch.no_grad():
        feats = trunk(torch.stack([pipeline(Image.open(root / "tiny" / s).convert("RGB")) for s in ids])).flatten(1)
    xt, yt = feats[split == "train"], torch.as_tensor(labels[split == "train"])
    xv, yv = feats[split == "val"], torch.as_tensor(labels[split == "val"])
    xs = feats[split == "test"]

    torch.manual_seed(seed)
    head = torch.nn.Linear(2048, 2)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(len(xt))
        for i in range(0, len(order), batch):
            idx = torch.as_tensor(order[i:i + batch])
            loss = torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (head(xv).argmax(1) == yv).double().mean().item()
        if acc > best:
            best, best_epoch = acc, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    with torch.no_grad():
        expected = torch.softmax(head(xs), 1).numpy()

    test_ids = [s for s, sp in zip(ids, split) if sp == "test"]
    for run in (fast, slow):
        assert list(run.sample_ids) == test_ids
        assert run.metrics["best_epoch"] == best_epoch
        assert np.abs(run.proba - expected).max() < 1e-4
    assert np.abs(expected - 0.5).max() > 0.01  # the head learned something, so a wrong order would show


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_balanced_class_weight_enters_the_loss_as_sklearn_defines_it(head_kind):
    """One full-batch SGD step from the head's initial weights equals the step of a hand-written cross-entropy
    weighted by scikit-learn's ``compute_class_weight('balanced')`` (and differs from the unweighted step)."""
    from sklearn.utils.class_weight import compute_class_weight

    from probebench.train.heads import LinearHead, MLPHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = np.array([0] * 9 + [1] * 3)
    xv, yv = x[:4], y[:4]
    kind = {"linear": LinearHead, "mlp": lambda **k: MLPHead(hidden=4, **k)}[head_kind]
    common = dict(epochs=1, batch_size=12, optimizer="sgd", class_weight="balanced", seed=3)
    start = kind(lr=0.0, **common).fit(x, y, xv, yv, 2).model_  # lr 0: the initial weights, untouched
    stepped = kind(lr=0.5, **common).fit(x, y, xv, yv, 2).model_
    w = torch.tensor(compute_class_weight("balanced", classes=np.array([0, 1]), y=y), dtype=torch.float32)

    def step(weights):
        params = [p.detach().clone().requires_grad_() for p in start.parameters()]
        net = torch.func.functional_call(start, dict(zip([n for n, _ in start.named_parameters()], params)),
                                         (torch.from_numpy(x),))
        logp = torch.log_softmax(net, dim=1)[torch.arange(12), torch.from_numpy(y)]
        loss = -(weights[y] * logp).sum() / weights[y].sum()  # PyTorch's (and the study's) weighted mean
        grads = torch.autograd.grad(loss, params)
        return [p - 0.5 * g for p, g in zip(params, grads)]

    expected = step(w)
    for got, want in zip(stepped.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-6)
    unweighted = step(torch.ones(2))
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(expected, unweighted))


def test_default_extraction_batch_is_8_on_a_cpu_and_64_on_an_accelerator():
    from probebench.features.extract import default_batch_size

    assert default_batch_size(torch.device("cpu")) == 8
    assert default_batch_size(torch.device("cuda", 0)) == 64 and default_batch_size(torch.device("mps")) == 64


def test_head_parameters_recorded_in_a_run_are_named_as_documented():
    from probebench.train.heads import LinearHead

    assert LinearHead(epochs=7, lr=0.01, batch_size=16, weight_decay=0.1, seed=2, optimizer="sgd",
                      patience=3, class_weight="balanced").params() == {
        "epochs": 7, "lr": 0.01, "batch_size": 16, "weight_decay": 0.1, "seed": 2, "optimizer": "sgd",
        "patience": 3, "loss": "cross_entropy", "select": "val_accuracy", "class_weight": "balanced"}


def test_volume_scaling_counts_only_values_beyond_the_percentiles_as_clipped():
    """Ties at the top percentile are not clipped: 10 zeros, 1..80, ten 100s -> low 0, high 100, nothing clipped;
    40 maps to round(40 / 100 * 255) = 102."""
    from probebench.data.mri import scale_volume

    data = np.array([0.0] * 10 + list(range(1, 81)) + [100.0] * 10)
    scaled, info = scale_volume(data)
    assert (info["low"], info["high"], info["clipped_low"], info["clipped_high"]) == (0.0, 100.0, 0.0, 0.0)
    assert scaled[0] == 0 and scaled[-1] == 255 and scaled[10 + 39] == 102


def test_resampling_extends_images_at_the_edge_and_pads_masks_with_background():
    """A grid shifted one voxel beyond the volume: the image repeats its edge (no dark band at the border), the
    mask gets background (a tumour never grows past the scan)."""
    from probebench.data.mri import resample_to_grid

    vol = np.full((3, 3, 3), 7.0)
    shifted = np.eye(4)
    shifted[0, 3] = 1.0  # the destination's voxel i sits at the source's i + 1
    image = resample_to_grid(vol, np.eye(4), shifted, (3, 3, 3), order=1)
    mask = resample_to_grid(vol, np.eye(4), shifted, (3, 3, 3), order=0)
    assert np.all(image == 7.0)
    assert np.all(mask[:2] == 7.0) and np.all(mask[2] == 0.0)


def test_crop_keeps_the_mask_box_plus_margin_inside_the_image():
    from probebench.data.mri import _crop

    image = np.arange(36).reshape(6, 6)
    mask = np.zeros((6, 6), bool)
    mask[2:4, 1:3] = True
    assert np.array_equal(_crop(image, mask, 1), image[1:5, 0:4])
    assert np.array_equal(_crop(image, mask, 9), image)  # clipped at the borders


def test_an_unknown_mri_key_in_a_spec_is_refused(tmp_path):
    from probebench.data.mri import settings_for
    from probebench.errors import ProbebenchError

    (tmp_path / "configs" / "datasets").mkdir(parents=True)  # ./configs/datasets: local specs by name
    (tmp_path / "configs" / "datasets" / "t9.toml").write_text(
        'kind = "csv"\nroot = "t9"\nclasses = ["II", "IV"]\n[csv]\nfile = "manifest.csv"\npath_column = "path"\n'
        'label_column = "grade"\n[mri]\nmodality = "t1"\nspacng = [1, 1, 1]\n')
    with pytest.raises(ProbebenchError, match=r"t9.toml: unknown keys \['spacng'\] in \[mri\]"):
        settings_for("t9")


def test_hdf5_pixels_follow_the_recorded_rules_exactly(tmp_path):
    """Each kind of HDF5 array decoded by hand: uint8 as is; float 'unit' clipped to [0, 1] times 255; float
    'minmax' stretched; uint16 by the dataset's rule (here 12 bits); a trailing channel of 1 dropped; RGBA's
    alpha dropped."""
    import h5py

    from probebench.data.layouts.hdf5 import hdf5_uri
    from probebench.data.pixels import PixelRules
    from probebench.features.images import load_image

    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (2, 5, 6), dtype=np.uint8)
    f = rng.uniform(-0.5, 1.5, (2, 5, 6)).astype(np.float32)
    u16 = rng.integers(0, 4096, (2, 5, 6)).astype(np.uint16)
    one = rng.integers(0, 256, (2, 5, 6, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, (2, 5, 6, 4), dtype=np.uint8)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as fh:
        for name, arr in (("u8", u8), ("f", f), ("u16", u16), ("one", one), ("rgba", rgba)):
            fh[name] = arr

    def pixels(name, rule="unit", rules=PixelRules()):
        img = load_image(hdf5_uri(path, name, 1, rule), None, rules)
        return img.mode, np.asarray(img)

    mode, got = pixels("u8")
    assert mode == "L" and np.array_equal(got, u8[1])
    mode, got = pixels("f", "unit")
    assert mode == "L" and np.array_equal(got, np.rint(np.clip(f[1].astype(np.float64), 0, 1) * 255))
    x = f[1].astype(np.float64)
    _, got = pixels("f", "minmax")
    assert np.array_equal(got, np.rint((x - x.min()) / (x.max() - x.min()) * 255))
    _, got = pixels("u16", rules=PixelRules(intensity="bits", bits=12))
    assert np.array_equal(got, np.rint(u16[1] / 4095 * 255))
    mode, got = pixels("one")
    assert mode == "L" and np.array_equal(got, one[1, ..., 0])
    mode, got = pixels("rgba")
    assert mode == "RGB" and np.array_equal(got, rgba[1, ..., :3])


def test_load_rgb_applies_the_datasets_rule_to_16_bit_files(tmp_path):
    from probebench.data.pixels import PixelRules
    from probebench.features.images import load_rgb

    arr = np.array([[0, 1000, 4095], [2048, 3000, 100]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")  # 16-bit grayscale PNG, 12-bit content
    got = np.asarray(load_rgb(tmp_path / "x.png", None, PixelRules(intensity="full16")))  # not the default rule
    assert got.shape == (2, 3, 3) and np.array_equal(got[..., 1], np.rint(arr / 65535 * 255))


def _csv_dataset(tmp_path, spec_text: str, files: dict[str, str], images=("a.png", "b.png", "c.png", "d.png")):
    from probebench.data.datasets import load_manifest

    root = tmp_path / "data" / "ds"
    for name in images:
        write_image(root / "img" / name, seed=len(name))
    for name, text in files.items():
        (root / name).write_text(text)
    spec = write_spec(tmp_path / "ds.toml", 'kind = "csv"\nroot = "ds"\nclasses = ["x", "y"]\n' + spec_text)
    return lambda: load_manifest(str(spec), tmp_path / "data")


@pytest.mark.parametrize("case", ["path", "id", "group_table"])
def test_a_missing_csv_column_is_named_with_the_spec_key_that_names_it(tmp_path, case):
    from probebench.errors import ProbebenchError

    spec, files, expected = {
        "path": ('[csv]\nfile = "t.csv"\npath_column = "file"\n', {"t.csv": "path,label\nimg/a.png,x\n"},
                 r"missing column\(s\) 'file' \(path_column\)"),
        "id": ('[csv]\nfile = "t.csv"\nimage_dirs = ["img"]\nid_column = "image"\n',
               {"t.csv": "path,label\na,x\n"}, r"missing column\(s\) 'image' \(id_column\)"),
        "group_table": ('[[csv.sources]]\nfile = "t.csv"\nimage_dirs = ["img"]\nid_column = "image"\n'
                        '[csv.sources.group_table]\nfile = "g.csv"\nid_column = "image"\ngroup_column = "lesion"\n',
                        {"t.csv": "image,label\na,x\n", "g.csv": "image,lesion_id\na,L1\n"},
                        r"missing column\(s\) 'lesion' \(group_table.group_column\)"),
    }[case]
    with pytest.raises(ProbebenchError, match=expected):
        _csv_dataset(tmp_path, spec, files)()


def test_a_source_with_a_fixed_split_needs_no_split_column(tmp_path):
    load = _csv_dataset(tmp_path, '[[csv.sources]]\nfile = "train.csv"\nsplit_column = "fold"\n'
                                  '[[csv.sources]]\nfile = "test.csv"\nsplit = "test"\nsplit_column = "fold"\n',
                        {"train.csv": "path,label,fold\nimg/a.png,x,train\nimg/b.png,y,train\nimg/e.png,x,val\n"
                                      "img/f.png,y,val\n",
                         "test.csv": "path,label\nimg/c.png,x\nimg/d.png,y\n"},
                        images=("a.png", "b.png", "c.png", "d.png", "e.png", "f.png"))
    m = load()
    assert dict(zip(m.sample_ids.tolist(), m.splits.tolist())) == {
        "img/a.png": "train", "img/b.png": "train", "img/e.png": "val", "img/f.png": "val", "img/c.png": "test",
        "img/d.png": "test"}


def test_hdf5_messages_and_provenance(tmp_path):
    import h5py

    from probebench.data.datasets import load_manifest
    from probebench.errors import ProbebenchError

    (tmp_path / "data" / "h").mkdir(parents=True)
    with h5py.File(tmp_path / "data" / "h" / "s.h5", "w") as fh:
        fh["x"] = np.zeros((6, 7, 5), np.uint8)
        fh["y"] = np.array([0, 1] * 3)
    text = 'kind = "hdf5"\nroot = "h"\nclasses = ["x", "y"]\n[split]\ntest_fraction = 0.34\n' \
           '[hdf5]\nfile = "s.h5"\nimages = "x"\nlabels = "y"\n'
    m = load_manifest(str(write_spec(tmp_path / "h.toml", text)), tmp_path / "data")
    assert m.source["shape"] == [6, 7, 5] and m.source["images"] == "x"
    bad = write_spec(tmp_path / "h2.toml", text + 'float_rule = "unity"\n')
    with pytest.raises(ProbebenchError, match=r"h2.toml, line 10: \[hdf5\] float_rule must be one of minmax, unit, "
                                              r"not 'unity'"):
        load_manifest(str(bad), tmp_path / "data")


def test_a_missing_image_folder_is_named_with_its_path(tmp_path):
    from probebench.errors import ProbebenchError

    load = _csv_dataset(tmp_path, '[csv]\nfile = "t.csv"\nimage_dirs = ["pics"]\nid_column = "image"\n',
                        {"t.csv": "image,label\na,x\n"})
    with pytest.raises(ProbebenchError, match=r"image folder \S*data/ds/pics is missing"):
        load()


def test_big_endian_16_bit_tiffs_follow_the_datasets_rule(tmp_path):
    """A big-endian 16-bit TIFF (PIL mode I;16B, as some scanners write) is deep data like any other."""
    from probebench.data.pixels import PixelRules
    from probebench.features.images import load_image

    arr = np.array([[0, 30000], [65535, 1000]], dtype=">u2")
    Image.fromarray(arr).save(tmp_path / "x.tif")
    with Image.open(tmp_path / "x.tif") as img:
        assert img.mode == "I;16B"
    got = np.asarray(load_image(tmp_path / "x.tif", None, PixelRules(intensity="full16")))
    assert np.array_equal(got, np.rint(arr.astype(float) / 65535 * 255))


def test_a_run_records_the_versions_junk_files_and_sane_epoch_timings(tiny, tmp_path):
    from importlib.metadata import version

    from probebench.features.extract import extract
    from probebench.runs import read_run
    from probebench.train.fit import fit

    spec, root = tiny
    (root / "tiny" / "a" / ".DS_Store").write_bytes(b"junk")  # release clutter: counted, never read
    opts = dict(data_root=root, cache_dir=tmp_path / "c", weights="random", resize=32, crop=28, progress=False)
    extract("resnet50", str(spec), workers=0, **opts)
    run = read_run(fit("resnet50", str(spec), runs_dir=tmp_path / "runs", epochs=2, **opts))
    versions = run.config["versions"]
    assert versions["probebench"] == version("probebench") and versions["torch"] == version("torch")
    assert versions["torchvision"] == version("torchvision")
    assert run.config["junk_files"] == 1
    import csv

    with (run.path / "history.csv").open() as fh:
        for row in csv.DictReader(fh):
            seconds, rate = float(row["train_seconds"]), float(row["train_samples_per_s"])
            # seconds are rounded to 0.1 ms: the rate is samples over the unrounded time
            assert 0 < seconds < 60 and abs(run.config["n"]["train"] / rate - seconds) <= 6e-5


def test_renaming_a_file_changes_the_manifest_hash(tiny):
    """Same pixels, same class and patient, another file name: the cache key must change, or a store would hand
    back features under the old sample ids."""
    from probebench.data.datasets import load_manifest

    spec, root = tiny
    before = load_manifest(str(spec), root).hash()
    (root / "tiny" / "b" / "p105_1.png").rename(root / "tiny" / "b" / "p105_7.png")
    after = load_manifest(str(spec), root)
    assert "b/p105_7.png" in after.sample_ids.tolist() and after.hash() != before


def test_csv_listing_a_sample_twice_is_refused_with_the_rows(tmp_path):
    from probebench.errors import ProbebenchError

    load = _csv_dataset(tmp_path, '[csv]\nfile = "t.csv"\n[split]\ntest_fraction = 0.5\n',
                        {"t.csv": "path,label\nimg/a.png,x\nimg/b.png,y\nimg/a.png,x\n"})
    with pytest.raises(ProbebenchError, match=r"1 sample id\(s\) listed more than once: img/a.png: "):
        load()


def test_spec_text_fields_must_be_text(tmp_path):
    from probebench.data.datasets import load_spec
    from probebench.errors import ProbebenchError

    spec = write_spec(tmp_path / "s.toml", 'name = 5\nkind = "folder"\nclasses = ["a", "b"]\n')
    with pytest.raises(ProbebenchError, match=r"s.toml, line 1: .*name.*a dataset name"):
        load_spec(str(spec))


def test_validation_by_image_is_recorded_in_the_manifest(tiny):
    from probebench.data.datasets import load_manifest

    spec, root = tiny
    assert load_manifest(str(spec), root, val_unit="sample").source["val_unit"] == "sample"
