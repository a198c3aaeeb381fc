"""Heads on cached features, scikit-learn style: ``fit(X, y, X_val, y_val)`` then ``predict_proba(X)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from probebench.training import seeded_init, train_classifier


def softmax_proba(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities from logits, in float64 (the same for every head and path)."""
    return torch.softmax(logits.detach().double(), dim=1).cpu().numpy()


class LinearHead:
    """The study's head: one new linear layer, Adam lr 1e-4, batch 32, 100 epochs, best val accuracy kept."""

    name = "linear"

    def __init__(self, epochs: int = 100, lr: float = 1e-4, batch_size: int = 32, weight_decay: float = 0.0,
                 seed: int = 0):
        self.epochs, self.lr, self.batch_size, self.weight_decay, self.seed = epochs, lr, batch_size, weight_decay, seed

    def params(self) -> dict:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "weight_decay": self.weight_decay, "seed": self.seed, "optimizer": "adam",
                "loss": "cross_entropy", "select": "val_accuracy"}

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
            on_epoch=None) -> "LinearHead":
        self.model_ = seeded_init(lambda: nn.Linear(x.shape[1], n_classes), self.seed)
        self.model_, state = train_classifier(
            self.model_, x, y, x_val, y_val, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            weight_decay=self.weight_decay, seed=self.seed, on_epoch=on_epoch)
        self.history_, self.best_epoch_ = state.history, state.best_epoch
        return self

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.model_(torch.as_tensor(x, dtype=torch.float32))
        return softmax_proba(logits)


HEADS = {"linear": LinearHead}
