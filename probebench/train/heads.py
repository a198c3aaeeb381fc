"""Heads on cached features, scikit-learn estimators (``Head``): ``fit(X, y[, X_val, y_val, n_classes])``,
``predict_proba(X)``, ``predict``, ``score``; ``clone`` and scikit-learn's own estimator checks pass.

- ``linear``: the study's new layer, trained by the study's protocol (``train.config.PROTOCOL``: Adam, lr 1e-4,
  batch 32, 100 epochs, best validation epoch kept);
- ``mlp``: D -> hidden -> K with ReLU, as the study's code used for DINOv2;
- ``logreg``: multinomial logistic regression (L-BFGS), C chosen on validation from a log grid;
- ``knn``: cosine similarity on L2-normalised features, temperature-weighted votes (DINOv2's kNN
  evaluation), k chosen on validation;
- ``GridHead``: many linear or MLP heads over learning rate x weight decay trained at once (stacked
  weights, one batched product per step), the best on validation kept.

Choices are made on the validation split only; the test split is never seen before ``predict_proba``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from probebench.errors import ProbebenchError
from probebench.threads import one_thread
from probebench.train.config import PROTOCOL
from probebench.train.loop import (LinearAdamStep, adam_update, epoch_batches, improved, seeded_init,
                                   train_classifier, train_loop)

DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_WDS = (0.0, 1e-4, 1e-3, 1e-2)
DEFAULT_CS = tuple(10.0 ** e for e in range(-4, 5))
DEFAULT_KS = (10, 20, 50)
DEFAULT_HIDDEN = 256  # the mlp head's width (--hidden)


def softmax_proba(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities from logits, in float64 (the same for every head and path)."""
    return torch.softmax(logits.detach().double(), dim=1).cpu().numpy()


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's ``class_weight='balanced'``: n / (K * count), 0 for absent classes."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return np.divide(len(y), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)


def _accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == y).mean())


class Head:
    """The contract every entry of ``HEADS`` keeps, scikit-learn's estimator rules: every parameter is an argument of
    ``__init__`` stored under its own name (``get_params``, so ``sklearn.base.clone`` works); ``fit`` returns the head
    and sets only attributes ending in ``_`` (``classes_``, ``n_features_in_``, ``history_``, ``best_epoch_``,
    ``selection_`` at least); ``predict_proba`` gives (n, n_classes) rows summing to 1, ``predict`` the classes and
    ``score`` the accuracy; ``takes`` lists the protocol options (``TrainConfig`` fields and ``class_weight``) the
    head uses, and ``make_head`` refuses others.

    ``fit(X, y)`` alone works as in scikit-learn: labels of any kind, encoded into ``classes_``; without validation
    arrays nothing is selected on data the head has not seen: the trained heads keep their last epoch (``patience``
    is not used), logistic regression takes C = 1 (scikit-learn's default) and kNN the first k of its grid.
    probebench itself passes ``n_classes`` (labels 0..K-1, a class may be absent from a label budget's training
    part) and the validation split. A subclass implements ``_fit`` and ``_proba``.
    """

    name = ""
    takes: tuple[str, ...] = ()
    _estimator_type = "classifier"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())

    @classmethod
    def _param_names(cls) -> list[str]:
        import inspect

        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                names += [p.name for p in inspect.signature(klass.__init__).parameters.values()
                          if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        return names

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> Head:
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ValueError(f"the {self.name} head has no parameter(s) {unknown}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def fit(self, x, y, x_val=None, y_val=None, n_classes: int | None = None, on_epoch=None) -> Head:
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import validate_data

        if hasattr(x, "batches"):  # features streamed from a store (features.cache.StoreRows), checked as read
            if self.name != "linear":
                raise ProbebenchError(f"the {self.name} head needs its training features in memory; only the linear "
                                      "head trains from the store (raise --fit-memory)")
            self.n_features_in_, y = x.shape[1], np.asarray(y)
        else:
            x, y = validate_data(self, x, y, dtype=(np.float32, np.float64))
        check_classification_targets(y)
        if n_classes is None:  # scikit-learn's use: any labels, encoded
            self.classes_, y = np.unique(y, return_inverse=True)
            if y_val is not None:
                y_val = np.searchsorted(self.classes_, y_val)
            n_classes = len(self.classes_)
        else:  # probebench's own: labels 0..n_classes-1
            self.classes_ = np.arange(n_classes)
        if x_val is not None:
            x_val = validate_data(self, x_val, reset=False, dtype=(np.float32, np.float64), ensure_min_samples=0)
        self._fit(x, np.asarray(y, dtype=np.int64), x_val, None if y_val is None else np.asarray(y_val, np.int64),
                  n_classes, on_epoch)
        return self

    def predict_proba(self, x) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self, "classes_")
        x = validate_data(self, x, reset=False, dtype=(np.float32, np.float64), ensure_min_samples=0)
        return self._proba(x) if len(x) else np.zeros((0, len(self.classes_)))

    def predict(self, x) -> np.ndarray:
        proba = self.predict_proba(x)  # first: an unfitted head says so
        return self.classes_[proba.argmax(axis=1)]

    def score(self, x, y) -> float:
        return float((self.predict(x) == np.asarray(y)).mean())

    def _fit(self, x, y, x_val, y_val, n_classes: int, on_epoch) -> None:
        raise NotImplementedError

    def _proba(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LinearHead(Head):
    """The study's head: one new linear layer trained with Adam; the best validation epoch is kept."""

    name = "linear"
    takes = ("epochs", "lr", "batch_size", "weight_decay", "seed", "class_weight", "select", "optimizer", "patience")

    def __init__(self, epochs: int = PROTOCOL.epochs, lr: float = PROTOCOL.lr, batch_size: int = PROTOCOL.batch_size,
                 weight_decay: float = PROTOCOL.weight_decay, seed: int = PROTOCOL.seed,
                 class_weight: str | None = None, select: str = PROTOCOL.select_metric,
                 optimizer: str = PROTOCOL.optimizer, patience: int | None = PROTOCOL.patience):
        self.epochs, self.lr, self.batch_size, self.weight_decay = epochs, lr, batch_size, weight_decay
        self.seed, self.class_weight, self.select = seed, class_weight, select
        self.optimizer, self.patience = optimizer, patience

    def params(self) -> dict:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "weight_decay": self.weight_decay, "seed": self.seed, "optimizer": self.optimizer,
                "patience": self.patience, "loss": "cross_entropy", "select": self.select,
                "class_weight": self.class_weight}

    def describe(self) -> str:
        return self.name

    def build(self, dim: int, n_classes: int) -> nn.Module:
        return nn.Linear(dim, n_classes)

    def _fit(self, x, y, x_val, y_val, n_classes: int, on_epoch) -> None:
        weight = balanced_weights(y, n_classes) if self.class_weight == "balanced" else None
        self.model_ = seeded_init(lambda: self.build(x.shape[1], n_classes), self.seed)
        with one_thread():  # minibatch products: more threads only synchronise (threads.py)
            self.model_, state = train_classifier(
                self.model_, x, y, x_val, y_val, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                weight_decay=self.weight_decay, optimizer=self.optimizer, seed=self.seed, select=self.select,
                patience=self.patience, class_weight=weight, on_epoch=on_epoch)
        self.history_, self.best_epoch_, self.selection_ = state.history, state.best_epoch, None

    @torch.no_grad()
    def _proba(self, x: np.ndarray) -> np.ndarray:
        return softmax_proba(self.model_(torch.as_tensor(x, dtype=torch.float32)))


class MLPHead(LinearHead):
    """D -> hidden -> K with ReLU, trained like the linear head."""

    name = "mlp"
    takes = (*LinearHead.takes, "hidden")

    def __init__(self, hidden: int = DEFAULT_HIDDEN, epochs: int = PROTOCOL.epochs, lr: float = PROTOCOL.lr,
                 batch_size: int = PROTOCOL.batch_size, weight_decay: float = PROTOCOL.weight_decay,
                 seed: int = PROTOCOL.seed, class_weight: str | None = None, select: str = PROTOCOL.select_metric,
                 optimizer: str = PROTOCOL.optimizer, patience: int | None = PROTOCOL.patience):
        super().__init__(epochs, lr, batch_size, weight_decay, seed, class_weight, select, optimizer, patience)
        self.hidden = hidden

    def params(self) -> dict:
        return {**super().params(), "hidden": self.hidden}

    def describe(self) -> str:
        return f"mlp {self.hidden}"

    def build(self, dim: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, n_classes))


class StudyMLPHead(MLPHead):
    """The study's DINOv2 head: Linear(D, 256) -> ReLU -> Linear(256, K) on the 1,000 ImageNet logits
    (``--tap imagenet_logits``), trained like the linear head (Adam 1e-4, batch 32, 100 epochs, best validation
    accuracy); usable on any tap. The width is the study's and ignores ``--hidden``."""

    name = "study_mlp"
    takes = (*LinearHead.takes, "hidden")  # accepted, and documented as ignored: the study's width is fixed

    def __init__(self, hidden: int = DEFAULT_HIDDEN, epochs: int = PROTOCOL.epochs, lr: float = PROTOCOL.lr,
                 batch_size: int = PROTOCOL.batch_size, weight_decay: float = PROTOCOL.weight_decay,
                 seed: int = PROTOCOL.seed, class_weight: str | None = None, select: str = PROTOCOL.select_metric,
                 optimizer: str = PROTOCOL.optimizer, patience: int | None = PROTOCOL.patience):
        super().__init__(hidden, epochs, lr, batch_size, weight_decay, seed, class_weight, select, optimizer,
                         patience)

    def build(self, dim: int, n_classes: int) -> nn.Module:  # the study's width, whatever ``hidden`` says
        return nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, n_classes))

    def params(self) -> dict:
        return {**super().params(), "hidden": 256}

    def describe(self) -> str:
        return "study mlp 256"


class LogRegHead(Head):
    """Multinomial logistic regression (scikit-learn, L-BFGS) on standardised features (the training rows' mean
    and sd); C from a log grid chosen on validation, fitted along the path from strong to weak regularisation, each
    fit starting from the previous one's weights (warm start): a fraction of nine cold fits' iterations."""

    name = "logreg"

    takes = ("class_weight", "seed")

    def __init__(self, cs=DEFAULT_CS, class_weight: str | None = None, max_iter: int = 1000,
                 seed: int = PROTOCOL.seed):
        self.cs, self.class_weight, self.max_iter, self.seed = cs, class_weight, max_iter, seed

    def params(self) -> dict:
        return {"C_grid": list(self.cs), "class_weight": self.class_weight, "solver": "lbfgs",
                "max_iter": self.max_iter, "select": "val_accuracy", "seed": self.seed, "standardize": True,
                "warm_start": True}

    def describe(self) -> str:
        return f"logreg C={self.selection_['chosen']['C']:g}"

    def _model(self, c: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, solver="lbfgs", max_iter=self.max_iter, class_weight=self.class_weight,
                                  warm_start=True)

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
        out = x.copy()  # as StandardScaler transforms: float64 statistics, applied in x's precision
        out -= self.mean_.astype(x.dtype)
        out /= self.scale_.astype(x.dtype)
        return out

    def _fit(self, x, y, x_val, y_val, n_classes: int, on_epoch) -> None:
        import copy
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        x = np.asarray(x)
        x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)  # cached features stay float32
        self.mean_ = x.mean(axis=0, dtype=np.float64)
        sd = x.std(axis=0, dtype=np.float64)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        xs = self._scaled(x)
        xv = self._scaled(x_val) if x_val is not None else None
        grid, best, model, iters = [], None, None, 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for c in sorted(self.cs) if x_val is not None else (1.0,):  # no validation: scikit-learn's default C
                model = (self._model(c) if model is None else model.set_params(C=c)).fit(xs, y)  # warm start
                iters += int(np.max(model.n_iter_))
                score = _accuracy(self._full_proba(model, xv, n_classes), y_val) if xv is not None else None
                grid.append({"C": c, "val_accuracy": score})
                if best is None or score > best[0]:  # ties: the stronger regularisation (smaller C)
                    best = (score, c, copy.deepcopy(model))
        self.model_, self.n_classes_, self.n_iter_ = best[2], n_classes, iters
        self.selection_ = {"grid": grid, "chosen": {"C": best[1], "val_accuracy": best[0]}}
        self.history_, self.best_epoch_ = [], None

    @staticmethod
    def _full_proba(model, x, n_classes: int) -> np.ndarray:
        """Probabilities for every class, also those absent from training (probability 0)."""
        out = np.zeros((len(x), n_classes))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    def _proba(self, x: np.ndarray) -> np.ndarray:
        return self._full_proba(self.model_, self._scaled(x), self.n_classes_)


def knn_proba(train: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int, n_classes: int,
              temperature: float = 0.07, batch: int = 1024) -> np.ndarray:
    """DINOv2's weighted kNN: cosine similarity of L2-normalised features, votes weighted exp(sim / T)."""
    def unit(a):
        a = torch.as_tensor(a, dtype=torch.float32)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)

    bank, targets = unit(train), torch.as_tensor(labels, dtype=torch.long)
    k = min(k, len(bank))
    out = []
    for q in unit(query).split(batch):
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), n_classes, dtype=torch.float64)
        votes.scatter_add_(1, targets[idx], (sims.double() / temperature).exp())
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out).numpy()


class KNNHead(Head):
    """Weighted kNN on cosine similarity; k chosen on validation from ``ks``."""

    name = "knn"

    takes = ("seed",)

    def __init__(self, ks=DEFAULT_KS, temperature: float = 0.07, seed: int = PROTOCOL.seed):
        self.ks, self.temperature, self.seed = ks, temperature, seed

    def params(self) -> dict:
        return {"k_grid": list(self.ks), "temperature": self.temperature, "metric": "cosine",
                "select": "val_accuracy"}

    def describe(self) -> str:
        return f"knn k={self.selection_['chosen']['k']}"

    def _fit(self, x, y, x_val, y_val, n_classes: int, on_epoch) -> None:
        ks = sorted({min(k, len(x)) for k in tuple(self.ks)})  # a few labels (--shots): k is at most the training set
        if x_val is None:  # no validation: the first k of the grid
            grid = [{"k": min(tuple(self.ks)[0], len(x)), "val_accuracy": None}]
        else:
            grid = [{"k": k, "val_accuracy": _accuracy(knn_proba(x, y, x_val, k, n_classes, self.temperature),
                                                       y_val)} for k in ks]
        best = max(grid, key=lambda g: (g["val_accuracy"] or 0, -g["k"]))
        self.train_, self.labels_, self.n_classes_ = x, y, n_classes
        self.selection_ = {"grid": grid, "chosen": best}
        self.history_, self.best_epoch_ = [], None

    def _proba(self, x: np.ndarray) -> np.ndarray:
        return knn_proba(self.train_, self.labels_, x, self.selection_["chosen"]["k"], self.n_classes_,
                         self.temperature)


class StackedHeads(nn.Module):
    """H independent linear or MLP heads with stacked weights: forward(x) -> (H, B, K) in one batched product."""

    def __init__(self, single: nn.Module, n_heads: int):
        super().__init__()
        layers = [m for m in single.modules() if isinstance(m, nn.Linear)]
        self.weights = nn.ParameterList(
            [nn.Parameter(m.weight.detach().T.unsqueeze(0).repeat(n_heads, 1, 1).clone()) for m in layers])
        self.biases = nn.ParameterList(
            [nn.Parameter(m.bias.detach().unsqueeze(0).repeat(n_heads, 1).clone()) for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(len(self.weights[0]), -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h

    def head(self, i: int) -> dict:
        return {"w": [w[i].detach().clone() for w in self.weights], "b": [b[i].detach().clone() for b in self.biases]}


class StackedAdam:
    """torch.optim.Adam's update, elementwise, with one learning rate and weight decay per stacked head."""

    def __init__(self, params, lrs: torch.Tensor, wds: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lrs, self.wds, self.betas, self.eps = list(params), lrs, wds, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1,) + (1,) * (p.dim() - 1)
            grad = p.grad + self.wds.view(shape) * p
            m.lerp_(grad, 1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.sub_(self.lrs.view(shape) / bc1 * m / denom)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class StackedLinearAdamStep:
    """``LinearAdamStep`` for H stacked linear heads (``StackedHeads`` of one layer): one product gives every head's
    logits, one its gradient, and Adam runs with one learning rate and weight decay per head, in NumPy on one
    (D + 1, H, K) array whose views are the stacked weights and biases."""

    def __init__(self, model: StackedHeads, lrs, wds, class_weight: np.ndarray | None = None, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        w, b = model.weights[0].detach(), model.biases[0].detach()  # (H, D, K), (H, K)
        self.wb = np.ascontiguousarray(torch.cat([w, b[:, None, :]], 1).permute(1, 0, 2).numpy())  # (D+1, H, K)
        view = torch.from_numpy(self.wb)
        model.weights[0].data = view[:-1].permute(1, 0, 2)
        model.biases[0].data = view[-1]
        self.m, self.v = np.zeros_like(self.wb), np.zeros_like(self.wb)
        self.lrs = np.asarray(lrs, dtype=np.float64)[None, :, None]
        self.wds = np.asarray(wds, dtype=np.float32)[None, :, None]
        self.betas, self.eps, self.t = betas, eps, 0
        self.class_weight = None if class_weight is None else np.asarray(class_weight, dtype=np.float32)

    def __call__(self, model, x: np.ndarray, y: np.ndarray, optimizer=None) -> tuple:
        d1, h, k = self.wb.shape
        z = (x @ self.wb.reshape(d1, h * k)).reshape(len(y), h, k)  # (B, H, K)
        zmax = z.max(axis=2, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=2, keepdims=True)
        rows = np.arange(len(y))
        nll = np.log(s[..., 0]) + zmax[..., 0] - z[rows, :, y]  # (B, H)
        g = e / s
        g[rows, :, y] -= 1.0
        if self.class_weight is None:
            g /= np.float32(len(y))
            loss_sum = float(nll.sum(dtype=np.float64)) / h
        else:
            cw = self.class_weight[y]
            total = cw.sum(dtype=np.float32)
            g *= (cw / total)[:, None, None]
            loss_sum = float((cw[:, None] * nll).sum(dtype=np.float64) / total * len(y)) / h
        self.t += 1
        adam_update(self.wb, self.m, self.v, (x.T @ g.reshape(len(y), h * k)).reshape(d1, h, k), self.t, self.lrs,
                    self.wds, betas=self.betas, eps=self.eps)  # StackedAdam's update: Adam with L2, per head
        return loss_sum, int((z.argmax(axis=2) == y[:, None]).sum()) // h, len(y)


class GridHead:
    """Linear or MLP heads over learning rate x weight decay, trained together; the best on validation kept."""

    def __init__(self, kind: str = "linear", lrs=DEFAULT_LRS, wds=DEFAULT_WDS, epochs: int = PROTOCOL.epochs,
                 batch_size: int = PROTOCOL.batch_size, seed: int = PROTOCOL.seed, hidden: int = DEFAULT_HIDDEN,
                 class_weight: str | None = None, select: str = PROTOCOL.select_metric,
                 optimizer: str = PROTOCOL.optimizer, patience: int | None = PROTOCOL.patience):
        if kind not in ("linear", "mlp"):
            raise ProbebenchError(f"--grid works with the linear and mlp heads, not {kind!r}")
        if optimizer != "adam" or patience is not None:
            raise ProbebenchError("--grid trains with Adam for the full epochs; it takes no optimizer or patience")
        self.kind, self.lrs, self.wds, self.epochs, self.batch_size = kind, tuple(lrs), tuple(wds), epochs, batch_size
        self.seed, self.hidden, self.class_weight, self.select = seed, hidden, class_weight, select
        self.name = f"{kind}-grid"
        self.cells = [(lr, wd) for lr in self.lrs for wd in self.wds]

    def params(self) -> dict:
        return {"kind": self.kind, "lr_grid": list(self.lrs), "weight_decay_grid": list(self.wds),
                "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                "hidden": self.hidden if self.kind == "mlp" else None, "class_weight": self.class_weight,
                "optimizer": "adam", "select": self.select}

    def describe(self) -> str:
        c = self.selection_["chosen"]
        return f"{self.kind} grid: lr {c['lr']:g}, wd {c['weight_decay']:g}"

    def _single(self, dim: int, n_classes: int) -> nn.Module:
        head = (MLPHead(hidden=self.hidden) if self.kind == "mlp" else LinearHead())
        return seeded_init(lambda: head.build(dim, n_classes), self.seed)

    def fit(self, x, y, x_val, y_val, n_classes: int, on_epoch=None):
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.long)
        n_heads = len(self.cells)
        model = StackedHeads(self._single(x.shape[1], n_classes), n_heads)
        opt = StackedAdam(model.parameters(), torch.tensor([c[0] for c in self.cells]),
                          torch.tensor([c[1] for c in self.cells]))
        weight = (torch.as_tensor(balanced_weights(y, n_classes), dtype=torch.float32)
                  if self.class_weight == "balanced" else None)
        best = np.full(n_heads, np.nan)  # per cell, by the one best-epoch rule (training.improved)
        best_epoch = np.zeros(n_heads, dtype=int)
        best_state: list = [None] * n_heads

        def batches(epoch):
            for idx in epoch_batches(len(xt), self.batch_size, self.seed, epoch):
                idx = torch.from_numpy(idx)
                yield xt[idx], yt[idx]

        if self.kind == "linear":  # hand-written gradients and Adam (StackedLinearAdamStep); MLPs take autograd
            fast = StackedLinearAdamStep(model, [c[0] for c in self.cells], [c[1] for c in self.cells],
                                         None if weight is None else weight.numpy())
            xa, ya = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)

            def batches(epoch):  # noqa: F811 - the NumPy batches of the fast step
                for idx in epoch_batches(len(xa), self.batch_size, self.seed, epoch):
                    yield LinearAdamStep.inputs(xa, idx), ya[idx]

        def step(m, xb, yb, optimizer):
            logits = m(xb)  # (H, B, K)
            loss = nn.functional.cross_entropy(logits.reshape(-1, n_classes), yb.repeat(n_heads),
                                               weight=weight, reduction="none").view(n_heads, -1)
            loss = (loss.sum(1) / (weight[yb].sum() if weight is not None else len(yb))).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.detach().double() * len(yb) / n_heads, (logits.detach().argmax(2) == yb).sum() // n_heads, len(yb)

        def validate(m):
            epoch = len(loop_history) + 1
            with torch.no_grad():
                val_logits = m(xv)
                val_acc = (val_logits.argmax(2) == yv).double().mean(1).numpy()
                val_loss = torch.stack([nn.functional.cross_entropy(v, yv) for v in val_logits]).numpy()
            score = (val_acc if self.select == "val_accuracy" else val_loss).astype(np.float32).astype(float)
            better = improved(self.select, score, best)
            for h in np.flatnonzero(better):
                best_state[h] = m.head(int(h))
            best[better], best_epoch[better] = score[better], epoch
            loop_history.append(epoch)
            return {"val_accuracy": float(val_acc.max()), "val_loss": float(val_loss.min()),
                    "val_accuracy_mean": float(val_acc.mean())}

        loop_history: list = []
        with one_thread():  # the grid's minibatch products are small: one thread, half the CPU, same speed
            state = train_loop(model, opt, batches, validate, epochs=self.epochs, seed=self.seed,
                               step=fast if self.kind == "linear" else step,
                               select=self.select, patience=None,
                               on_epoch=(lambda s, row: on_epoch(row)) if on_epoch else None)
        history = state.history
        sign = 1.0 if self.select == "val_accuracy" else -1.0
        chosen = int(np.argmax(np.where(np.isnan(best), -np.inf, sign * best)))  # first on ties: lr-major order
        self.model_ = StackedHeads(self._single(x.shape[1], n_classes), 1)
        with torch.no_grad():
            for i, (w, b) in enumerate(zip(best_state[chosen]["w"], best_state[chosen]["b"])):
                self.model_.weights[i][0].copy_(w)
                self.model_.biases[i][0].copy_(b)
        grid = [{"lr": lr, "weight_decay": wd, self.select: float(best[h]), "best_epoch": int(best_epoch[h])}
                for h, (lr, wd) in enumerate(self.cells)]
        self.selection_ = {"grid": grid, "chosen": grid[chosen]}
        self.history_, self.best_epoch_ = history, int(best_epoch[chosen])
        return self

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax_proba(self.model_(torch.as_tensor(x, dtype=torch.float32))[0])


HEADS = {"linear": LinearHead, "mlp": MLPHead, "study_mlp": StudyMLPHead, "logreg": LogRegHead, "knn": KNNHead}


# what a head option is when nobody set it (the protocol's training values): an option a head does not use is
# refused only when it was set to something else, so `fit --head knn --lr 0.1` says so instead of ignoring it
HEAD_DEFAULTS = {"epochs": PROTOCOL.epochs, "lr": PROTOCOL.lr, "batch_size": PROTOCOL.batch_size,
                 "weight_decay": PROTOCOL.weight_decay, "optimizer": PROTOCOL.optimizer,
                 "select": PROTOCOL.select_metric, "patience": PROTOCOL.patience, "hidden": DEFAULT_HIDDEN,
                 "class_weight": None}
GRID_TAKES = ("epochs", "batch_size", "seed", "class_weight", "select", "optimizer", "patience")  # lr x wd: the grid


def trains(name: str, grid: bool = False) -> bool:
    """Whether a head is trained by the protocol (epochs, lr, ...): the linear and MLP heads and grids, not
    logreg or kNN (a study's [training] table applies to the former only)."""
    return grid or "lr" in HEADS[name].takes


def make_head(name: str, *, grid: bool = False, **options):
    """A head by name with the options it takes (each head lists them in ``takes``); ``grid`` trains linear / mlp
    heads over the lr x weight-decay grid. An option set away from its default that the head does not use is an
    error naming it, never silently dropped."""
    if name not in HEADS:
        raise ProbebenchError(f"unknown head {name!r}; heads: {', '.join(HEADS)}")
    takes = (*GRID_TAKES, *(("hidden",) if name == "mlp" else ())) if grid else HEADS[name].takes
    unused = sorted(k for k, v in options.items() if k not in takes and k in HEAD_DEFAULTS and v != HEAD_DEFAULTS[k])
    if unused:
        from probebench.validate import flag

        flags = ", ".join(flag({"select": "select_metric"}.get(k, k)) for k in unused)
        raise ProbebenchError(f"the {name}{' grid' if grid else ''} head does not use {flags}: remove "
                              f"{'it' if len(unused) == 1 else 'them'} (it would be recorded but change nothing)")
    kept = {k: v for k, v in options.items() if k in takes}
    return GridHead(kind=name, **kept) if grid else HEADS[name](**kept)

