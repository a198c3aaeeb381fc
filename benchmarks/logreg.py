"""CPU cost and validation/test accuracy of the logreg head (standardised, warm-started C path) against the same
grid fitted cold on raw features (nine independent L-BFGS fits, as probebench did before) and the default linear
head (100 epochs), on synthetic features with a class signal.

    python benchmarks/logreg.py                     # 5,000 x 1,024, 7 classes
    python benchmarks/logreg.py --n 10000
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from probebench.threads import apply_threads, thread_counts
from probebench.train.heads import DEFAULT_CS, LinearHead, LogRegHead


def cold_grid(x, y, xv, yv, xt, yt) -> dict:
    """The earlier logreg: each C fitted from zero on the raw features, max_iter 1000."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in DEFAULT_CS:
            m = LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(x, y)
            score = float((m.predict(xv) == yv).mean())
            if best is None or score > best[0]:
                best = (score, c, float((m.predict(xt) == yt).mean()))
    return {"C": best[1], "val_accuracy": best[0], "test_accuracy": best[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=7)
    args = ap.parse_args()
    apply_threads()
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.n)
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32) * 0.1
    x = (rng.normal(size=(args.n, args.dim)) * rng.uniform(0.2, 5, args.dim)).astype(np.float32) + centres[y]
    tr, va, te = slice(0, int(0.7 * args.n)), slice(int(0.7 * args.n), int(0.8 * args.n)), slice(int(0.8 * args.n),
                                                                                                   args.n)
    out = {"n": args.n, "dim": args.dim, "classes": args.classes, "threads": thread_counts()}
    for name, fit in (
            ("logreg", lambda: LogRegHead().fit(x[tr], y[tr], x[va], y[va], n_classes=args.classes)),
            ("linear", lambda: LinearHead().fit(x[tr], y[tr], x[va], y[va], n_classes=args.classes)),
            ("logreg_cold_raw", None)):
        cpu = time.process_time()
        if fit is None:
            r = cold_grid(x[tr], y[tr], x[va], y[va], x[te], y[te])
        else:
            head = fit()
            r = {"test_accuracy": float((head.predict(x[te]) == y[te]).mean())}
            if name == "logreg":
                r.update(C=head.selection_["chosen"]["C"], val_accuracy=head.selection_["chosen"]["val_accuracy"],
                         lbfgs_iterations=head.n_iter_)
        out[name] = {**r, "cpu_s": round(time.process_time() - cpu, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
