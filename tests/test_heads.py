"""Heads on cached features: accuracy on separable data, references, grid selection and feature options."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight

from probebench.features.extract import extract
from probebench.train.fit import fit, prepare_features
from probebench.train.heads import GridHead, KNNHead, LinearHead, LogRegHead, MLPHead, balanced_weights, knn_proba
from probebench.report.tables import ReportOptions, collect_rows, render
from probebench.runs import read_run


def separable(n=600, d=24, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, d))
    y = rng.integers(0, k, n)
    x = (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    return x[:300], y[:300], x[300:450], y[300:450], x[450:], y[450:]


@pytest.mark.parametrize("head", [
    LinearHead(epochs=15, lr=1e-2), MLPHead(hidden=32, epochs=15, lr=1e-2), LogRegHead(cs=(0.01, 1.0)),
    KNNHead(ks=(10, 20)), GridHead("linear", lrs=(1e-3, 1e-2), wds=(0.0, 1e-3), epochs=10),
    GridHead("mlp", lrs=(1e-3, 1e-2), wds=(0.0,), epochs=10, hidden=32)], ids=lambda h: h.__class__.__name__)
def test_every_head_separates_separable_features(head):
    xt, yt, xv, yv, xs, ys = separable()
    proba = head.fit(xt, yt, xv, yv, 3).predict_proba(xs)
    assert proba.shape == (150, 3) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == ys).mean() > 0.95


def test_logreg_matches_sklearn_for_the_same_c():
    xt, yt, xv, yv, xs, ys = separable(seed=1)
    head = LogRegHead(cs=(0.05,)).fit(xt, yt, xv, yv, 3)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, solver="lbfgs", max_iter=1000)).fit(xt, yt)
    assert np.array_equal(head.predict_proba(xs).argmax(1), ref.predict(xs))
    assert np.allclose(head.predict_proba(xs), ref.predict_proba(xs), atol=1e-8)
    assert head.selection_["chosen"]["C"] == 0.05


def test_knn_matches_a_brute_force_reference():
    rng = np.random.default_rng(2)
    train, labels, query = rng.normal(size=(60, 8)), rng.integers(0, 4, 60), rng.normal(size=(7, 8))
    ours = knn_proba(train, labels, query, k=5, n_classes=4, temperature=0.1)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    for q, row in zip(unit(query), ours):
        sims = unit(train) @ q
        top = np.argsort(-sims)[:5]
        votes = np.zeros(4)
        for i in top:
            votes[labels[i]] += np.exp(sims[i] / 0.1)
        assert np.allclose(row, votes / votes.sum(), atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_one_cell_grid_equals_the_single_head(kind):
    xt, yt, xv, yv, xs, ys = separable(seed=3)
    single_cls = LinearHead if kind == "linear" else MLPHead
    extra = {} if kind == "linear" else {"hidden": 16}
    single = single_cls(epochs=6, lr=3e-3, weight_decay=1e-3, seed=4, **extra).fit(xt, yt, xv, yv, 3)
    grid = GridHead(kind, lrs=(3e-3,), wds=(1e-3,), epochs=6, seed=4, **extra).fit(xt, yt, xv, yv, 3)
    assert grid.best_epoch_ == single.best_epoch_
    assert np.abs(grid.predict_proba(xs) - single.predict_proba(xs)).max() < 1e-5


def test_balanced_class_weights_equal_sklearns():
    y = np.array([0, 0, 0, 0, 1, 2, 2])
    assert np.allclose(balanced_weights(y, 3), compute_class_weight("balanced", classes=np.arange(3), y=y))


def test_feature_options_use_train_statistics_only():
    rng = np.random.default_rng(5)
    train, test = rng.normal(3, 2, (50, 4)), rng.normal(10, 2, (20, 4))
    tr, te = prepare_features(train, test, standardize=True)
    assert np.allclose(tr.mean(0), 0, atol=1e-5) and np.allclose(tr.std(0), 1, atol=1e-4)
    assert (te.mean(0) > 2).all()  # test shifted: its own statistics were not used
    tr, te = prepare_features(train, test, normalize="l2")
    assert np.allclose(np.linalg.norm(te, axis=1), 1, atol=1e-6)


def test_grid_choice_ignores_test_labels(tiny, tmp_path):
    spec, root = tiny
    opts = dict(data_root=root, cache_dir=tmp_path / "c", weights="random", resize=40, crop=32)
    store = extract("resnet50", str(spec), workers=0, progress=False, store_dtype="float16", **opts)
    kw = dict(head="linear", grid=True, epochs=4, batch_size=8, normalize="l2", standardize=True, progress=False,
              class_weight="balanced", store_dtype="float16", **opts)
    before = read_run(fit("resnet50", str(spec), runs_dir=tmp_path / "a", **kw))
    group = zarr.open_group(str(store), mode="a")
    labels, split = group["labels"][:], group["split"][:]
    test = split == 2
    labels[test] = np.random.default_rng(0).permutation(1 - labels[test])  # scramble the test labels
    group["labels"][:] = labels
    after = read_run(fit("resnet50", str(spec), runs_dir=tmp_path / "b", **kw))
    assert before.config["selection"] == after.config["selection"]
    assert len(before.config["selection"]["grid"]) == 20  # default 5 learning rates x 4 weight decays
    assert np.array_equal(before.proba, after.proba) and not np.array_equal(before.y_true, after.y_true)
    assert before.config["head_label"].startswith("linear grid: lr ")


def test_seeds_are_reported_as_spread_beside_the_first_seeds_interval(tiny, tmp_path):
    spec, root = tiny
    opts = dict(data_root=root, cache_dir=tmp_path / "c", weights="random", resize=40, crop=32)
    extract("resnet50", str(spec), workers=0, progress=False, **opts)
    fit("resnet50", str(spec), runs_dir=tmp_path / "runs", epochs=3, lr=1e-2, seeds=[1, 2, 3], progress=False, **opts)
    rows = collect_rows(tmp_path / "runs")
    assert len(rows) == 1 and rows[0].seeds["seeds"] == [1, 2, 3]
    assert rows[0].run.config["seed"] == 1
    md = render(rows, "md", ReportOptions())
    assert "; seeds " in md and "not a confidence interval" in md and "first seed's bootstrap" in md


def test_study_mlp_is_the_studys_head_whatever_hidden_says():
    """The study's head on DINOv2's ImageNet logits: Linear(1000, 256) -> ReLU -> Linear(256, K)."""
    from torch import nn

    from probebench.train.heads import make_head

    head = make_head("study_mlp", hidden=64, seed=0)
    net = head.build(1000, 3)
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (net[0].in_features, net[0].out_features, net[2].out_features) == (1000, 256, 3)
    assert head.name == "study_mlp" and head.params()["hidden"] == 256


def test_training_reshuffles_every_epoch_and_validates_on_all_samples(monkeypatch):
    """Each epoch's batches are a fresh permutation of the training set (seeded by seed and epoch), and the
    head really uses them: freezing the first epoch's order changes the result. Validation accuracy is the share
    of all validation samples, not a mean of per-batch accuracies."""
    import torch

    from probebench.train import loop as training
    from probebench.train.heads import make_head

    orders = [np.concatenate(training.epoch_batches(50, 8, seed=3, epoch=e)) for e in (1, 2, 3)]
    assert all(sorted(o.tolist()) == list(range(50)) for o in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert np.array_equal(orders[0], np.concatenate(training.epoch_batches(50, 8, seed=3, epoch=1)))
    assert np.array_equal(orders[0], np.random.default_rng([3, 1]).permutation(50))  # the documented rule

    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(50, 6)).astype(np.float32), rng.normal(size=(9, 6)).astype(np.float32)
    y, yv = (x[:, 0] > 0).astype(int), (xv[:, 0] > 0).astype(int)  # learnable: the loss keeps falling

    def fit():
        head = make_head("linear", epochs=4, lr=1e-2, batch_size=8, seed=3, select="val_loss")
        head.fit(x, y, xv, yv, 2)
        assert head.best_epoch_ == 4
        return head
    normal = fit().predict_proba(xv)
    real = training.epoch_batches
    monkeypatch.setattr(training, "epoch_batches", lambda n, b, seed, epoch: real(n, b, seed, 1))
    frozen_order = fit().predict_proba(xv)
    assert not np.allclose(normal, frozen_order)

    logits = torch.tensor([[2.0, 0.0]] * 7 + [[0.0, 2.0]] * 2)
    labels = torch.tensor([0] * 6 + [1] * 3)  # 8 of 9 right; per-batch means (batch 8) would give (7/8 + 1) / 2
    assert training.val_metrics(logits, labels)["val_accuracy"] == pytest.approx(8 / 9)


def test_one_best_epoch_rule_for_single_heads_and_grids():
    """Strictly better than the best so far (a tie keeps the earlier epoch); anything beats no value yet; the same
    element by element for stacked grid heads, for accuracy (higher) and loss (lower)."""
    from probebench.train.loop import improved

    assert improved("val_accuracy", 0.7, float("nan")) and improved("val_accuracy", 0.7, 0.6)
    assert not improved("val_accuracy", 0.6, 0.6) and not improved("val_loss", 0.6, 0.6)
    assert improved("val_loss", 0.5, 0.6) and not improved("val_loss", 0.7, 0.6)
    got = improved("val_accuracy", np.array([0.5, 0.7, 0.7, 0.1]), np.array([0.6, 0.6, 0.7, np.nan]))
    assert got.tolist() == [False, True, False, True]


@pytest.mark.parametrize("optimizer,weight_decay,balanced", [("adam", 0.0, False), ("adamw", 0.05, False),
                                                             ("adam", 1e-3, True)])
def test_linear_head_fast_step_equals_an_eager_pytorch_loop(optimizer, weight_decay, balanced):
    """The hand-written step (NumPy gradients and Adam) against the textbook loop: nn.Linear, F.cross_entropy,
    autograd and torch.optim, same initial weights and batches: probabilities within 1e-5, same best epoch."""
    import copy

    import torch
    from torch import nn

    from probebench.train.heads import LinearHead, balanced_weights
    from probebench.train.loop import epoch_batches, seeded_init

    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    x[np.arange(300), y] += 0.8
    xv, yv = x[:60], y[:60]
    head = LinearHead(epochs=15, lr=3e-3, batch_size=32, weight_decay=weight_decay, optimizer=optimizer, seed=2,
                      class_weight="balanced" if balanced else None).fit(x, y, xv, yv, 3)

    model = seeded_init(lambda: nn.Linear(16, 3), 2)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    opt = cls(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    w = torch.tensor(balanced_weights(y, 3), dtype=torch.float32) if balanced else None
    best, best_state, best_epoch, losses = -1.0, None, 0, []
    for epoch in range(1, 16):
        total = 0.0
        for idx in epoch_batches(300, 32, 2, epoch):
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]), weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / 300)
        with torch.no_grad():
            acc = (model(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean()
        if acc > best:
            best, best_state, best_epoch = acc, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    assert head.best_epoch_ == best_epoch
    assert np.abs(head.predict_proba(x) - expected).max() < 1e-5
    assert np.allclose([r["train_loss"] for r in head.history_], losses, atol=1e-5)


def test_linear_grid_cells_equal_eager_pytorch_loops():
    """Each cell of a 2 x 2 lr x weight-decay grid (trained together, hand-written step) against its own textbook
    loop (nn.Linear, autograd, torch.optim.Adam with L2 weight decay): same best validation accuracy and epoch per
    cell (selected on validation loss, a number every error moves), and the chosen cell's probabilities within
    1e-5."""
    import copy

    import torch
    from torch import nn

    from probebench.train.heads import GridHead
    from probebench.train.loop import epoch_batches, seeded_init

    rng = np.random.default_rng(6)
    x = rng.normal(size=(240, 12)).astype(np.float32)
    y = rng.integers(0, 3, 240)
    x[np.arange(240), y] += 0.6
    xv, yv = x[:60], y[:60]
    grid = GridHead("linear", lrs=(1e-3, 1e-2), wds=(0.0, 0.3), epochs=8, batch_size=32, seed=1, select="val_loss")
    grid.fit(x, y, xv, yv, 3)
    probs = {}
    for cell in grid.selection_["grid"]:
        model = seeded_init(lambda: nn.Linear(12, 3), 1)
        opt = torch.optim.Adam(model.parameters(), lr=cell["lr"], weight_decay=cell["weight_decay"])
        best, best_epoch, best_state = np.inf, 0, None
        for epoch in range(1, 9):
            for idx in epoch_batches(240, 32, 1, epoch):
                loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                val_loss = nn.functional.cross_entropy(model(torch.from_numpy(xv)), torch.from_numpy(yv)).item()
            if val_loss < best:
                best, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        assert (cell["val_loss"], cell["best_epoch"]) == (pytest.approx(best, abs=1e-5), best_epoch)
        model.load_state_dict(best_state)
        with torch.no_grad():
            probs[(cell["lr"], cell["weight_decay"])] = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    chosen = grid.selection_["chosen"]
    assert np.abs(grid.predict_proba(x) - probs[(chosen["lr"], chosen["weight_decay"])]).max() < 1e-5


def test_a_head_refuses_an_option_it_does_not_use_when_it_was_set():
    """knn and logreg take no learning rate, a grid none either (it searches lr x weight decay): set, it is an
    error naming the flag; left at the protocol's value it is simply not passed."""
    from probebench.errors import ProbebenchError
    from probebench.train.heads import make_head

    with pytest.raises(ProbebenchError, match=r"the knn head does not use --epochs, --lr: remove them"):
        make_head("knn", lr=0.1, epochs=5, seed=0)
    with pytest.raises(ProbebenchError, match=r"the logreg head does not use --select-metric"):
        make_head("logreg", select="val_loss", seed=0)
    with pytest.raises(ProbebenchError, match=r"the linear grid head does not use --lr"):
        make_head("linear", grid=True, lr=0.1, seed=0)
    with pytest.raises(ProbebenchError, match=r"the linear head does not use --hidden"):
        make_head("linear", hidden=64, seed=0)
    assert make_head("knn", lr=1e-4, epochs=100, seed=3).seed == 3  # protocol values: nothing was asked
    assert make_head("mlp", grid=True, hidden=32, seed=0).hidden == 32
