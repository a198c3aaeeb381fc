"""``report --recommend``: which backbone to pick. Per dataset, the backbones ranked by the primary metric with
intervals, each compared with a reference backbone on the same bootstrap replicates (Holm-adjusted), and their
cost; across datasets, mean ranks with Friedman's test, pairwise rank tests (Holm) and Nemenyi's critical
difference.

Each backbone is represented by its row with the best validation accuracy (frozen or fine-tuned, any head),
and the reference is the backbone whose row is best on validation: both are chosen without the test set, so
the tests against the reference keep their level. (Testing against the test-set winner would not: with four
equally good backbones one is then called worse about twice as often as the nominal level.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probebench.errors import ProbebenchError
from probebench.report.tables import (ReportOptions, ReportRow, cell_text, compare_runs, format_p,
                                      interval_text, main_rows, md_table, md_text, rich_table, run_cost,
                                      validation_accuracy)
from probebench.stats.bootstrap import Difference, holm
from probebench.stats.metrics import LABELS, LOWER_IS_BETTER
from probebench.stats.ranking import Friedman, critical_difference, friedman, pairwise_rank_tests, ranks


@dataclass
class Choice:
    """One backbone on one dataset: its chosen row, rank, and difference from the reference backbone."""

    model: str
    row: ReportRow
    rank: float
    diff: Difference | None = None  # this − reference, on the same replicates (None for the reference)
    p_holm: float = float("nan")
    note: str = ""

    @property
    def label(self) -> str:
        r = self.row
        return f"{'frozen' if r.mode == 'frozen' else 'fine-tuned'}, {r.head_label}"


@dataclass
class DatasetPanel:
    dataset: str
    evaluation: str  # "" or "K-fold CV"
    choices: list[Choice]
    reference: Choice | None = None  # the backbone best on validation, which the others are tested against


@dataclass
class AcrossPanel:
    models: list[str]
    datasets: list[str]
    scores: np.ndarray  # datasets x models
    test: Friedman
    pairs: list[tuple[str, str, float, float]]  # (a, b, p, p_holm)
    cd: float  # Nemenyi critical difference at 1 - confidence
    alpha: float
    dropped: list[str] = field(default_factory=list)  # models missing on some dataset, left out
    random: set = field(default_factory=set)  # models shown with random weights (--weights random)

    def label(self, model: str) -> str:
        """The model's name with † where its runs used random weights, in tables and the figure alike."""
        return model + (" †" if model in self.random else "")


def dataset_panels(rows: list[ReportRow], opts: ReportOptions, metric: str = "accuracy") -> list[DatasetPanel]:
    """Per dataset (test-split rows, or cross-validated rows where a dataset has only those): each backbone's
    row chosen on validation, ranked on the test metric, compared with the reference backbone, the one best on
    validation (paired, Holm); without validation scores there is no reference and no test."""
    rows = main_rows(rows)
    panels = []
    for dataset in sorted({r.dataset for r in rows}):
        mine = [r for r in rows if r.dataset == dataset]
        evaluation = "" if any(not r.cv for r in mine) else mine[0].evaluation
        mine = [r for r in mine if r.evaluation == evaluation]
        chosen: dict[str, ReportRow] = {}
        for r in mine:  # the best validation accuracy per backbone; table order breaks ties
            v = validation_accuracy(r.run)
            if r.model not in chosen or (v is not None and v > (validation_accuracy(chosen[r.model].run) or -1)):
                chosen[r.model] = r
        models = list(chosen)
        values = np.array([[chosen[m].values[metric].value for m in models]])
        rank = ranks(np.nan_to_num(values, nan=-np.inf if metric not in LOWER_IS_BETTER else np.inf),
                     metric not in LOWER_IS_BETTER)[0]
        order = sorted(range(len(models)), key=lambda i: (rank[i], models[i]))
        choices = [Choice(models[i], chosen[models[i]], float(rank[i])) for i in order]
        scores = {c.model: validation_accuracy(c.row.run) for c in choices}
        reference = None
        if all(v is not None for v in scores.values()):  # ties: the better test rank never decides
            reference = max(sorted(choices, key=lambda c: c.model), key=lambda c: scores[c.model])
        for c in choices:
            if reference is None:
                c.note = "no reference: some rows record no validation accuracy"
            elif c is not reference:
                try:
                    diffs, _ = compare_runs(c.row.run, reference.row.run, opts)
                    c.diff = diffs[metric]
                except ProbebenchError as exc:
                    c.note = str(exc).split(";")[0]
        tested = [c for c in choices if c.diff is not None and np.isfinite(c.diff.p)]
        for c, p in zip(tested, holm([c.diff.p for c in tested])):
            c.p_holm = p
        panels.append(DatasetPanel(dataset, evaluation, choices, reference))
    return panels


def across_datasets(panels: list[DatasetPanel], metric: str = "accuracy", alpha: float = 0.05
                    ) -> AcrossPanel | None:
    """Mean ranks over the datasets where every kept backbone was evaluated, Friedman's test, pairwise rank
    tests with Holm, Nemenyi's CD; None with fewer than 2 datasets or 2 common backbones."""
    if len(panels) < 2:
        return None
    everywhere = set.intersection(*({c.model for c in p.choices} for p in panels))
    models = sorted(everywhere)
    dropped = sorted({c.model for p in panels for c in p.choices} - everywhere)
    if len(models) < 2:
        return None
    scores = np.array([[next(c.row.values[metric].value for c in p.choices if c.model == m) for m in models]
                       for p in panels])
    if not np.isfinite(scores).all():
        return None
    test = friedman(scores, metric not in LOWER_IS_BETTER)
    pairs = [(models[i], models[j], p, ph) for i, j, p, ph in pairwise_rank_tests(test.mean_ranks, len(panels))]
    random = {c.model for p in panels for c in p.choices if c.row.random_weights}
    return AcrossPanel(models, [p.dataset for p in panels], scores, test, pairs,
                       critical_difference(len(models), len(panels), alpha), alpha, dropped, random)


def _cost(r: ReportRow) -> tuple[str, str]:
    c, cost = r.run.record, run_cost(r)
    rate = cost["extract_img_s"]
    total = sum(c.n.values()) if c.n else None
    if r.mode == "frozen" and rate:
        extraction = f"{rate:g} img/s" + (f" ({total / rate:.3g} s for {total} images)" if total else "")
    elif r.mode == "unfrozen":
        secs = cost["train_seconds"]
        extraction = f"fine-tuning {secs:.0f} s" if secs is not None else "fine-tuning"
    else:
        extraction = "n/a"
    return extraction, str(c.feature_dim or "n/a")


def panel_lines(panel: DatasetPanel, opts: ReportOptions, metric: str) -> tuple[list[str], list[list[str]]]:
    """One dataset's panel as a header and rows."""
    alpha = 1 - opts.bootstrap.confidence
    header = ["Rank", "Backbone", "Chosen on validation", f"{LABELS[metric]} [CI]", "Δ vs reference [CI]",
              "p (Holm)", "Verdict", "Extraction", "Feature dim"]
    body = []
    lower = metric in LOWER_IS_BETTER
    for c in panel.choices:
        if c.diff is None:
            delta, p = "", ""
            verdict = "reference (best on validation)" if c is panel.reference else (c.note or "n/a")
        else:
            d = c.diff
            delta = interval_text(metric, d.diff, d.low, d.high, "+")
            p = format_p(c.p_holm, d.replicates)
            worse = (d.diff > 0) == lower
            verdict = (("worse than the reference" if worse else "better than the reference") if c.p_holm < alpha
                       else "not distinguishable from the reference")
        extraction, dim = _cost(c.row)
        body.append([f"{c.rank:g}", c.row.model_label, c.label, cell_text(c.row.values[metric], None, metric,
                                                                           c.row.few_units),
                     delta, p, verdict, extraction, dim])
    return header, body


def across_lines(across: AcrossPanel) -> tuple[list[str], list[list[str]], list[str]]:
    """Mean ranks as rows, and the test results as sentences."""
    order = np.argsort(across.test.mean_ranks, kind="stable")
    body = [[across.label(across.models[i]), f"{across.test.mean_ranks[i]:.2f}"] for i in order]
    t = across.test
    notes = [f"Friedman's test over {t.n_datasets} datasets × {t.n_models} backbones (tie-corrected): "
             f"chi² = {t.statistic:.3f}, df = {t.n_models - 1}, p = {t.p:.4g}.",
             f"Nemenyi critical difference at α = {across.alpha:g}: {across.cd:.2f} mean-rank units (backbones "
             "closer than this are joined in the figure).",
             "Pairwise rank tests (z on mean ranks, Holm over all pairs): "
             + "; ".join(f"{across.label(a)} vs {across.label(b)}: p = {p:.3g}, Holm {ph:.3g}"
                         for a, b, p, ph in across.pairs) + "."]
    if t.n_datasets < 5:
        notes.append(f"With {t.n_datasets} datasets these rank tests have little power: a non-significant result "
                     "says the data cannot tell the backbones apart, not that they are equal.")
    if across.dropped:
        notes.append(f"Left out (not evaluated on every dataset): {', '.join(across.dropped)}.")
    return ["Backbone", "Mean rank"], body, notes


RECOMMEND_NOTE = ("Each backbone is represented by its row with the best validation accuracy (frozen or fine-tuned, "
                  "any head); the reference is the backbone whose row is best on validation (ties: by name). Both "
                  "are chosen without the test set, so Δ (each backbone − the reference, on the same bootstrap "
                  "replicates, Holm-adjusted within the dataset) keeps its level; testing against the test-set "
                  "winner would not. Ranks are by the test value, for reading only.")


def panel_notes(panels: list[DatasetPanel], metric: str = "accuracy") -> list[str]:
    """What the panel rests on, and where it cannot be trusted."""
    from probebench.report.tables import DEGENERATE_MARK, FEW_MARK, MIN_UNITS

    notes = [RECOMMEND_NOTE]
    degenerate = sorted({(p.dataset, c.row.model_label) for p in panels for c in p.choices
                         if c.row.values[metric].floor or c.row.values[metric].constant})
    if degenerate:
        notes.append(f"{DEGENERATE_MARK} the bootstrap could not show this value's uncertainty ("
                     + "; ".join(f"{d}: {m}" for d, m in degenerate) + "): a proportion's interval is widened to "
                     "the exact Clopper–Pearson one, any other metric is marked because every replicate was equal. "
                     "A marked value is not a certain one.")
    few = sorted({(p.dataset, c.row.n_units, c.row.unit) for p in panels for c in p.choices if c.row.few_units})
    if few:
        notes.append(f"{FEW_MARK} fewer than {MIN_UNITS} resampling units in the test set ("
                     + "; ".join(f"{d}: {n} {u}s" for d, n, u in few) + "): the intervals and tests of these "
                     "datasets cannot be trusted; read their ranks as point values.")
    if any(c.row.random_weights for p in panels for c in p.choices):
        notes.append("† random weights (--weights random): NOT a pretrained result; this panel says nothing about "
                     "which pretrained backbone to pick.")
    return notes


def render_recommendation(rows: list[ReportRow], opts: ReportOptions, metric: str = "accuracy",
                          fmt: str = "table") -> str:
    """The panel as text (``table`` or ``md``)."""
    panels = dataset_panels(rows, opts, metric)
    if not panels:
        raise ProbebenchError("no runs to recommend from; run `probebench fit` first")
    across = across_datasets(panels, metric, 1 - opts.bootstrap.confidence)
    sections = [(f"{p.dataset}" + (f" ({p.evaluation})" if p.evaluation else ""), *panel_lines(p, opts, metric))
                for p in panels]
    if fmt == "md":
        lines = [f"## Recommendation ({LABELS[metric]})", ""]
        for title, header, body in sections:
            lines += [f"### {md_text(title)}", ""] + md_table(header, body) + [""]
        lines += [f"- {md_text(n)}" for n in panel_notes(panels, metric)] + [""]
        if across:
            header, body, notes = across_lines(across)
            lines += ["### Across datasets", ""] + md_table(header, body) + [""] + [f"- {md_text(n)}" for n in notes]
        else:
            lines.append("- Across datasets: needs at least two datasets with two common backbones.")
        return "\n".join(lines) + "\n"
    from rich.console import Console

    console = Console(record=True, width=200, markup=False, highlight=False)
    with console.capture() as cap:
        for title, header, body in sections:
            console.print(rich_table(f"recommendation · {title} · {LABELS[metric]}", header, body))
        console.print("\n".join(panel_notes(panels, metric)))
        if across:
            header, body, notes = across_lines(across)
            console.print(rich_table("across datasets", header, body, "\n".join(notes)))
        else:
            console.print("Across datasets: needs at least two datasets with two common backbones.")
    return cap.get()



def recommendation_record(rows: list[ReportRow], opts: ReportOptions, metric: str = "accuracy") -> dict:
    """The panel as plain data (``report --recommend --json``)."""
    def number(x):
        return None if x is None or x != x else float(x)

    panels = dataset_panels(rows, opts, metric)
    across = across_datasets(panels, metric, 1 - opts.bootstrap.confidence)
    out = {"metric": metric, "datasets": [
        {"dataset": p.dataset, "evaluation": p.evaluation or "test split", "backbones": [
            {"rank": c.rank, "model": c.model, "mode": c.row.mode,
             "head": c.row.head_label, "run": str(c.row.run.path), "value": number(c.row.values[metric].value),
             "low": number(c.row.values[metric].low), "high": number(c.row.values[metric].high),
             "reference": c is p.reference, "validation_accuracy": number(validation_accuracy(c.row.run)),
             "difference_from_reference": c.diff and {"difference": number(c.diff.diff), "low": number(c.diff.low),
                                                      "high": number(c.diff.high), "p": number(c.diff.p),
                                                      "p_holm": number(c.p_holm)},
             "extract_img_s": c.row.run.record.extract_img_s,
             "feature_dim": c.row.run.record.feature_dim, "note": c.note} for c in p.choices]}
        for p in panels]}
    if across:
        out["across_datasets"] = {
            "models": across.models, "datasets": across.datasets, "scores": across.scores.tolist(),
            "mean_ranks": across.test.mean_ranks.tolist(), "friedman_statistic": across.test.statistic,
            "friedman_p": across.test.p, "critical_difference": across.cd, "alpha": across.alpha,
            "pairs": [{"a": a, "b": b, "p": p, "p_holm": ph} for a, b, p, ph in across.pairs],
            "dropped": across.dropped}
    return out
