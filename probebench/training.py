"""Seeding and batch order shared by every training loop, and the head training loop on arrays.

The order of epoch ``e`` depends only on (seed, e), so a resumed run, the cached path and an
end-to-end run with the same seed all see the same batches.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of epoch ``epoch``: a permutation seeded by (seed, epoch), cut in order."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def seeded_init(module_factory, seed: int) -> nn.Module:
    """Build a module under ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_factory()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y)."""
    model.eval()
    logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).double().mean().item()


def train_classifier(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                     y_val: np.ndarray, *, epochs: int = 100, lr: float = 1e-4, batch_size: int = 32,
                     weight_decay: float = 0.0, seed: int = 0, on_epoch=None) -> tuple[nn.Module, list[dict]]:
    """Adam + cross-entropy over seeded shuffled batches; returns the best-validation-accuracy model.

    The first epoch reaching the best validation accuracy is kept; the history has one row per epoch.
    """
    xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.long)
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    best_acc, best_state, history = -1.0, None, []
    for epoch in range(1, epochs + 1):
        model.train()
        total, correct, seen = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long), 0
        for idx in epoch_batches(len(xt), batch_size, seed, epoch):
            idx = torch.from_numpy(idx)
            xb, yb = xt[idx], yt[idx]
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(idx)
        val_loss, val_acc = evaluate(model, xv, yv)
        row = {"epoch": epoch, "train_loss": total.item() / seen, "train_accuracy": correct.item() / seen,
               "val_loss": val_loss, "val_accuracy": val_acc}
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
            row["best"] = True
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    model.load_state_dict(best_state)
    model.eval()
    return model, history
