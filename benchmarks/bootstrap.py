"""Time our bootstrap engine against the study's method (a Python loop of scikit-learn calls per replicate).

Both use the same draws; the script checks that they give the same replicate values. The loop is
timed on ``--loop-resamples`` replicates (all of them if you have the patience) and its time for
the full count is extrapolated linearly; the output says which.

    python benchmarks/bootstrap.py                         # 10,000 samples x 5,000 replicates, 2 classes
    python benchmarks/bootstrap.py --classes 7 --auroc

With ``--auroc`` the engine also computes the calibration metrics (ECE, Brier, NLL) from the probabilities, and the
loop adds scikit-learn's Brier score and log loss, so the equality check covers them.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from sklearn import metrics as skm

from probebench.stats.bootstrap import BootstrapConfig, EvalData, replicate_weights, replicates
from probebench.threads import thread_counts


def sklearn_replicate(t, p, proba, k, auroc):
    out = {"accuracy": skm.accuracy_score(t, p), "balanced_accuracy": skm.balanced_accuracy_score(t, p),
           "kappa_quadratic": skm.cohen_kappa_score(t, p, weights="quadratic")}
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        out[name] = fn(t, p, average="weighted", zero_division=0)
        out[f"{name}_macro"] = fn(t, p, average="macro", zero_division=0)
    if auroc:
        labels = list(range(k))
        out["auroc_macro"] = (skm.roc_auc_score(t, proba[:, 1]) if k == 2 else
                              skm.roc_auc_score(t, proba, multi_class="ovr", average="macro", labels=labels))
        out["brier"] = skm.brier_score_loss(t, proba, labels=labels)  # computed with the probabilities too
        out["nll"] = skm.log_loss(t, proba, labels=labels)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=5_000)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--auroc", action="store_true", help="include AUROC (needs probabilities)")
    ap.add_argument("--loop-resamples", type=int, default=100, help="replicates timed for the sklearn loop")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    k = args.classes
    t = rng.integers(0, k, args.n)
    proba = rng.dirichlet(np.ones(k), args.n)
    proba[np.arange(args.n), t] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    p = proba.argmax(axis=1)
    data = EvalData(t, p, proba if args.auroc else None, None, k)
    cfg = BootstrapConfig(n_resamples=args.resamples, unit="sample", seed=0)
    start = time.perf_counter()
    ours = replicates(data, cfg, "sample")
    engine_s = time.perf_counter() - start

    loop_n = min(args.loop_resamples, args.resamples)
    weights = np.concatenate(list(replicate_weights(np.arange(args.n), args.n,
                                                    BootstrapConfig(n_resamples=loop_n, seed=0))))
    start = time.perf_counter()
    ref = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w in weights.astype(int):
            idx = np.repeat(np.arange(args.n), w)
            ref.append(sklearn_replicate(t[idx], p[idx], proba[idx], k, args.auroc))
    loop_s = (time.perf_counter() - start) * args.resamples / loop_n
    max_diff = max(abs(ours[m][i] - r[m]) for i, r in enumerate(ref) for m in r)
    print(json.dumps({"threads": thread_counts(), 
        "n": args.n, "resamples": args.resamples, "classes": k, "auroc": args.auroc,
        "metrics": sorted(ours), "engine_seconds": round(engine_s, 3),
        "sklearn_loop_seconds": round(loop_s, 1),
        "sklearn_loop_note": f"measured on {loop_n} replicates, scaled to {args.resamples}",
        "speedup": round(loop_s / engine_s, 1), "max_abs_difference_same_draws": float(max_diff)}, indent=1))


if __name__ == "__main__":
    main()
