"""Time the study's head training on cached features (100 epochs, batch 32, Adam, best validation epoch) two
ways in one run: a plain eager PyTorch loop as a user would write it, and probebench's ``LinearHead``; prints
both, their ratio, and how far apart their test probabilities are (same initial weights, same batches).

    python benchmarks/fit_speed.py                 # 10,000 x 1,024, 2 classes
    python benchmarks/fit_speed.py --n 5000 --dim 768 --classes 7
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from torch import nn

from probebench.train.heads import LinearHead
from probebench.train.loop import epoch_batches, seeded_init
from probebench.threads import thread_counts


def eager_loop(x, y, xv, yv, n_classes: int, epochs: int, seed: int = 0) -> tuple[nn.Module, float]:
    """The textbook loop: nn.Linear, cross-entropy, autograd, torch.optim.Adam, validation after each epoch."""
    start = time.perf_counter()
    model = seeded_init(lambda: nn.Linear(x.shape[1], n_classes), seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xt, yt, xvt, yvt = map(torch.as_tensor, (x, y, xv, yv))
    best, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        for idx in epoch_batches(len(xt), 32, seed, epoch):  # probebench's order, so the results compare
            idx = torch.from_numpy(idx)
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (model(xvt).argmax(1) == yvt).double().mean().item()
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="training samples")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    y = rng.integers(0, args.classes, args.n)
    x[np.arange(args.n), y] += 0.3  # a little signal, so that epochs differ in validation accuracy
    xv, yv = x[: args.n // 5], y[: args.n // 5]
    reference, eager_s = eager_loop(x, y, xv, yv, args.classes, args.epochs)
    start = time.perf_counter()
    head = LinearHead(epochs=args.epochs).fit(x, y, xv, yv, args.classes)
    ours_s = time.perf_counter() - start
    with torch.no_grad():
        expected = torch.softmax(reference(torch.from_numpy(xv)), 1).numpy()
    diff = float(np.abs(head.predict_proba(xv) - expected).max())
    print(json.dumps({"threads": thread_counts(), "n": args.n, "dim": args.dim, "classes": args.classes, "epochs": args.epochs,
                      "batch_size": 32, "eager_pytorch_seconds": round(eager_s, 2),
                      "probebench_seconds": round(ours_s, 2), "speedup": round(eager_s / ours_s, 1),
                      "max_abs_probability_difference": diff, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
