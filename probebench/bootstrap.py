"""The bootstrap engine: all replicates at once, resampling samples or whole groups (cluster bootstrap).

A replicate draws units (samples, or groups such as patients with all their slices) with
replacement; it is represented by per-sample weights, so every metric of every replicate comes from
a few array operations (``metrics.replicate_metrics``), with no Python loop over replicates.
Intervals: percentile (default) or BCa, as ``scipy.stats.bootstrap`` defines them. Paired
comparisons reuse the same replicates for both runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from probebench.errors import ProbebenchError
from probebench.metrics import replicate_metrics

UNITS = ("auto", "group", "sample")
METHODS = ("percentile", "bca")


@dataclass(frozen=True)
class BootstrapConfig:
    """How intervals are computed; ``unit="auto"`` resamples groups whenever samples share groups."""

    n_resamples: int = 1000
    method: str = "percentile"
    unit: str = "auto"
    confidence: float = 0.95
    seed: int = 0
    block: int = 250  # replicates per vectorised block (bounds memory)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ProbebenchError(f"interval method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.unit not in UNITS:
            raise ProbebenchError(f"resampling unit {self.unit!r} is not one of {', '.join(UNITS)}")
        if self.n_resamples < 2:
            raise ProbebenchError("the bootstrap needs at least 2 resamples")


@dataclass
class EvalData:
    """What an evaluation needs: labels, predictions, probabilities and the group of each sample."""

    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray | None
    groups: np.ndarray | None
    n_classes: int

    def metrics(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return {k: v for k, v in replicate_metrics(self.y_true, self.y_pred, self.n_classes, self.proba,
                                                   weights).items() if v.ndim == 1}


def resolve_unit(unit: str, groups: np.ndarray | None) -> str:
    """``auto`` means groups when some samples share a group, else samples."""
    if unit == "auto":
        return "group" if groups is not None and len(np.unique(groups)) < len(groups) else "sample"
    if unit == "group" and groups is None:
        raise ProbebenchError("--unit group needs samples with groups, and these have none")
    return unit


def unit_codes(data: EvalData, unit: str) -> tuple[np.ndarray, int]:
    """Each sample's resampling unit as an integer code, and the number of units."""
    if unit == "group":
        _, codes = np.unique(data.groups, return_inverse=True)
        return codes, int(codes.max()) + 1
    return np.arange(len(data.y_true)), len(data.y_true)


def replicate_weights(codes: np.ndarray, n_units: int, cfg: BootstrapConfig):
    """Blocks of per-sample weights (b, n): how often each sample's unit was drawn in each replicate."""
    rng = np.random.default_rng(cfg.seed)
    for start in range(0, cfg.n_resamples, cfg.block):
        b = min(cfg.block, cfg.n_resamples - start)
        draws = rng.integers(0, n_units, size=(b, n_units))
        counts = np.bincount((np.arange(b)[:, None] * n_units + draws).ravel(), minlength=b * n_units)
        yield counts.reshape(b, n_units)[:, codes].astype(np.float64)


def replicates(data: EvalData, cfg: BootstrapConfig, unit: str) -> dict[str, np.ndarray]:
    """Every metric for each of the ``cfg.n_resamples`` replicates (R values per metric)."""
    codes, n_units = unit_codes(data, unit)
    parts: dict[str, list] = {}
    for w in replicate_weights(codes, n_units, cfg):
        for k, v in data.metrics(w).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def jackknife(data: EvalData, unit: str, block: int = 500) -> dict[str, np.ndarray]:
    """Leave-one-unit-out values of every metric (for the BCa acceleration)."""
    codes, n_units = unit_codes(data, unit)
    parts: dict[str, list] = {}
    for start in range(0, n_units, block):
        left_out = np.arange(start, min(n_units, start + block))
        w = (codes[None, :] != left_out[:, None]).astype(np.float64)
        for k, v in data.metrics(w).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (α/2, 1-α/2) percentiles of the replicates (undefined replicates ignored)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def bca_interval(values: np.ndarray, theta_hat: float, jack: np.ndarray, confidence: float) -> tuple[float, float]:
    """Bias-corrected and accelerated percentile interval (Efron 1987), as ``scipy.stats.bootstrap``."""
    values, jack = values[np.isfinite(values)], jack[np.isfinite(jack)]
    if not len(values) or not np.isfinite(theta_hat):
        return float("nan"), float("nan")
    normal = NormalDist()
    share = ((values < theta_hat).sum() + (values <= theta_hat).sum()) / (2 * len(values))
    share = min(max(share, 0.5 / len(values)), 1 - 0.5 / len(values))
    z0 = normal.inv_cdf(share)
    d = jack.mean() - jack
    den = 6 * ((d ** 2).sum()) ** 1.5
    a = (d ** 3).sum() / den if den > 0 else 0.0
    alpha = (1 - confidence) / 2
    bounds = []
    for z in (normal.inv_cdf(alpha), normal.inv_cdf(1 - alpha)):
        bounds.append(normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    return float(np.quantile(values, bounds[0])), float(np.quantile(values, bounds[1]))


@dataclass
class Interval:
    value: float
    low: float
    high: float


def bootstrap(data: EvalData, cfg: BootstrapConfig = BootstrapConfig()) -> tuple[dict[str, Interval], str]:
    """Point value and interval of every metric, and the resampling unit used."""
    unit = resolve_unit(cfg.unit, data.groups)
    point = {k: float(v[0]) for k, v in data.metrics().items()}
    reps = replicates(data, cfg, unit)
    jack = jackknife(data, unit) if cfg.method == "bca" else None
    out = {}
    for k, v in reps.items():
        low, high = (bca_interval(v, point[k], jack[k], cfg.confidence) if jack is not None
                     else percentile_interval(v, cfg.confidence))
        out[k] = Interval(point[k], low, high)
    return out, unit


@dataclass
class Difference:
    """A − B: the point difference, its interval from the same replicates, and a two-sided p-value."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float


def paired_comparison(a: EvalData, b: EvalData, cfg: BootstrapConfig = BootstrapConfig()
                      ) -> tuple[dict[str, Difference], str]:
    """Compare two prediction sets on the same test samples, resampling both with the same draws.

    The p-value tests "no difference" by centring the replicate differences on zero:
    p = (1 + #{|δ* − δ̂| ≥ |δ̂|}) / (R + 1).
    """
    if len(a.y_true) != len(b.y_true) or not np.array_equal(a.y_true, b.y_true):
        raise ProbebenchError("the two runs were not evaluated on the same test samples")
    unit = resolve_unit(cfg.unit, a.groups)
    point_a, point_b = ({k: float(v[0]) for k, v in d.metrics().items()} for d in (a, b))
    codes, n_units = unit_codes(a, unit)
    parts: dict[str, list] = {}
    for w in replicate_weights(codes, n_units, cfg):
        ma, mb = a.metrics(w), b.metrics(w)
        for k in ma:
            parts.setdefault(k, []).append(ma[k] - mb[k])
    out = {}
    for k, chunks in parts.items():
        delta = np.concatenate(chunks)
        delta = delta[np.isfinite(delta)]
        d_hat = point_a[k] - point_b[k]
        low, high = percentile_interval(delta, cfg.confidence)
        p = (1 + (np.abs(delta - d_hat) >= abs(d_hat) - 1e-12).sum()) / (len(delta) + 1) if len(delta) else np.nan
        out[k] = Difference(point_a[k], point_b[k], d_hat, low, high, float(min(1.0, p)))
    return out, unit


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (order preserved)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
