"""``report`` and ``compare``: the study's Tables III/IV from run directories, with honest intervals.

Each metric is shown as ``value [low, high]`` in percent: the value on the whole test set and a
seeded bootstrap interval (percentile or BCa) whose resampling unit is stated in the header:
groups (patients, lesions) by default when they exist, samples with ``--unit sample``. Cells are
marked when many replicates were undefined (‡), the test set has too few clusters (§), or the bootstrap
could not show uncertainty (¶: a zero-width or boundary interval of a proportion is widened to the exact
Clopper–Pearson interval; any other metric whose replicates are all equal is marked as such). A section
per dataset compares frozen with unfrozen runs per head and every row with the row best on
validation, on the same replicates, with p-values that invert the interval shown and Holm's
adjustment. Runs made with random weights are flagged everywhere (†).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probebench.stats.bootstrap import BootstrapConfig, Difference, Interval, bootstrap, holm, paired_comparison
from probebench.errors import ProbebenchError, did_you_mean
from probebench.stats.evaluate import eval_data
from probebench.stats.calibration import CALIBRATION_METRICS, ECE_BINS
from probebench.stats.metrics import ALL_METRICS, LABELS, STUDY_METRICS, scale
from probebench.runs import Run, RunRecord, budget_text, find_runs, read_config, read_run
from probebench.supervise import step

FORMATS = ("table", "md", "csv")
RANDOM_MARK = "†"
UNDEFINED_MARK = "‡"  # more than UNDEFINED_LIMIT of the replicates were undefined
FEW_MARK = "§"  # fewer than MIN_UNITS resampling units (patients, lesions, samples) in the test set
UNDEFINED_LIMIT = 0.01
MIN_UNITS = 10
DEGENERATE_MARK = "¶"  # the bootstrap could not show uncertainty: floored with Clopper–Pearson, or replicates equal


@dataclass(frozen=True)
class ReportOptions:
    """What the statistics are: bootstrap settings, evaluation level and the metrics shown."""

    bootstrap: BootstrapConfig = BootstrapConfig()
    level: str = "sample"  # or "patient": one prediction per group
    aggregate: str = "mean"  # patient level: mean probability or majority vote
    metrics: tuple[str, ...] = STUDY_METRICS
    study_ci: bool = False  # add the study's summary (replicate mean [CI of that mean]) beside each interval

    @classmethod
    def of(cls, *, resamples: int | None = None, method: str | None = None, unit: str | None = None,
           seed: int | None = None, stratify: str | None = None, level: str | None = None,
           aggregate: str | None = None, metrics=None, study_ci: bool | None = None,
           bootstrap_memory: float | None = None, jackknife_groups: int | None = None) -> "ReportOptions":
        """The one builder of report options, from the command line's or a study's ``[report]`` values: each
        value left None takes the default stated on ``BootstrapConfig`` and ``ReportOptions``; ``metrics`` may be
        a comma-separated string or a list."""
        if isinstance(metrics, str):
            metrics = [m.strip() for m in metrics.split(",") if m.strip()]
        boot = {k: v for k, v in (("n_resamples", resamples), ("method", method), ("unit", unit), ("seed", seed),
                                  ("stratify", stratify), ("memory_gib", bootstrap_memory),
                                  ("jackknife_groups", jackknife_groups)) if v is not None}
        mine = {k: v for k, v in (("level", level), ("aggregate", aggregate), ("study_ci", study_ci),
                                  ("metrics", tuple(metrics) if metrics else None)) if v is not None}
        return cls(BootstrapConfig(**boot), **mine)

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown:
            raise ProbebenchError(f"unknown metrics {unknown}{did_you_mean(unknown[0], ALL_METRICS)}; metrics: "
                                  f"{', '.join(ALL_METRICS)}")


@dataclass
class ReportRow:
    dataset: str
    model: str
    mode: str  # "frozen" (the backbone's weights fixed) or "unfrozen" (all weights trained)
    head: str
    random_weights: bool
    n_test: int  # evaluated units: samples, or patients at patient level
    values: dict  # metric -> Interval
    unit: str  # what was resampled: "sample", or the group kind (patient, lesion, ...)
    run: Run
    skipped: list = field(default_factory=list)
    head_label: str = ""
    seeds: dict | None = None  # repeats: {"seeds": [...], "mean": {metric: x}, "sd": {metric: x}}
    repeats: list | None = None  # the runs behind ``seeds``, first seed first
    n_units: int = 0  # resampling units in the test set
    stratified: bool = False  # resampled within each class
    seeds_asked: list | None = None  # a multi-seed fit: the seeds it was asked for (some may be missing)
    budget: dict | None = None  # a label-efficiency point: {"label_fraction": f} or {"shots": k}
    cv: dict | None = None  # cross-validated: {"folds": k, ...}; the test set is every sample, out of fold
    hidden: int = 0  # other runs with the same settings that this row stands for (the latest is shown)

    @property
    def freeze(self) -> str:
        """The study's "Freeze" column: "Y" for a frozen backbone, "N" for one trained too (shown, never tested)."""
        return "Y" if self.mode == "frozen" else "N"

    @property
    def evaluation(self) -> str:
        """How the test predictions were made: "" (the dataset's test split) or "K-fold CV" (pooled out-of-fold)."""
        return f"{self.cv['folds']}-fold CV" if self.cv else ""

    @property
    def model_label(self) -> str:
        return self.model + (f" {RANDOM_MARK}" if self.random_weights else "")

    @property
    def few_units(self) -> bool:
        return self.n_units < MIN_UNITS

    @property
    def missing_seeds(self) -> list:
        done = set(self.seeds["seeds"]) if self.seeds else {self.run.record.seed}
        return [s for s in (self.seeds_asked or []) if s not in done]


def _unit_label(run: Run, unit: str, level: str) -> str:
    kind = run.record.group_kind
    return kind if (unit == "group" or level == "patient") else "sample"


def validation_accuracy(run: Run) -> float | None:
    """The validation accuracy of the run's chosen model, as recorded at fit time (None for older runs)."""
    m = run.metrics
    value = m.get("val_accuracy", m.get("best_val_accuracy"))
    return float(value) if value is not None else None


def evaluate_run(run: Run, opts: ReportOptions, repeats: list[Run] | None = None) -> ReportRow:
    """Bootstrap one run; ``repeats`` (the same fit with other seeds, this one first) adds mean ± sd."""
    step(f"report: the bootstrap of {run.path} ({opts.bootstrap.n_resamples:,} replicates)")
    data = eval_data(run, opts.level, opts.aggregate)
    values, drawn = bootstrap(data, opts.bootstrap)
    c = run.record
    seeds = None
    if repeats and len(repeats) > 1:
        points = [{k: float(v[0]) for k, v in eval_data(r, opts.level, opts.aggregate).metrics().items()}
                  for r in repeats]
        seeds = {"seeds": [r.record.seed for r in repeats],
                 "mean": {m: float(np.mean([p[m] for p in points])) for m in points[0]},
                 "sd": {m: float(np.std([p[m] for p in points], ddof=1)) for m in points[0]}}
    label = (c.head_label or c.head) + (f" · {c.cv['folds']}-fold CV" if c.cv else "")
    return ReportRow(dataset=c.dataset, model=c.model, mode=c.mode,
                     head=c.head, random_weights=c.random_weights, n_test=len(data.y_true),
                     values=values, unit=_unit_label(run, drawn.unit, opts.level), run=run,
                     skipped=c.skipped, head_label=label, seeds=seeds,
                     repeats=repeats, n_units=drawn.n_units, stratified=drawn.stratified,
                     seeds_asked=c.seeds_asked, budget=c.budget, cv=c.cv)


def variant(c: RunRecord) -> dict[str, str]:
    """What a run measures beyond its cell (dataset, model, mode, head), flattened to ``name: value`` text: the
    options that change its numbers (tap, preprocessing, weights, precision, feature options, head and training
    options except the seed, the data version, calibration, the study's quirks). Runs that differ here are
    different results and get rows of their own; runs that agree are repeats of one."""
    head = {k: v for k, v in (c.head_params or {}).items() if k != "seed"}
    raw = {"tap": c.tap, "preprocessing": c.preprocessing, "weights": (c.weights or {}).get("sha256"),
           "precision": c.precision, "store_dtype": c.store_dtype, "features": c.features, "head": head,
           "data": c.manifest_hash, "calibrate": (c.calibration or {}).get("method"),
           "study_quirks": c.study_quirks, "select": c.select_metric, "grid": bool(c.selection) or None}
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in sorted(value.items()):
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is not None:
            text = str(value)
            flat[prefix] = text[:8] if prefix in ("weights", "data") and len(text) == 64 else text

    walk("", raw)
    return flat


def _differences(variants: list[dict[str, str]]) -> list[str]:
    """The flattened option names whose values are not the same in every one of ``variants``."""
    keys = sorted(set().union(*variants))
    return [k for k in keys if len({v.get(k) for v in variants}) > 1]


class Rows(list):
    """Report rows, and the runs left out because they did not read back whole: ``skipped`` holds
    (run folder, reason) pairs, which the footnotes, the JSON record and the command line name."""

    def __init__(self, rows=(), skipped=()):
        super().__init__(rows)
        self.skipped = list(skipped)


def skipped_notes(rows) -> list[str]:
    """One note per run that a report left out."""
    return [f"left out: {reason} (`probebench verify` lists such runs, `--strict` stops instead)"
            for _, reason in getattr(rows, "skipped", [])]


def collect_rows(runs_dir: str | Path = "runs", *, datasets: list[str] | None = None,
                 opts: ReportOptions = ReportOptions(), latest_only: bool = True,
                 only: list[str | Path] | None = None, strict: bool = False) -> Rows:
    """One row per run (the latest per dataset x model x mode x head x label budget x cross-validation unless
    ``latest_only`` is off); ``only`` keeps just these runs and the other runs of the same fits (seeds, budgets),
    so a study's report shows the study's runs, nothing else. Label-budget rows (``row.budget``) belong to the
    label-efficiency curve, not to the main table (``main_rows``).

    Every run is read back and checked (``runs.read_run``) before the latest is chosen: an edited, malformed or
    damaged run is left out and named in ``Rows.skipped`` (so the cell shows the latest run that is whole, and
    the note says which one was passed over), or, with ``strict``, stops the report."""
    configs, skipped = {}, []

    def leave_out(p: Path, exc: ProbebenchError) -> None:
        if strict:
            raise exc
        skipped.append((p, str(exc).split("; `probebench verify")[0]))

    for p in find_runs(runs_dir):
        try:
            configs[p] = RunRecord.from_config(read_config(p))
        except ProbebenchError as exc:
            leave_out(p, exc)
    if datasets:
        configs = {p: c for p, c in configs.items() if c.dataset in datasets}
    if only is not None:
        wanted = {Path(x).resolve() for x in only}
        groups = {g for p, c in configs.items() if p.resolve() in wanted for g in (c.seed_group, c.fit_group)} - {None}
        configs = {p: c for p, c in configs.items() if p.resolve() in wanted or c.seed_group in groups
                   or c.fit_group in groups}
    runs = {}
    for p in list(configs):
        try:
            runs[p] = read_run(p)
        except ProbebenchError as exc:
            leave_out(p, exc)
            del configs[p]
    by_group: dict[str, list[Path]] = {}
    for p, c in configs.items():
        if c.seed_group:
            by_group.setdefault(c.seed_group, []).append(p)
    variants = {p: variant(c) for p, c in configs.items()}
    cell = {p: (c.dataset, c.model, c.mode, c.head, c.kind) for p, c in configs.items()}
    key = {p: cell[p] + (tuple(sorted(variants[p].items())),) for p in configs}
    by_key: dict[tuple, list[Path]] = {}
    for p in sorted(configs, key=lambda p: configs[p].run_id):
        by_key.setdefault(key[p], []).append(p)
    # one row per key (the latest run, by run id: the time it was written), unless every run is asked for
    chosen = [ps[-1] for ps in by_key.values()] if latest_only else list(configs)
    chosen_set = set(chosen)
    rows = []
    for p in sorted(chosen, key=lambda p: (configs[p].dataset, configs[p].model, configs[p].mode, configs[p].head,
                                           *configs[p].kind, configs[p].run_id)):
        repeats = None
        if configs[p].seed_group:
            siblings = {}
            for s in sorted(by_group[configs[p].seed_group], key=lambda s: configs[s].run_id):
                siblings[configs[s].seed_position] = s  # the latest run for each seed
            repeats = [runs[siblings[k]] for k in sorted(siblings)]  # intervals from the first seed
        row = evaluate_run(repeats[0] if repeats else runs[p], opts, repeats)
        group = set(by_group.get(configs[p].seed_group, [p]))
        row.hidden = len([q for q in by_key[key[p]] if q not in group]) if latest_only else 0
        shown = [q for q in chosen_set if cell[q] == cell[p]]
        if len({key[q] for q in shown}) > 1:  # other settings in the same cell: say what sets this row apart
            differ = _differences([variants[q] for q in shown])
            row.head_label += " · " + ", ".join(f"{k}={variants[p].get(k, '—')}" for k in differ)
        if not latest_only and len([q for q in shown if key[q] == key[p]]) > 1:
            row.head_label += f" · run {configs[p].run_id}"
        rows.append(row)
    return Rows(rows, skipped)


def main_rows(rows: list[ReportRow]) -> Rows:
    """The rows of the results table: every run trained on all its training labels."""
    return Rows([r for r in rows if not r.budget], getattr(rows, "skipped", []))


def aligned(a: Run, b: Run) -> Run:
    """``b`` reordered to ``a``'s test samples; an error if the two test sets differ."""
    if set(a.sample_ids) != set(b.sample_ids) or len(a.sample_ids) != len(b.sample_ids):
        raise ProbebenchError(f"runs {a.path} and {b.path} were evaluated on different test sets "
                              f"({len(a.sample_ids)} vs {len(b.sample_ids)} samples); they cannot be compared")
    pos = {s: i for i, s in enumerate(b.sample_ids)}
    order = np.array([pos[s] for s in a.sample_ids])
    return Run(b.path, b.config, b.metrics, b.sample_ids[order], b.groups[order], b.y_true[order],
               b.y_pred[order], b.proba[order])


def compare_runs(a: Run, b: Run, opts: ReportOptions = ReportOptions()) -> tuple[dict[str, Difference], str]:
    """A − B for every metric on the same replicates, with intervals (``opts`` method) and the p-values that
    invert them; the second value says how the replicates were drawn."""
    b = aligned(a, b)
    if a.classes != b.classes:
        raise ProbebenchError(f"runs {a.path} and {b.path} have different classes")
    diffs, drawn = paired_comparison(eval_data(a, opts.level, opts.aggregate),
                                     eval_data(b, opts.level, opts.aggregate), opts.bootstrap)
    label = f"{_unit_label(a, drawn.unit, opts.level)} ({drawn.n_units})"
    return diffs, label + (", stratified by class" if drawn.stratified else "")


@dataclass
class ComparisonRow:
    dataset: str
    label: str
    diff: Difference | None
    p_holm: float = float("nan")
    note: str = ""


def _row_name(r: ReportRow) -> str:
    return f"{r.model_label} ({r.mode}, {r.head_label})"


def comparisons(rows: list[ReportRow], opts: ReportOptions, metric: str = "accuracy") -> list[ComparisonRow]:
    """Per dataset: frozen − unfrozen for each model and each frozen head, and every row − the row with the best
    validation accuracy (chosen on validation, never on test); Holm within the dataset. Cross-validated rows
    (tested on every sample) are compared among themselves, apart from rows tested on the test split."""
    out: list[ComparisonRow] = []
    rows = main_rows(rows)
    for dataset, evaluation in sorted({(r.dataset, r.evaluation) for r in rows}):
        mine = [r for r in rows if r.dataset == dataset and r.evaluation == evaluation]
        dataset = f"{dataset} ({evaluation})" if evaluation else dataset
        if len(mine) < 2:
            continue
        pairs = []
        for model in sorted({r.model for r in mine}):
            unfrozen = [r for r in mine if r.model == model and r.mode == "unfrozen"]
            for f in (r for r in mine if r.model == model and r.mode == "frozen"):
                for u in unfrozen:
                    mark = f" {RANDOM_MARK}" if f.random_weights or u.random_weights else ""
                    pairs.append((f"{model}{mark}: frozen ({f.head_label}) − unfrozen ({u.head_label})", f, u))
        family: list[ComparisonRow] = []
        scores = {id(r): validation_accuracy(r.run) for r in mine}
        if all(v is not None for v in scores.values()):
            best = max(mine, key=lambda r: scores[id(r)])  # first on ties, in table order
            pairs += [(f"{_row_name(r)} − best on validation {_row_name(best)}", r, best) for r in mine
                      if r is not best]
        else:
            missing = [_row_name(r) for r in mine if scores[id(r)] is None]
            family.append(ComparisonRow(dataset, "each row − best on validation", None,
                                        note=f"not computed: {', '.join(missing)} record no validation accuracy "
                                             "(older runs), and a best chosen on the test set would bias the test"))
        for label, a, b in pairs:
            try:
                diffs, _ = compare_runs(a.run, b.run, opts)
                family.append(ComparisonRow(dataset, label, diffs[metric]))
            except ProbebenchError as exc:
                family.append(ComparisonRow(dataset, label, None, note=str(exc).split(";")[0]))
        tested = [c for c in family if c.diff is not None and np.isfinite(c.diff.p)]
        for c, p in zip(tested, holm([c.diff.p for c in tested])):
            c.p_holm = p
        out += family
    return out


def _marks(v: Interval | Difference, few: bool) -> str:
    share = v.undefined / v.replicates if v.replicates else 0.0
    degenerate = getattr(v, "floor", "") or getattr(v, "constant", False)
    return ((UNDEFINED_MARK if share > UNDEFINED_LIMIT else "") + (FEW_MARK if few else "")
            + (DEGENERATE_MARK if degenerate else ""))


def show(metric: str, x: float, sign: str = "") -> str:
    """A metric's number as shown: in percent with 2 decimals, or (NLL) in nats with 3; ``sign="+"`` for
    differences."""
    return f"{scale(metric) * x:{sign}.{2 if scale(metric) == 100 else 3}f}"


def interval_text(metric: str, value: float, low: float, high: float, sign: str = "") -> str:
    return f"{show(metric, value, sign)} [{show(metric, low, sign)}, {show(metric, high, sign)}]"


def cell_text(v: Interval, seeds: dict | None = None, metric: str = "", few: bool = False) -> str:
    if not np.isfinite(v.value):
        return "n/a"
    text = interval_text(metric, v.value, v.low, v.high) + _marks(v, few)
    if seeds:
        text += f"; seeds {show(metric, seeds['mean'][metric])} ± {show(metric, seeds['sd'][metric])}"
    return text


def method_name(b) -> str:
    """The interval's name as the literature gives it."""
    return {"percentile": "percentile", "bca": "BCa"}[b.method]


def method_note(b) -> str:
    """How BCa's acceleration was estimated (nothing for percentile intervals)."""
    if b.method != "bca":
        return ""
    return (f" (acceleration from the leave-one-out jackknife up to {b.jackknife_groups:,} units, from "
            f"{b.jackknife_groups:,} random groups of units above)")


def _method_text(opts: ReportOptions) -> str:
    b = opts.bootstrap
    return f"{b.confidence:.0%} {method_name(b)} bootstrap{method_note(b)}, {b.n_resamples} replicates, seed {b.seed}"


STUDY_CI_LABEL = "study-style: replicate mean [CI of the mean]"


def study_cell(v: Interval, metric: str = "") -> str:
    if not np.isfinite(v.replicate_mean):
        return "n/a"
    half = v.replicate_mean_half_width
    return interval_text(metric, v.replicate_mean, v.replicate_mean - half, v.replicate_mean + half)


def metric_headers(opts: ReportOptions, suffix: str = "") -> list[str]:
    """The metric columns: each metric's interval, and with ``study_ci`` the study's summary beside it."""
    out = []
    for m in opts.metrics:
        out.append(LABELS[m] + suffix)
        if opts.study_ci:
            out.append(f"{LABELS[m]}, {STUDY_CI_LABEL}")
    return out


def metric_cells(r: ReportRow, opts: ReportOptions) -> list[str]:
    out = []
    for m in opts.metrics:
        out.append(cell_text(r.values[m], r.seeds, m, r.few_units))
        if opts.study_ci:
            out.append(study_cell(r.values[m], m))
    return out


def _headers(rows: list[ReportRow], opts: ReportOptions) -> tuple[list[str], bool]:
    units = {r.unit for r in rows}
    per_row = len(units) > 1
    suffix = "" if per_row else f" [CI by {units.pop()}]"
    head = ["Dataset", "Model", "Freeze", "Head"] + (["CI unit"] if per_row else [])
    return head + metric_headers(opts, suffix), per_row


def body_rows(rows: list[ReportRow], opts: ReportOptions, per_row_unit: bool) -> list[list[str]]:
    return [[r.dataset, r.model_label, r.freeze, r.head_label + (" (incomplete seeds)" if r.missing_seeds else "")]
            + ([r.unit] if per_row_unit else []) + metric_cells(r, opts) for r in rows]


def footnotes(rows: list[ReportRow], opts: ReportOptions) -> list[str]:
    level = ("per patient: each group's test predictions aggregated by "
             f"{'mean probability' if opts.aggregate == 'mean' else 'majority vote'}"
             if opts.level == "patient" else "per test sample")
    notes = [f"Metrics in %, {level}: value on the whole test set [{_method_text(opts)}; resampling unit as "
             "in the header]. Precision, recall and F1 are weighted averages over classes, as in the study."]
    if set(opts.metrics) & set(CALIBRATION_METRICS):
        notes.append(f"Calibration (lower is better): ECE as Guo et al. (2017) define it, {ECE_BINS} equal-width "
                     f"bins of the top-label confidence; ECE (equal-mass): {ECE_BINS} bins at the confidences' "
                     "quantiles, refitted per replicate (positive class for two classes, top label for more); Brier "
                     "score (sum over classes for more than two); NLL in nats (not in %).")
    repeated = [r for r in rows if r.seeds]
    if repeated:
        notes.append("'seeds m ± sd': mean ± standard deviation of the value over repeated fits with different "
                     "seeds (" + "; ".join(f"{r.dataset}/{r.model}: seeds {r.seeds['seeds']}" for r in repeated)
                     + "): training variability, not a confidence interval. The interval before it is the first "
                     "seed's bootstrap.")
    if any(r.random_weights for r in rows):
        notes.append(f"{RANDOM_MARK} random weights (--weights random): NOT a pretrained result.")
    if opts.study_ci:
        notes.append(f"'{STUDY_CI_LABEL}': the study's summary, for comparison with published numbers only: the "
                     f"mean of the {opts.bootstrap.n_resamples} bootstrap replicates and the 95% interval of that "
                     "mean (± 1.96 sd/√R). Its width shrinks toward zero as R grows and says nothing about how "
                     "uncertain the metric is on this test set; the interval beside it does.")
    undefined = sorted({(r.dataset, r.model_label, r.head_label, m, r.values[m].undefined, r.values[m].replicates)
                        for r in rows for m in opts.metrics if r.values[m].undefined_share > UNDEFINED_LIMIT})
    if undefined:
        notes.append(f"{UNDEFINED_MARK} the metric was undefined in more than {UNDEFINED_LIMIT:.0%} of the bootstrap "
                     "replicates (a resample without some class), which are left out, so the interval describes "
                     "only resamples that hold every class and is too narrow: "
                     + "; ".join(f"{d}/{m} {h} {k}: {u} of {n}" for d, m, h, k, u, n in undefined)
                     + ". `--stratify class` resamples within each class.")
    floored = sorted({(r.dataset, r.model_label, r.head_label, m) for r in rows for m in opts.metrics
                      if r.values[m].floor})
    constant = sorted({(r.dataset, r.model_label, r.head_label, m) for r in rows for m in opts.metrics
                       if r.values[m].constant and not r.values[m].floor})
    if floored:
        notes.append(f"{DEGENERATE_MARK} the bootstrap interval was degenerate (zero width, or at 0% or 100%: a "
                     "percentile bootstrap cannot show uncertainty there), so it is widened to include the exact "
                     "Clopper–Pearson interval of the proportion, with n the resampling units (samples, or "
                     "patients/lesions when they are resampled: the conservative count for clustered images): "
                     + "; ".join(f"{d}/{m} {h} {k}" for d, m, h, k in floored) + ".")
    if constant:
        notes.append(f"{DEGENERATE_MARK} every bootstrap replicate gave the same value, so the interval has no "
                     "width; this is not certainty (the test set is too small or too uniform to show variation), "
                     "and no exact interval exists for this metric: "
                     + "; ".join(f"{d}/{m} {h} {k}" for d, m, h, k in constant) + ".")
    few = sorted({(r.dataset, r.n_units, r.unit) for r in rows if r.few_units})
    if few:
        notes.append(f"{FEW_MARK} fewer than {MIN_UNITS} resampling units in the test set ("
                     + "; ".join(f"{d}: {n} {u}s" for d, n, u in few) + "): a bootstrap interval from so few "
                     "clusters cannot be trusted; read these rows as point values.")
    stratified = sorted({r.dataset for r in rows if r.stratified})
    if stratified:
        notes.append("Resampled within each class (a class has fewer than 5 units in the test set, so a plain "
                     f"bootstrap would often draw none of it): {', '.join(stratified)}.")
    for r in rows:
        if r.missing_seeds:
            notes.append(f"{r.dataset}/{r.model_label} {r.head_label}: incomplete seeds: asked "
                         f"{r.seeds_asked}, missing {r.missing_seeds} (the fit was interrupted; rerun it)")
    for r in rows:
        if r.cv:
            notes.append(cv_note(r))
    for r in rows:
        if r.skipped:
            names = ", ".join(s["sample_id"] for s in r.skipped[:5]) + (" …" if len(r.skipped) > 5 else "")
            notes.append(f"{r.dataset}/{r.model}: {len(r.skipped)} unreadable image(s) skipped: {names}")
    hidden = [r for r in rows if r.hidden]
    if hidden:
        notes.append("Each row shows the latest run (by run id, the time it was written) with its settings; "
                     + "; ".join(f"{r.dataset}/{r.model_label} {r.head_label}: {r.hidden} other run(s) with the same "
                                 "settings hidden (other seeds outside a seed group, or reruns)" for r in hidden)
                     + ". `report --all` shows every run.")
    return notes + skipped_notes(rows)


def fold_values(r: ReportRow, metric: str) -> list[float]:
    """A cross-validated run's metric on each fold's own test part (recorded at fit time)."""
    return [f["test"].get(metric, float("nan")) for f in r.run.metrics.get("folds", [])]


def cv_note(r: ReportRow, metric: str = "accuracy") -> str:
    folds = fold_values(r, metric)
    c = r.cv
    per = ", ".join(f"{100 * v:.1f}" for v in folds)
    spread = (f"{100 * np.mean(folds):.2f} ± {100 * np.std(folds, ddof=1):.2f} ({per})" if len(folds) > 1 else per)
    return (f"{r.dataset}/{r.model_label} {r.head_label}: {c['folds']}-fold cross-validation by "
            f"{r.run.record.group_kind} over all {c.get('samples', r.n_test)} samples (splits "
            f"{'/'.join(c.get('splits_pooled', []))} pooled; validation the next fold); the value and interval are "
            f"computed on the pooled out-of-fold predictions, resampled by {r.unit}; per-fold {LABELS[metric]} "
            f"{spread}: the spread between folds, not a confidence interval.")


def format_p(p: float, replicates: int) -> str:
    """A p-value to 4 places; one below the bootstrap's resolution (no replicate on the other side of 0) as
    ``< 1/R``."""
    if not np.isfinite(p):
        return "n/a"
    return f"< {1 / replicates:.4g}" if p < 1 / max(replicates, 1) else f"{p:.4f}"


def comparison_lines(comps: list[ComparisonRow], metric: str) -> list[list[str]]:
    lines = []
    for c in comps:
        if c.diff is None:
            lines.append([c.dataset, c.label, "n/a", "", "", c.note])
        else:
            d = c.diff
            note = c.note
            if d.replicates and d.undefined / d.replicates > UNDEFINED_LIMIT:
                note = f"{UNDEFINED_MARK} {d.undefined} of {d.replicates} replicates undefined"
            lines.append([c.dataset, c.label, interval_text(metric, d.diff, d.low, d.high, "+"),
                          format_p(d.p, d.replicates), format_p(c.p_holm, d.replicates), note])
    return lines


COMPARE_NOTE = ("Paired comparisons on the same bootstrap replicates: Δ = first − second in points, with the "
                "interval method of the table; p is that interval inverted (the smallest α whose 1 − α interval "
                "excludes 0), so the 95% interval excludes 0 exactly when p < 0.05. The best row is chosen by "
                "validation accuracy, never on the test set. Holm adjusts across the comparisons of each dataset.")


COMPARE_HEADER = ["Dataset", "Comparison", "Δ {metric} [CI]", "p", "p (Holm)", "note"]


def _number(x: float) -> float | None:
    """A float for JSON: NaN (undefined) becomes null."""
    return None if x != x else float(x)


def report_record(rows: list[ReportRow], opts: ReportOptions, comps: list[ComparisonRow] | None = None,
                  compare_metric: str = "accuracy") -> dict:
    """The report as plain data (``report --json``): every metric's value and interval per run, with the marks'
    causes spelled out, and the paired comparisons."""
    b = opts.bootstrap
    return {
        "bootstrap": {"method": b.method, "confidence": b.confidence, "n_resamples": b.n_resamples, "seed": b.seed,
                      "unit": b.unit, "stratify": b.stratify},
        "level": opts.level, "aggregate": opts.aggregate,
        "rows": [{"dataset": r.dataset, "model": r.model, "mode": r.mode,
                  "head": r.head_label, "random_weights": r.random_weights, "n_test": r.n_test, "unit": r.unit,
                  "n_units": r.n_units, "few_units": r.few_units, "stratified": r.stratified, "run": str(r.run.path),
                  "metrics": {m: {"value": _number(v.value), "low": _number(v.low), "high": _number(v.high),
                                  "undefined_replicates": v.undefined, "replicates": v.replicates,
                                  "floor": v.floor or None, "constant_replicates": v.constant}
                              for m, v in r.values.items()},
                  "seeds": r.seeds and {"seeds": list(r.seeds["seeds"]),
                                        "mean": {m: _number(x) for m, x in r.seeds["mean"].items()},
                                        "sd": {m: _number(x) for m, x in r.seeds["sd"].items()}},
                  "missing_seeds": r.missing_seeds, "label_budget": r.budget,
                  "labels_used": r.run.record.train_used if r.budget else None,
                  "cv": r.cv and {**r.cv, "per_fold": [{"fold": f["fold"], "n_test": f["n_test"],
                                                        **{m: _number(f["test"][m]) for m in f["test"]
                                                           if not isinstance(f["test"][m], list)}}
                                                       for f in r.run.metrics.get("folds", [])]},
                  "calibration": r.run.record.calibration}
                 for r in rows],
        "comparisons": [{"dataset": c.dataset, "label": c.label, "metric": compare_metric,
                         **({"a": _number(c.diff.a), "b": _number(c.diff.b), "difference": _number(c.diff.diff),
                             "low": _number(c.diff.low), "high": _number(c.diff.high), "p": _number(c.diff.p),
                             "p_holm": _number(c.p_holm)} if c.diff is not None else {}),
                         "note": c.note} for c in (comps or [])],
        "skipped_runs": [{"run": str(p), "reason": reason} for p, reason in getattr(rows, "skipped", [])],
    }


def run_cost(row: ReportRow) -> dict:
    """Extraction images/s, training time, peak memory: what the run recorded (reports read run folders only)."""
    record, m = row.run.record, row.run.metrics
    return {"extract_img_s": record.extract_img_s, "train_seconds": m.get("fit_seconds", m.get("train_seconds")),
            "peak_memory_gib": m.get("peak_memory_gib"), "device": record.device}


def labels_used(r: ReportRow) -> str:
    """Training samples (and groups) a label-budget run used; a range when its seeds drew different numbers."""
    used = [x.record.train_used or {} for x in (r.repeats or [r.run])]
    samples = sorted({u.get("samples") for u in used if u})
    groups = sorted({u.get("groups") for u in used if u})
    if not samples:
        return "n/a"
    text = str(samples[0]) if len(samples) == 1 else f"{samples[0]}–{samples[-1]}"
    return text + (f" ({groups[0]} {r.run.record.group_kind}s)" if len(groups) == 1 else "")


def curve_groups(rows: list[ReportRow]) -> dict[tuple, list[ReportRow]]:
    """Label-budget rows by (dataset, model, mode, head), each curve's points from the smallest budget up
    (fractions, then shots); fine-tuned curves before frozen ones, as the "Freeze" column N before Y."""
    out: dict[tuple, list[ReportRow]] = {}
    for r in rows:
        if r.budget:
            out.setdefault((r.dataset, r.model_label, r.mode, r.head_label), []).append(r)
    for points in out.values():
        points.sort(key=lambda r: ("shots" in r.budget, r.budget.get("label_fraction", r.budget.get("shots"))))
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] == "frozen", kv[0][3])))


CURVE_NOTE = ("Label efficiency: each point trained on a share of the training labels (whole patients, stratified "
              "by class, nested within each seed), with the full validation and test sets. The interval is the "
              "first seed's test-set bootstrap; 'seeds m ± sd' is the spread over subsample seeds (which labels "
              "were drawn, and the training seed), shown separately because it is a different uncertainty. Marks "
              "(§ few test units, ‡ undefined replicates) as in the results table.")


def curve_table(rows: list[ReportRow], metric: str) -> tuple[list[str], list[list[str]]]:
    """The label-efficiency table: one line per curve point, with labels used, the interval and the seed spread."""
    header = ["Dataset", "Model", "Freeze", "Head", "Labels", "Training samples used", f"{LABELS[metric]} [CI]",
              "Seeds (mean ± sd)"]
    body = []
    for (dataset, model, _, head), points in curve_groups(rows).items():
        for r in points:
            spread = (f"{show(metric, r.seeds['mean'][metric])} ± {show(metric, r.seeds['sd'][metric])} "
                      f"(n={len(r.seeds['seeds'])})" if r.seeds else "one seed")
            body.append([dataset, model, r.freeze, head, budget_text(r.budget), labels_used(r),
                         cell_text(r.values[metric], None, metric, r.few_units), spread])
    return header, body


MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "<": "&lt;", ">": "&gt;", "&": "&amp;",
              "\n": " ", "\r": " "}


def md_text(text) -> str:
    """Text for a Markdown line: no raw HTML (``<script>``) and no line break a name could smuggle in."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ") \
        .replace("\r", " ")


def md_cell(text) -> str:
    """Text for a Markdown table cell: also no column break (``|``), code span or emphasis from a name."""
    return "".join(MD_SPECIAL.get(ch, ch) for ch in str(text))


def csv_cell(text) -> str:
    """A name for a spreadsheet-bound CSV cell: one that a spreadsheet would run as a formula (``=``, ``+``,
    ``-``, ``@``, tab, carriage return first) is prefixed with ``'``, as OWASP advises."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table's lines; every cell escaped (``md_cell``)."""
    return (["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(md_cell, r)) + " |" for r in body])


def rich_table(title: str, header: list[str], body: list[list[str]], caption: str = "", no_wrap=()):
    """A terminal table (rich), printed as written (no markup)."""
    from rich.table import Table

    table = Table(title=title, caption=caption or None, caption_justify="left")
    for h in header:
        table.add_column(h, no_wrap=h in no_wrap)
    for row in body:
        table.add_row(*row)
    return table


def render(rows: list[ReportRow], fmt: str = "table", opts: ReportOptions = ReportOptions(),
           comps: list[ComparisonRow] | None = None, compare_metric: str = "accuracy") -> str:
    """The report as text in ``fmt``; ``csv`` is tidy (one row per run x metric, every metric)."""
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["dataset", "model", "freeze", "head", "random_weights", "level", "n", "metric", "statistic",
                    "value", "low", "high", "sd", "ci_method", "confidence", "n_resamples", "seed", "unit",
                    "n_units", "stratified", "undefined_replicates", "marks", "run", "label_budget", "labels_used",
                    "evaluation"])
        b = opts.bootstrap
        for r in rows:
            kind = [budget_text(r.budget) if r.budget else "", labels_used(r) if r.budget else "", r.evaluation]
            names = [csv_cell(r.dataset), csv_cell(r.model), r.freeze, csv_cell(r.head_label)]
            where = csv_cell(r.run.path)
            for m in ALL_METRICS:
                v = r.values.get(m)
                if v is not None:
                    w.writerow([*names, r.random_weights, opts.level, r.n_test, m,
                                "test value + bootstrap CI", f"{v.value:.10g}", f"{v.low:.10g}", f"{v.high:.10g}", "",
                                b.method, b.confidence, b.n_resamples, b.seed, r.unit, r.n_units, r.stratified,
                                v.undefined, (RANDOM_MARK if r.random_weights else "") + _marks(v, r.few_units),
                                where, *kind])
                if opts.study_ci and v is not None:
                    w.writerow([*names, r.random_weights, opts.level, r.n_test, m,
                                "study-style: replicate mean + CI of the mean", f"{v.replicate_mean:.10g}",
                                f"{v.replicate_mean - v.replicate_mean_half_width:.10g}",
                                f"{v.replicate_mean + v.replicate_mean_half_width:.10g}", "", "normal CI of the mean",
                                b.confidence, b.n_resamples, b.seed, r.unit, r.n_units, r.stratified, v.undefined, "",
                                where, *kind])
                if r.seeds and m in r.seeds["mean"]:
                    w.writerow([*names, r.random_weights, opts.level, r.n_test, m,
                                f"mean over seeds {r.seeds['seeds']}", f"{r.seeds['mean'][m]:.6f}", "", "",
                                f"{r.seeds['sd'][m]:.6f}", "", "", "", "", "", "", "", "", "", where, *kind])
        return out.getvalue()
    curve_header, curve_body = curve_table(rows, opts.metrics[0])
    rows = main_rows(rows)
    header, per_row = _headers(rows, opts)
    body = body_rows(rows, opts, per_row)
    notes = footnotes(rows, opts)
    comp_header = [h.format(metric=LABELS[compare_metric]) for h in COMPARE_HEADER]
    comp_lines = comparison_lines(comps or [], compare_metric)
    comp_note = COMPARE_NOTE
    if fmt == "md":
        lines = md_table(header, body) + [""] + [f"- {md_text(n)}" for n in notes]
        if comp_lines:
            lines += ["", "### Comparisons", ""] + md_table(comp_header, comp_lines) + ["", f"- {comp_note}"]
        if curve_body:
            lines += ["", "### Label efficiency", ""] + md_table(curve_header, curve_body) + ["", f"- {CURVE_NOTE}"]
        return "\n".join(lines) + "\n"
    if fmt == "table":
        from rich.console import Console

        console = Console(record=True, width=200, markup=False, highlight=False)  # names printed as written
        with console.capture() as cap:
            console.print(rich_table("probebench results", header, body, "\n".join(notes), ("Dataset", "Model")))
            if comp_lines:
                console.print(rich_table("comparisons", comp_header, comp_lines, comp_note))
            if curve_body:
                console.print(rich_table("label efficiency", curve_header, curve_body, CURVE_NOTE))
        return cap.get()
    raise ProbebenchError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


def render_compare(a: Run, b: Run, diffs: dict[str, Difference], unit: str, opts: ReportOptions) -> str:
    """A plain table of A, B and A − B [CI] with p-values for every metric."""
    lines = [f"A: {a.path}", f"B: {b.path}",
             f"{_method_text(opts)}; resampling unit: {unit}; level: {opts.level}", "",
             f"{'metric':<20} {'A':>8} {'B':>8} {'A − B [CI]':>28} {'p':>8}"]
    undefined = []
    for m in ALL_METRICS:
        if m in diffs:
            d = diffs[m]
            mark = UNDEFINED_MARK if d.replicates and d.undefined / d.replicates > UNDEFINED_LIMIT else ""
            if mark:
                undefined.append(f"{m}: {d.undefined} of {d.replicates}")
            lines.append(f"{m:<20} {show(m, d.a):>8} {show(m, d.b):>8} "
                         f"{interval_text(m, d.diff, d.low, d.high, '+') + mark:>29} "
                         f"{format_p(d.p, d.replicates):>8}")
    lines += ["", "p inverts the interval shown: the interval excludes 0 exactly when p < "
                  f"{1 - opts.bootstrap.confidence:.2g}."]
    if undefined:
        lines.append(f"{UNDEFINED_MARK} undefined replicates left out (a resample without some class): "
                     + "; ".join(undefined) + "; try --stratify class.")
    return "\n".join(lines) + "\n"
