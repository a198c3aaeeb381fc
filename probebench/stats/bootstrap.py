"""The bootstrap engine: all replicates at once, resampling samples or whole groups (cluster bootstrap).

A replicate draws units (samples, or groups such as patients with all their slices) with
replacement; it is represented by per-sample weights, so every metric of every replicate comes from
a few array operations (``metrics.replicate_metrics``), with no Python loop over replicates.
Intervals: percentile (default) or BCa, as ``scipy.stats.bootstrap`` defines them. Paired
comparisons reuse the same replicates for both runs.

Memory is bounded at any n: replicates are drawn 250 at a time (``DRAW_BLOCK``: part of what a seed means) and
their metrics computed a few rows at a time, as many as ``memory`` allows, with the same random stream, so the
budget never changes a result. BCa's acceleration comes from a grouped (delete-d) jackknife above
``jackknife_groups`` units: O(n) instead of O(n²) (``jackknife``).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from probebench.errors import ProbebenchError
from probebench.stats.metrics import replicate_metrics

UNITS = ("auto", "group", "sample")
METHODS = ("percentile", "bca")
STRATIFY = ("auto", "class", "none")
RARE_UNITS = 5  # "auto" stratifies when a class has fewer units: P(a resample lacks it) ~ exp(-n) > 0.7%
DRAW_BLOCK = 250  # replicates drawn per step of the random stream (what a seed means; not a memory setting)
JACKKNIFE_GROUPS = 1000  # BCa: the exact jackknife up to this many units, a grouped one above


@dataclass(frozen=True)
class BootstrapConfig:
    """How intervals are computed; ``unit="auto"`` resamples groups whenever samples share groups."""

    n_resamples: int = 1000
    method: str = "percentile"
    unit: str = "auto"
    confidence: float = 0.95
    seed: int = 0
    stratify: str = "auto"  # resample within each class: "class", "none", or "auto" (when a class is rare)
    memory_gib: float | None = None  # working memory of the replicates' metrics; None: a quarter of what is free
    jackknife_groups: int = JACKKNIFE_GROUPS  # BCa: leave-one-out up to this many units, delete-d groups above

    def __post_init__(self):
        if self.method not in METHODS:
            raise ProbebenchError(f"interval method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.unit not in UNITS:
            raise ProbebenchError(f"resampling unit {self.unit!r} is not one of {', '.join(UNITS)}")
        if self.stratify not in STRATIFY:
            raise ProbebenchError(f"stratification {self.stratify!r} is not one of {', '.join(STRATIFY)}")
        from probebench.validate import problem

        wrong = problem("resamples", self.n_resamples)
        if wrong:
            raise ProbebenchError(f"--resamples {wrong}")
        if self.memory_gib is not None and not self.memory_gib > 0:
            raise ProbebenchError(f"--bootstrap-memory must be a positive number of GiB, got {self.memory_gib}")
        if not (isinstance(self.jackknife_groups, int) and self.jackknife_groups >= 20):
            raise ProbebenchError(f"jackknife groups must be an integer of at least 20, got {self.jackknife_groups}")


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


def unit_classes(data: EvalData, codes: np.ndarray, n_units: int) -> np.ndarray:
    """Each unit's class: its label, or for a group the most common label of its samples (ties: the lowest)."""
    counts = np.zeros((n_units, data.n_classes))
    np.add.at(counts, (codes, np.asarray(data.y_true, dtype=np.int64)), 1)
    return counts.argmax(axis=1)


def resolve_strata(data: EvalData, codes: np.ndarray, n_units: int, stratify: str) -> np.ndarray | None:
    """The class of each unit when resampling is stratified, else None. ``auto`` stratifies when a class present
    in the test set has fewer than ``RARE_UNITS`` units, where a plain bootstrap would often draw none of it."""
    if stratify == "none":
        return None
    strata = unit_classes(data, codes, n_units)
    if stratify == "class":
        return strata
    present = np.bincount(strata, minlength=data.n_classes)
    present = present[present > 0]
    return strata if len(present) > 1 and present.min() < RARE_UNITS else None


def replicate_weights(codes: np.ndarray, n_units: int, cfg: BootstrapConfig, strata: np.ndarray | None = None,
                      rows: int = DRAW_BLOCK):
    """Per-sample weights, ``rows`` replicates at a time (r, n): how often each sample's unit was drawn in each
    replicate. With ``strata`` the units of each stratum are drawn from that stratum only, as many as it has.

    The stream is drawn in ``DRAW_BLOCK`` replicates per step, each stratum's draws for a block in one sequence
    (numpy draws an (r, m) array as r consecutive rows), so every ``rows`` gives the same replicates."""
    rng = np.random.default_rng(cfg.seed)
    members = [np.flatnonzero(strata == s) for s in np.unique(strata)] if strata is not None else \
        [np.arange(n_units)]
    dtype = np.uint16 if n_units < 2 ** 16 else np.uint32  # a unit is drawn at most n_units times: no overflow
    rows = max(1, min(rows, DRAW_BLOCK))
    for start in range(0, cfg.n_resamples, DRAW_BLOCK):
        b = min(DRAW_BLOCK, cfg.n_resamples - start)
        counts = np.zeros((b, n_units), dtype=dtype)
        for idx in members:
            m = len(idx)
            for r0 in range(0, b, rows):
                r = min(rows, b - r0)
                draws = rng.integers(0, m, size=(r, m))
                local = np.bincount((np.arange(r)[:, None] * m + draws).ravel(), minlength=r * m).reshape(r, m)
                counts[r0:r0 + r, idx] += local.astype(dtype)
        for r0 in range(0, b, rows):
            yield counts[r0:r0 + rows][:, codes].astype(np.float64)


def _row_bytes(n_samples: int, n_classes: int) -> int:
    """Bytes one replicate's metrics take at once: its float64 weights with the per-class intermediates (measured:
    about 12 KiB per sample per 250 replicates at 7 classes), plus its draws and counts."""
    return n_samples * 8 * (n_classes + 2) + n_samples * 24


def rows_per_pass(n_samples: int, n_classes: int, cfg: BootstrapConfig) -> int:
    """Replicates whose metrics fit in the working memory at once (1 to ``DRAW_BLOCK``)."""
    from probebench.budget import available_memory

    if cfg.memory_gib is not None:
        budget = cfg.memory_gib * 2 ** 30
    else:
        free = available_memory()
        budget = min(2 * 2 ** 30, free / 4) if free else 2 ** 30
    return int(max(1, min(DRAW_BLOCK, budget // max(_row_bytes(n_samples, n_classes), 1))))


def memory_estimate(n_samples: int, n_classes: int, cfg: BootstrapConfig, rows: int = 1) -> int:
    """Bytes a bootstrap of ``n_samples`` needs at its peak: one draw block's counts, ``rows`` replicates' metrics
    (``_row_bytes``), and every metric's replicate values, twice while they are joined."""
    counts = min(DRAW_BLOCK, cfg.n_resamples) * n_samples * 4
    return counts + rows * _row_bytes(n_samples, n_classes) + cfg.n_resamples * 16 * 8 * 2


def check_memory(n_samples: int, n_classes: int, cfg: BootstrapConfig) -> int:
    """The replicates per pass; refuse, before drawing, a bootstrap that cannot fit even one at a time."""
    from probebench.budget import available_memory, gib

    rows = rows_per_pass(n_samples, n_classes, cfg)
    need, have = memory_estimate(n_samples, n_classes, cfg), available_memory()  # one replicate at a time
    if have is not None and need > have:
        raise ProbebenchError(f"the bootstrap of {n_samples:,} samples x {cfg.n_resamples:,} replicates needs about "
                              f"{gib(need)}, and this process may use {gib(have)}: lower --resamples (or [report] "
                              "resamples), or free memory")
    return rows


def replicates(data: EvalData, cfg: BootstrapConfig, unit: str,
               strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric for each of the ``cfg.n_resamples`` replicates (R values per metric)."""
    rows = check_memory(len(data.y_true), data.n_classes, cfg)
    codes, n_units = unit_codes(data, unit)
    parts: dict[str, list] = {}
    for w in replicate_weights(codes, n_units, cfg, strata, rows):
        for k, v in data.metrics(w).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def jackknife_assignment(n_units: int, groups: int, seed: int) -> np.ndarray:
    """Each unit's jackknife group: itself up to ``groups`` units (the exact leave-one-out jackknife), else one of
    ``groups`` groups of near-equal size, assigned at random (seeded): a group of similar units (one class) would
    bias the acceleration."""
    if n_units <= groups:
        return np.arange(n_units)
    perm = np.random.default_rng([seed, n_units, groups]).permutation(n_units)
    out = np.empty(n_units, dtype=np.int64)
    out[perm] = np.arange(n_units) % groups
    return out


def jackknife(data: EvalData, unit: str, cfg: BootstrapConfig = BootstrapConfig()) -> dict[str, np.ndarray]:
    """Leave-one-group-out values of every metric (for the BCa acceleration): each unit left out alone up to
    ``cfg.jackknife_groups`` units, else delete-d groups of n/G units. The acceleration a = Σd³ / 6(Σd²)^1.5 is
    unchanged by scaling the d, and a group's d sums its units' influences, whose cubes and squares sum to those of
    the units in expectation: the grouped estimate is consistent, with G metric evaluations instead of n."""
    codes, n_units = unit_codes(data, unit)
    group = jackknife_assignment(n_units, cfg.jackknife_groups, cfg.seed)[codes]
    n_groups = int(group.max()) + 1
    rows = rows_per_pass(len(codes), data.n_classes, cfg)
    parts: dict[str, list] = {}
    for start in range(0, n_groups, rows):
        left_out = np.arange(start, min(n_groups, start + rows))
        w = (group[None, :] != left_out[:, None]).astype(np.float64)
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


TIE = 1e-9  # replicates this close (relative) to the point value, or to 0 for a difference, count as equal to it


def _snap(values: np.ndarray, *targets: float) -> np.ndarray:
    """Replicates within ``TIE`` of a target set to it exactly: one number computed by two different sums
    (accuracy and weighted recall) then has the same ties, so the same BCa interval and p-value."""
    out = np.asarray(values, dtype=np.float64).copy()
    for t in targets:
        if np.isfinite(t):
            out[np.abs(out - t) <= TIE * max(1.0, abs(t))] = t
    return out


def _bca_terms(values: np.ndarray, theta_hat: float, jack: np.ndarray) -> tuple[float, float]:
    """Bias correction z0 and acceleration a (Efron 1987), as ``scipy.stats.bootstrap`` computes them."""
    share = ((values < theta_hat).sum() + (values <= theta_hat).sum()) / (2 * len(values))
    share = min(max(share, 0.5 / len(values)), 1 - 0.5 / len(values))
    z0 = NormalDist().inv_cdf(share)
    d = jack.mean() - jack
    if np.abs(d).max(initial=0.0) <= 1e-12 * max(1.0, float(np.abs(jack).max(initial=0.0))):
        return z0, 0.0  # a constant jackknife (up to rounding of its mean): no acceleration, not 0/0 noise
    den = 6 * ((d ** 2).sum()) ** 1.5
    return z0, float((d ** 3).sum() / den)


def _bca_level(nominal: float, z0: float, a: float) -> float:
    """The quantile level BCa uses for a nominal level: Φ(z0 + (z0 + z) / (1 - a (z0 + z)))."""
    normal = NormalDist()
    if nominal <= 0 or nominal >= 1:
        return float(nominal > 0)
    z = normal.inv_cdf(nominal)
    return normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))


def _bca_nominal(level: float, z0: float, a: float) -> float:
    """The inverse of ``_bca_level``: the nominal level whose BCa quantile level is ``level``."""
    normal = NormalDist()
    if level <= 0 or level >= 1:
        return float(level > 0)
    w = normal.inv_cdf(level) - z0
    if 1 + a * w <= 0:
        return float(w > 0)
    return normal.cdf(w / (1 + a * w) - z0)


def bca_interval(values: np.ndarray, theta_hat: float, jack: np.ndarray, confidence: float) -> tuple[float, float]:
    """Bias-corrected and accelerated percentile interval (Efron 1987), as ``scipy.stats.bootstrap``."""
    values, jack = values[np.isfinite(values)], jack[np.isfinite(jack)]
    if not len(values) or not np.isfinite(theta_hat):
        return float("nan"), float("nan")
    values = _snap(values, theta_hat)
    z0, a = _bca_terms(values, theta_hat, jack)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(values, _bca_level(alpha, z0, a))),
            float(np.quantile(values, _bca_level(1 - alpha, z0, a))))


def _zero_levels(values: np.ndarray) -> tuple[float, float]:
    """For the linear-interpolation quantile function q of ``values``: sup{u: q(u) <= 0} and inf{u: q(u) >= 0}."""
    v = np.sort(values)
    n = len(v)
    if n == 1:
        return (1.0 if v[0] <= 0 else 0.0), (0.0 if v[0] >= 0 else 1.0)

    def crossing(j: int) -> float:  # q is linear between positions j and j + 1 and crosses 0 there
        return (j + (0 - v[j]) / (v[j + 1] - v[j])) / (n - 1)

    if v[0] > 0:
        upper_of_nonpositive = 0.0
    elif v[-1] <= 0:
        upper_of_nonpositive = 1.0
    else:
        upper_of_nonpositive = crossing(int(np.flatnonzero(v <= 0)[-1]))
    if v[-1] < 0:
        lower_of_nonnegative = 1.0
    elif v[0] >= 0:
        lower_of_nonnegative = 0.0
    else:
        lower_of_nonnegative = crossing(int(np.flatnonzero(v >= 0)[0]) - 1)
    return upper_of_nonpositive, lower_of_nonnegative


def interval_p_value(values: np.ndarray, theta_hat: float, jack: np.ndarray | None, confidence: float
                     ) -> tuple[float, float, float]:
    """(low, high, p) of a difference: the interval (percentile, or BCa with ``jack``) and the two-sided p-value
    obtained by inverting that same interval: the smallest α whose (1 - α) interval excludes 0. So the shown
    interval excludes 0 exactly when p < 1 - confidence, whatever the shape of the replicates."""
    values = values[np.isfinite(values)]
    if not len(values) or not np.isfinite(theta_hat):
        return float("nan"), float("nan"), float("nan")
    values = _snap(values, theta_hat, 0.0)
    hi0, lo0 = _zero_levels(values)
    if jack is None:
        low, high = percentile_interval(values, confidence)
        p = 2 * min(hi0, 1 - lo0)
    else:
        z0, a = _bca_terms(values, theta_hat, jack[np.isfinite(jack)])
        alpha = (1 - confidence) / 2
        low, high = (float(np.quantile(values, _bca_level(level, z0, a))) for level in (alpha, 1 - alpha))
        p = 2 * min(_bca_nominal(hi0, z0, a), 1 - _bca_nominal(lo0, z0, a))
    return low, high, float(min(1.0, max(0.0, p)))


@dataclass
class Interval:
    value: float
    low: float
    high: float
    undefined: int = 0  # replicates where the metric is undefined (a resample without a class), left out
    replicates: int = 0
    replicate_mean: float = float("nan")  # the study's summary: the mean of the replicates ...
    replicate_mean_half_width: float = float("nan")  # ... and 1.96 sd / sqrt(R), the half-width of its CI
    floor: str = ""  # "clopper-pearson": a degenerate bootstrap interval widened to the exact binomial one
    constant: bool = False  # every defined replicate gave the same value: the bootstrap saw no variation

    @property
    def undefined_share(self) -> float:
        return self.undefined / self.replicates if self.replicates else 0.0


@dataclass
class Resampling:
    """How a bootstrap was drawn: the unit, how many units, and whether within classes."""

    unit: str
    n_units: int
    stratified: bool


def bootstrap(data: EvalData, cfg: BootstrapConfig = BootstrapConfig()) -> tuple[dict[str, Interval], Resampling]:
    """Point value and interval of every metric, and how the replicates were drawn."""
    unit = resolve_unit(cfg.unit, data.groups)
    codes, n_units = unit_codes(data, unit)
    strata = resolve_strata(data, codes, n_units, cfg.stratify)
    point = {k: float(v[0]) for k, v in data.metrics().items()}
    reps = replicates(data, cfg, unit, strata)
    jack = jackknife(data, unit, cfg) if cfg.method == "bca" else None
    out = {}
    for k, v in reps.items():
        low, high = (bca_interval(v, point[k], jack[k], cfg.confidence) if jack is not None
                     else percentile_interval(v, cfg.confidence))
        finite = v[np.isfinite(v)]
        mean = float(finite.mean()) if len(finite) else float("nan")
        half = float(1.96 * finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else float("nan")
        constant = bool(len(finite)) and bool(np.ptp(finite) <= 1e-12 * max(1.0, float(np.abs(finite).max())))
        floor = ""
        if k in PROPORTIONS and np.isfinite(point[k]) and (constant or high - low <= 0 or low <= 0 or high >= 1):
            exact = clopper_pearson(point[k] * n_units, n_units, cfg.confidence)
            low, high, floor = min(low, exact[0]), max(high, exact[1]), "clopper-pearson"
        out[k] = Interval(point[k], low, high, int((~np.isfinite(v)).sum()), len(v), mean, half, floor, constant)
    return out, Resampling(unit, n_units, strata is not None)


PROPORTIONS = ("accuracy", "recall")  # a share of the evaluated units: weighted recall equals accuracy


def clopper_pearson(x: float, n: int, confidence: float) -> tuple[float, float]:
    """The exact binomial (Clopper–Pearson) interval of x successes in n trials; x may be fractional (a share of
    clusters: value x n_clusters), through the beta quantiles that define it."""
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if x <= 0 else float(beta.ppf(alpha / 2, x, n - x + 1))
    high = 1.0 if x >= n else float(beta.ppf(1 - alpha / 2, x + 1, n - x))
    return low, high


@dataclass
class Difference:
    """A − B: the point difference, its interval from the same replicates, and the p-value of that interval."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float
    undefined: int = 0
    replicates: int = 0


def paired_comparison(a: EvalData, b: EvalData, cfg: BootstrapConfig = BootstrapConfig()
                      ) -> tuple[dict[str, Difference], Resampling]:
    """Compare two prediction sets on the same test samples, resampling both with the same draws.

    The interval uses ``cfg.method`` (BCa with the jackknife of the difference); the p-value inverts that
    same interval (``interval_p_value``), so an interval that excludes 0 and p < 1 - confidence always agree.
    """
    if len(a.y_true) != len(b.y_true) or not np.array_equal(a.y_true, b.y_true):
        raise ProbebenchError("the two runs were not evaluated on the same test samples")
    unit = resolve_unit(cfg.unit, a.groups)
    codes, n_units = unit_codes(a, unit)
    strata = resolve_strata(a, codes, n_units, cfg.stratify)
    point_a, point_b = ({k: float(v[0]) for k, v in d.metrics().items()} for d in (a, b))
    parts: dict[str, list] = {}
    rows = check_memory(len(a.y_true), a.n_classes, cfg)
    for w in replicate_weights(codes, n_units, cfg, strata, max(1, rows // 2)):  # two runs' metrics at once
        ma, mb = a.metrics(w), b.metrics(w)
        for k in ma:
            parts.setdefault(k, []).append(ma[k] - mb[k])
    jack = None
    if cfg.method == "bca":
        ja, jb = jackknife(a, unit, cfg), jackknife(b, unit, cfg)  # the same groups: the same units
        jack = {k: ja[k] - jb[k] for k in ja}
    out = {}
    for k, chunks in parts.items():
        delta = np.concatenate(chunks)
        d_hat = point_a[k] - point_b[k]
        low, high, p = interval_p_value(delta, d_hat, jack[k] if jack else None, cfg.confidence)
        out[k] = Difference(point_a[k], point_b[k], d_hat, low, high, p, int((~np.isfinite(delta)).sum()), len(delta))
    return out, Resampling(unit, n_units, strata is not None)


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
