"""Wall and CPU time of the 20-head linear grid and of one linear head with the BLAS and torch threads forced to 1
against the process's default (threadpoolctl), each run twice after a warm-up, on 4,000 x 1,024 features.

    python benchmarks/threads.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from probebench.threads import available_cpus
from probebench.train.heads import GridHead, LinearHead


def timed(fit, threads: int | None) -> dict:
    before = torch.get_num_threads()
    t, c = time.perf_counter(), time.process_time()
    if threads:
        with threadpool_limits(threads):
            torch.set_num_threads(threads)
            fit()
    else:
        fit()
    out = {"wall_s": round(time.perf_counter() - t, 3), "cpu_s": round(time.process_time() - c, 3)}
    torch.set_num_threads(before)
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    n, d, k = 4000, 1024, 7
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(n, d)) + np.eye(k, d)[y]).astype(np.float32)
    xv, yv = x[:500], y[:500]
    # the heads' own one-thread rule is what is measured against: patch it out for the "default" runs
    import probebench.train.heads as heads
    from contextlib import nullcontext

    cases = {"grid": lambda: GridHead(epochs=5).fit(x, y, xv, yv, k),
             "linear": lambda: LinearHead(epochs=5).fit(x, y, xv, yv, n_classes=k)}
    out = {"available_cpus": available_cpus(), "default_threads": torch.get_num_threads()}
    own = heads.one_thread
    for name, fit in cases.items():
        fit()  # warm-up
        heads.one_thread = nullcontext
        default = [timed(fit, None) for _ in range(2)]
        one = [timed(fit, 1) for _ in range(2)]
        heads.one_thread = own
        out[name] = {"default_threads": default, "one_thread": one}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
