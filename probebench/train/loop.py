"""The one training loop, shared by heads on cached features and end-to-end fine-tuning.

Batch order and randomness depend only on (seed, epoch): epoch ``e`` shuffles with a generator
seeded by (seed, e) and reseeds torch (dropout) the same way. So the cached path and the
end-to-end path see the same batches, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn


SELECT_METRICS = {"val_accuracy": max, "val_loss": min}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of epoch ``epoch``: positions 0..n-1 permuted by (seed, epoch), cut in order."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed torch for an epoch, so dropout masks do not depend on what ran before (resume-safe)."""
    torch.manual_seed(int(np.random.default_rng([seed, epoch, 1]).integers(2**62)))


def seeded_init(module_factory, seed: int) -> nn.Module:
    """Build a module under ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_factory()


def make_optimizer(params, name: str, lr: float, weight_decay: float):
    """The study's Adam (or AdamW / SGD with momentum 0.9)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; optimizers: adam, adamw, sgd")


@dataclass
class LoopState:
    """Where training stands after ``epoch`` completed epochs; enough to resume exactly."""

    epoch: int = 0
    best_metric: float = float("nan")
    best_epoch: int = 0
    best_state: dict | None = None
    history: list = field(default_factory=list)
    stale_epochs: int = 0  # epochs since the last improvement (for --patience)


def improved(select: str, new, old):
    """The one best-epoch rule, for every head, the grid and fine-tuning: strictly better than the best so far
    (so the first epoch that reaches the best value is kept), and anything beats no value yet (NaN). ``new`` and
    ``old`` are numbers, or arrays with one value per stacked head."""
    new, old = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    better = new > old if SELECT_METRICS[select] is max else new < old
    return better | np.isnan(old)


def train_loop(model: nn.Module, optimizer, train_batches: Callable[[int], Iterable[tuple]],
               validate: Callable[[nn.Module], dict], *, epochs: int, seed: int, step: Callable | None = None,
               select: str, patience: int | None, state: LoopState | None = None,
               on_epoch: Callable[[LoopState, dict], None] | None = None) -> LoopState:
    """Train for ``epochs`` epochs (continuing from ``state``), keeping the best epoch by ``select``.

    ``train_batches(epoch)`` yields (inputs, labels); ``step(model, x, y, optimizer)`` does one
    optimisation step and returns (loss sum, correct, count) (default: cross-entropy, backward, step);
    ``validate(model)`` returns at least ``val_loss`` and ``val_accuracy``. The first epoch reaching
    the best value is kept; ``patience`` stops after that many epochs without improvement.
    """
    if select not in SELECT_METRICS:
        raise ValueError(f"select metric {select!r} is not one of {', '.join(SELECT_METRICS)}")
    state = state or LoopState()
    step = step or cross_entropy_step
    for epoch in range(state.epoch + 1, epochs + 1):
        if patience is not None and state.stale_epochs >= patience:
            break
        seed_epoch(seed, epoch)
        model.train()
        started = time.perf_counter()
        total, correct, seen = 0.0, 0, 0  # numbers or tensors, as the step returns them (tensors: no sync per step)
        for x, y in train_batches(epoch):
            loss_sum, n_correct, n = step(model, x, y, optimizer)
            total += loss_sum
            correct += n_correct
            seen += n
        train_seconds = time.perf_counter() - started
        model.eval()
        row = {"epoch": epoch, "train_loss": float(total) / seen, "train_accuracy": int(correct) / seen,
               **validate(model), "train_seconds": round(train_seconds, 4),
               "train_samples_per_s": round(seen / train_seconds, 2)}
        if bool(improved(select, row[select], state.best_metric)):
            state.best_metric, state.best_epoch = row[select], epoch
            state.best_state = copy.deepcopy(model.state_dict())
            state.stale_epochs = 0
            row["best"] = True
        else:
            state.stale_epochs += 1
        state.history.append(row)
        state.epoch = epoch
        if on_epoch is not None:
            on_epoch(state, row)
    return state


def cross_entropy_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer,
                       weight: torch.Tensor | None = None) -> tuple:
    """One optimiser step on mean (optionally class-weighted) cross-entropy; returns (loss sum, correct, count)."""
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y, weight=weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().double() * len(y), (logits.detach().argmax(1) == y).sum(), len(y)


@torch.no_grad()
def logits_in_batches(model: nn.Module, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def val_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Validation loss and accuracy from logits."""
    return {"val_loss": nn.functional.cross_entropy(logits.float(), y).item(),
            "val_accuracy": (logits.argmax(1) == y).double().mean().item()}


def adam_update(param: np.ndarray, m: np.ndarray, v: np.ndarray, grad: np.ndarray, t: int, lr, weight_decay,
                decoupled: bool = False, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """``torch.optim.Adam`` (or ``AdamW`` when ``decoupled``; no amsgrad) step ``t`` on float32 arrays, in place,
    step by step as PyTorch writes it; ``lr`` and ``weight_decay`` may be arrays broadcasting against ``param``
    (one per stacked head)."""
    b1, b2 = betas
    lr, wd = np.asarray(lr, dtype=np.float64), np.asarray(weight_decay, dtype=np.float32)
    if np.any(wd):
        if decoupled:
            param *= (1 - lr * wd).astype(np.float32)
        else:
            grad += wd * param
    m += (grad - m) * np.float32(1 - b1)  # lerp, as PyTorch
    v *= np.float32(b2)
    v += np.float32(1 - b2) * grad * grad
    denom = np.sqrt(v) / np.float32(math.sqrt(1 - b2 ** t)) + np.float32(eps)
    param -= (lr / (1 - b1 ** t)).astype(np.float32) * m / denom


class LinearAdamStep:
    """One optimiser step of a linear layer on mean (class-weighted) cross-entropy, gradients written by hand and
    Adam/AdamW applied in place, in NumPy on the layer's own memory: the same arithmetic as autograd plus
    ``torch.optim.Adam``, without their per-step overhead (about 10 small array operations per batch instead of
    a graph, a backward pass and an optimiser dispatch), which is what a 32-sample step on cached features costs.
    """

    def __init__(self, layer: nn.Linear, lr: float, weight_decay: float, decoupled: bool,
                 class_weight: np.ndarray | None = None, betas=(0.9, 0.999), eps: float = 1e-8):
        # one array for weight and bias ([W | b]); the layer's parameters become views of it, so validation,
        # best-epoch snapshots and predictions see every update
        self.wb = np.ascontiguousarray(torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1).numpy())
        layer.weight.data = torch.from_numpy(self.wb)[:, :-1]
        layer.bias.data = torch.from_numpy(self.wb)[:, -1]
        self.m, self.v = np.zeros_like(self.wb), np.zeros_like(self.wb)
        self.lr, self.wd, self.decoupled, self.betas, self.eps, self.t = lr, weight_decay, decoupled, betas, eps, 0
        self.class_weight = None if class_weight is None else np.asarray(class_weight, dtype=np.float32)

    @staticmethod
    def inputs(x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Rows ``idx`` of the features with a column of ones appended, so that one product gives the logits and
        one the gradient; made per batch, so the training features are never copied whole."""
        rows = x if idx is None else x[idx]
        out = np.ones((len(rows), x.shape[1] + 1), dtype=np.float32)
        out[:, :-1] = rows
        return out

    def __call__(self, model, x: np.ndarray, y: np.ndarray, optimizer=None) -> tuple:
        """A step on a batch of ``inputs(...)`` rows and their labels; returns (loss sum, correct, count)."""
        z = x @ self.wb.T  # (B, K) logits: [x | 1] @ [W | b]^T
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        nll = (np.log(s[:, 0]) + zmax[:, 0] - z[rows, y])
        g = e / s  # softmax; minus the one-hot target, over the batch's (weighted) size
        g[rows, y] -= 1.0
        if self.class_weight is None:
            g /= np.float32(len(y))
            loss_sum = float(nll.sum(dtype=np.float64))
        else:
            cw = self.class_weight[y]
            total = cw.sum(dtype=np.float32)
            g *= (cw / total)[:, None]
            loss_sum = float((cw * nll).sum(dtype=np.float64) / total * len(y))
        self.t += 1
        adam_update(self.wb, self.m, self.v, g.T @ x, self.t, self.lr, self.wd, self.decoupled, self.betas, self.eps)
        return loss_sum, int((z.argmax(axis=1) == y).sum()), len(y)


def train_classifier(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
                     y_val: np.ndarray | None, *, epochs: int, lr: float, batch_size: int, weight_decay: float,
                     optimizer: str, seed: int, select: str, patience: int | None,
                     class_weight: np.ndarray | None = None, on_epoch=None) -> tuple[nn.Module, LoopState]:
    """Train a head on arrays of cached features; returns it with the best validation epoch's weights (without
    validation arrays, the last epoch's).

    A linear layer trained with Adam or AdamW takes ``LinearAdamStep`` (the same arithmetic, without autograd);
    any other model or optimiser takes autograd and ``torch.optim``.
    """
    if x_val is None:  # no validation: nothing to select on, so the full epochs run and the last is kept
        def validate(m):
            return {"val_loss": float("nan"), "val_accuracy": float("nan")}
        patience = None
    else:
        xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.long)

        def validate(m):
            return val_metrics(logits_in_batches(m, xv), yv)
    if isinstance(model, nn.Linear) and optimizer in ("adam", "adamw"):
        step = LinearAdamStep(model, lr, weight_decay, optimizer == "adamw", class_weight)
        yn, opt = np.asarray(y_train, dtype=np.int64), None
        if hasattr(x_train, "batches"):  # streamed from the store (features.cache.StoreRows): the same batches
            def batches(epoch):
                for xb, idx in x_train.batches(epoch_batches(len(x_train), batch_size, seed, epoch)):
                    yield step.inputs(xb), yn[idx]
        else:
            xn = np.asarray(x_train, dtype=np.float32)  # float32 features: no copy

            def batches(epoch):
                for idx in epoch_batches(len(xn), batch_size, seed, epoch):
                    yield step.inputs(xn, idx), yn[idx]
    else:
        xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.long)
        opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
        weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        step = lambda m, x, y, o: cross_entropy_step(m, x, y, o, weight)  # noqa: E731

        def batches(epoch):
            for idx in epoch_batches(len(xt), batch_size, seed, epoch):
                idx = torch.from_numpy(idx)
                yield xt[idx], yt[idx]

    state = train_loop(model, opt, batches, validate, epochs=epochs, seed=seed, select=select, patience=patience,
                       step=step, on_epoch=(lambda s, row: on_epoch(row)) if on_epoch else None)
    if x_val is None:
        state.best_epoch, state.best_metric = state.epoch, None
    else:
        model.load_state_dict(state.best_state)
    model.eval()
    return model, state
