"""The training protocol is one value: its defaults are the study's (from the paper, written out here), and every
signature that trains takes them from it."""

from __future__ import annotations

import inspect

import pytest

from probebench.errors import ProbebenchError
from probebench.train.config import PROTOCOL, TrainConfig


def test_the_protocol_is_the_studys():
    """Huang et al.: 100 epochs, batch 32, Adam, lr 1e-4, cross-entropy, the best validation accuracy kept."""
    assert (PROTOCOL.epochs, PROTOCOL.batch_size, PROTOCOL.optimizer, PROTOCOL.lr, PROTOCOL.select_metric) == \
        (100, 32, "adam", 1e-4, "val_accuracy")
    assert (PROTOCOL.weight_decay, PROTOCOL.patience) == (0.0, None)


def test_every_training_signature_takes_its_defaults_from_the_protocol():
    from typer.main import get_command

    from probebench.cli import app
    from probebench.train import heads, loop

    expected = {"epochs": PROTOCOL.epochs, "lr": PROTOCOL.lr, "batch_size": PROTOCOL.batch_size,
                "weight_decay": PROTOCOL.weight_decay, "optimizer": PROTOCOL.optimizer,
                "select": PROTOCOL.select_metric, "select_metric": PROTOCOL.select_metric, "seed": PROTOCOL.seed,
                "patience": PROTOCOL.patience, "name": PROTOCOL.optimizer}
    for fn in (heads.LinearHead.__init__, heads.GridHead.__init__, loop.train_classifier, loop.make_optimizer):
        for name, p in inspect.signature(fn).parameters.items():
            if name in expected and p.default is not inspect.Parameter.empty:
                assert p.default == expected[name], (fn.__qualname__, name)
    for fn in (loop.train_classifier, loop.make_optimizer, loop.train_loop):  # library code: no defaults to drift
        assert all(p.default is inspect.Parameter.empty for n, p in inspect.signature(fn).parameters.items()
                   if n in expected), fn.__qualname__
    commands = get_command(app).commands
    for command in ("fit", "finetune"):
        defaults = {p.name: p.default for p in commands[command].params}
        for field in ("epochs", "lr", "batch_size", "weight_decay", "optimizer", "select_metric", "patience", "seed"):
            assert defaults[field] == getattr(PROTOCOL, field), (command, field)


def test_a_config_is_checked_once_and_overrides_name_their_field():
    assert TrainConfig.of(None, lr=1e-3) == TrainConfig(lr=1e-3)
    with pytest.raises(ProbebenchError, match=r"unknown training option 'lrr' \(did you mean 'lr'\?\)"):
        TrainConfig.of(None, lrr=1e-3)
    with pytest.raises(ProbebenchError, match="--epochs must be an integer from 1 to 100,000, not 0"):
        TrainConfig(epochs=0)


def test_fit_with_a_config_or_with_keywords_is_the_same_run(tiny, tmp_path):
    """``train=TrainConfig(epochs=3)`` and ``epochs=3`` are one protocol: the second fit reuses the first run."""
    from probebench import extract, fit

    spec, root = tiny
    opts = dict(weights="random", resize=40, crop=32, data_root=root, cache_dir=tmp_path / "c", progress=False)
    extract("resnet50", str(spec), workers=0, **opts)
    first = fit("resnet50", str(spec), runs_dir=tmp_path / "runs", train=TrainConfig(epochs=3, lr=1e-3), **opts)
    again = fit("resnet50", str(spec), runs_dir=tmp_path / "runs", epochs=3, lr=1e-3, **opts)
    assert again == first
