"""``report --out DIR``: publication files from run directories.

``tables.md`` and ``tables.tex`` (the study's Tables III/IV with intervals, Tables I/II with the data
distribution), ``results.csv`` (tidy, every metric at sample and patient level), ``figures/`` (forest
plots and confusion matrices as PNG and SVG) and ``report.html``, one self-contained offline page.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from probebench.atomic import atomic_dir, write_bytes, write_text
from probebench.errors import ProbebenchError
from probebench.stats.calibration import CALIBRATION_METRICS, ECE_BINS, reliability, top_label
from probebench.stats.metrics import LABELS, LOWER_IS_BETTER, scale
from probebench.validate import path_name
from probebench.report.tables import (COMPARE_HEADER, COMPARE_NOTE, ReportOptions, ReportRow, body_rows, cell_text,
                               collect_rows, comparison_lines, comparisons, curve_groups, curve_table, evaluate_run,
                               footnotes, main_rows, md_table, md_text, method_name, method_note, metric_headers,
                               render, run_cost, study_cell, CURVE_NOTE)

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^\dagger$",
                 "±": r"$\pm$", "−": "--", "×": r"$\times$", "‡": r"$^\ddagger$", "§": r"\S{}", "Δ": r"$\Delta$",
                 "α": r"$\alpha$", "<": r"$<$", ">": r"$>$", "¶": r"\P{}", "–": "--", "\n": " ", "\r": " "}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def distribution(rows: list[ReportRow]) -> dict[str, dict]:
    """Tables I/II: per dataset, samples per split and class (from the runs' manifests)."""
    out = {}
    for r in rows:
        c = r.run.record
        if c.dataset not in out and c.counts:
            out[c.dataset] = {"classes": c.classes, "counts": c.counts, "group_kind": c.group_kind}
    return out


def latex_tables(rows: list[ReportRow], opts: ReportOptions, comps: list | None = None,
                 compare_metric: str = "accuracy") -> str:
    """booktabs tables; the best value per dataset and metric in bold; the CI method and every footnote (marks,
    seeds, skipped images) in the caption; the paired comparisons as a second table."""
    metrics = opts.metrics
    best = {}
    for d in {r.dataset for r in rows}:
        mine = [r for r in rows if r.dataset == d]
        for m in metrics:
            best[(d, m)] = (min if m in LOWER_IS_BETTER else max)(r.values[m].value for r in mine)
    b = opts.bootstrap
    units = sorted({r.unit for r in rows})
    caption = (f"Test-set metrics in %: value [{b.confidence:.0%} {method_name(b)} "
               f"bootstrap interval{method_note(b)}, {b.n_resamples} replicates, resampling unit: {', '.join(units)}]. "
               "Precision, recall and F1 are weighted averages. Best value per dataset in bold.")
    caption += " " + " ".join(footnotes(rows, opts)[1:])
    lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{latex_escape(caption)}}}",
             r"\label{tab:probebench-results}", r"\begin{tabular}{llll" + "c" * len(metric_headers(opts)) + "}",
             r"\toprule",
             " & ".join(["Dataset", "Model", "Freeze", "Head"] + [latex_escape(h) for h in metric_headers(opts)])
             + r" \\",
             r"\midrule"]
    previous = None
    for r in rows:
        if previous is not None and r.dataset != previous:
            lines.append(r"\midrule")
        previous = r.dataset
        cells = []
        for m in metrics:
            text = latex_escape(cell_text(r.values[m], r.seeds, m, r.few_units))
            cells.append(f"\\textbf{{{text}}}" if r.values[m].value == best[(r.dataset, m)] else text)
            if opts.study_ci:
                cells.append(latex_escape(study_cell(r.values[m], m)))
        lines.append(" & ".join([latex_escape(x) for x in body_rows([r], opts, False)[0][:4]] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    comp_lines = comparison_lines(comps or [], compare_metric)
    if comp_lines:
        header = [h.format(metric=LABELS[compare_metric]) for h in COMPARE_HEADER]
        lines += [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{latex_escape(COMPARE_NOTE)}}}",
                  r"\label{tab:probebench-comparisons}", r"\begin{tabular}{llllll}", r"\toprule",
                  " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(x) for x in row) + r" \\" for row in comp_lines]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    dist = distribution(rows)
    if dist:
        lines += [r"\begin{table}[t]", r"\centering", r"\small",
                  r"\caption{Data distribution: samples per split and class.}", r"\label{tab:probebench-data}",
                  r"\begin{tabular}{lllr}", r"\toprule", r"Dataset & Split & Class & Samples \\", r"\midrule"]
        for d, info in dist.items():
            for s in ("train", "val", "test"):
                for cls, n in zip(info["classes"], info["counts"][s]):
                    lines.append(f"{latex_escape(d)} & {s} & {latex_escape(cls)} & {n} \\\\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def markdown_distribution(rows: list[ReportRow]) -> str:
    lines = []
    for d, info in distribution(rows).items():
        lines += [f"#### {md_text(d)}", ""]
        lines += md_table(["Split", *info["classes"], "Total"],
                          [[s, *map(str, info["counts"][s]), str(sum(info["counts"][s]))]
                           for s in ("train", "val", "test")])
        lines.append("")
    return "\n".join(lines)


def _figure_bytes(fig) -> tuple[bytes, bytes]:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=200, bbox_inches="tight")
    fig.savefig(svg, format="svg", bbox_inches="tight")
    return png.getvalue(), svg.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "font.family": "DejaVu Sans", "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "probebench", "svg.fonttype": "none"})
    return plt


def forest_plot(rows: list[ReportRow], dataset: str, metric: str = "accuracy"):
    """Each model × head with its interval (one row each, labelled with the head); frozen and unfrozen side by
    side; † on random-weight rows; the legend outside the data."""
    plt = _pyplot()
    mine = [r for r in rows if r.dataset == dataset]
    def row_label(r: ReportRow) -> str:
        return f"{r.model_label} · {r.head_label}" if r.mode == "frozen" else f"{r.model_label} · fine-tuned"

    labels = list(dict.fromkeys(row_label(r) for r in mine))
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(labels) + 1.2))
    styles = {"frozen": ("#1f77b4", "o"), "unfrozen": ("#d62728", "s")}
    for name, (color, marker) in styles.items():
        pts = [(labels.index(row_label(r)), r.values[metric]) for r in mine if r.mode == name]
        if not pts:
            continue
        ys = [p[0] for p in pts]
        vals = np.array([[p[1].value, p[1].low, p[1].high] for p in pts]) * scale(metric)
        ax.errorbar(vals[:, 0], ys, xerr=[vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]], fmt=marker,
                    color=color, capsize=3, label=name, markersize=5)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{LABELS[metric]}{' (%)' if scale(metric) == 100 else ''} with 95% CI")
    ax.set_title(dataset)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def confusion_figure(row: ReportRow):
    plt = _pyplot()
    k = len(row.run.classes)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (row.run.y_true, row.run.y_pred), 1)
    fig, ax = plt.subplots(figsize=(0.5 * k + 1.8, 0.5 * k + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(row.run.classes, rotation=45, ha="right")
    ax.set_yticks(range(k))
    ax.set_yticklabels(row.run.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{row.dataset} · {row.model_label} · {row.mode}", fontsize=8)
    fig.tight_layout()
    return fig, cm


def curve_figure(rows: list[ReportRow], dataset: str, metric: str = "accuracy"):
    """Label efficiency: the metric against training samples used, one line per model x head; the first seed's
    test-set interval as error bars, the spread over subsample seeds as a band around their mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    f = scale(metric)
    spans = []
    for (d, model, mode, head), points in curve_groups(rows).items():
        if d != dataset:
            continue
        x = np.array([float((p.run.record.train_used or {}).get("samples", np.nan)) for p in points])
        v = np.array([[p.values[metric].value, p.values[metric].low, p.values[metric].high] for p in points]) * f
        name = f"{model} · {head}" + ("" if mode == "frozen" else " · fine-tuned")
        bars = ax.errorbar(x, v[:, 0], yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], fmt="o-", capsize=3,
                           markersize=4, label=f"{name} (first seed, 95% CI)")
        if all(p.seeds for p in points):
            mean = np.array([p.seeds["mean"][metric] for p in points]) * f
            sd = np.array([p.seeds["sd"][metric] for p in points]) * f
            ax.fill_between(x, mean - sd, mean + sd, color=bars[0].get_color(), alpha=0.18, linewidth=0,
                            label=f"{name} (seeds: mean ± sd)")
        spans.append(x)
    if spans and np.nanmax(np.concatenate(spans)) > 10 * np.nanmin(np.concatenate(spans)):
        ax.set_xscale("log")
    ax.set_xlabel("training samples used")
    ax.set_ylabel(f"{LABELS[metric]}{' (%)' if scale(metric) == 100 else ''}")
    ax.set_title(f"{dataset}: label efficiency")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    return fig


def reliability_figure(rows: list[ReportRow], dataset: str):
    """Reliability diagram, one small panel per run: accuracy against mean top-label confidence in equal-mass bins
    of at least about 10 test samples (at most the ECE's 15), each point with its exact binomial interval, no
    connecting lines; the ECE and the bins in the panel's title, nothing drawn over the data."""
    from probebench.stats.bootstrap import clopper_pearson

    plt = _pyplot()
    mine = [r for r in rows if r.dataset == dataset]
    cols = min(3, len(mine))
    lines = -(-len(mine) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(2.7 * cols, 2.7 * lines + 0.3), squeeze=False)
    for ax, r in zip(axes.flat, mine):
        right, top = top_label(r.run.y_true, r.run.proba)
        n_bins = max(1, min(ECE_BINS, len(top) // 10))
        hit, conf, size = reliability(right, top, n_bins)
        bounds = np.array([clopper_pearson(h * s, int(s), 0.95) for h, s in zip(hit, size)])
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
        ax.errorbar(conf, hit, yerr=[hit - bounds[:, 0], bounds[:, 1] - hit], fmt="o", markersize=3,
                    color="#1f77b4", ecolor="#9ecae1", elinewidth=1, capsize=0)
        name = (f"{r.model_label} · {r.head_label if r.mode == 'frozen' else 'fine-tuned'}"
                + (" · T-scaled" if r.run.record.calibration else ""))
        ax.set_title(f"{name}\nECE {100 * r.values['ece'].value:.1f}% · {len(size)} bins of ≥{int(size.min())}",
                     fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("mean top-label confidence", fontsize=7)
        ax.set_ylabel("fraction correct", fontsize=7)
    for ax in list(axes.flat)[len(mine):]:
        ax.axis("off")
    fig.suptitle(f"{dataset}: reliability (95% exact intervals per bin)", fontsize=8)
    fig.tight_layout()
    return fig


def critical_difference_figure(across):
    """Mean ranks on one axis (1 = best, on the left), Nemenyi's critical difference as a bar, and a thick line
    joining backbones whose mean ranks differ by less than it (Demšar, 2006)."""
    plt = _pyplot()
    k = len(across.models)
    order = np.argsort(across.test.mean_ranks, kind="stable")
    r = across.test.mean_ranks[order]
    names = [across.label(across.models[i]) for i in order]
    fig, ax = plt.subplots(figsize=(6.0, 1.4 + 0.28 * k))
    ax.set_xlim(0.8, k + 0.2)
    ax.set_ylim(-(k + 2) * 0.3, 0.9)
    ax.axhline(0, color="black", linewidth=1)
    for t in range(1, k + 1):
        ax.plot([t, t], [0, 0.08], color="black", linewidth=1)
        ax.text(t, 0.14, str(t), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + across.cd], [0.6, 0.6], color="black", linewidth=1.5)
    ax.text(1 + across.cd / 2, 0.66, f"CD = {across.cd:.2f}", ha="center", va="bottom", fontsize=8)
    for i, (x, name) in enumerate(zip(r, names)):
        y = -(i + 1) * 0.3
        ax.plot([x, x, k + 0.15 if i >= k / 2 else 0.85], [0, y, y], color="#444", linewidth=0.8)
        ax.text(k + 0.18 if i >= k / 2 else 0.82, y, f"{name} ({x:.2f})", ha="left" if i >= k / 2 else "right",
                va="center", fontsize=8)
    level, reach = -0.12, -1
    for i in range(k):
        j = max(jj for jj in range(i, k) if r[jj] - r[i] < across.cd)
        if j > i and j > reach:
            ax.plot([r[i] - 0.03, r[j] + 0.03], [level, level], color="#d62728", linewidth=3, solid_capstyle="round")
            level -= 0.1
            reach = j
    ax.axis("off")
    ax.set_title(f"mean rank over {across.test.n_datasets} datasets (Friedman p = {across.test.p:.3g})", fontsize=9)
    fig.tight_layout()
    return fig


CALIBRATION_NOTE = (f"Lower is better. ECE: expected calibration error as Guo et al. (2017) define it, {ECE_BINS} "
                    "equal-width bins of the top-label confidence; ECE (equal-mass): bins at the confidences' "
                    "quantiles, refitted in every bootstrap replicate (positive class for two classes, top label "
                    "for more); Brier: "
                    "squared error of the probabilities (sum over classes for more than two); NLL: negative "
                    "log-likelihood in nats. ECE and Brier in %. With few test samples per bin (n / "
                    f"{ECE_BINS}) the ECE is biased upwards: compare ECEs on the same test set only. "
                    "Temperature: fitted on validation (--calibrate temperature) and applied to the test "
                    "probabilities; '—' when not calibrated. A temperature at its search bound (0.01 or 100) is "
                    "marked: the best one lies beyond it, and the test probabilities are pushed to one-hot (0.01) "
                    "or uniform (100), so that row's calibration says more about the search than the model.")


def at_bound(calibration: dict) -> bool:
    """A temperature that hit its search bound: the optimum lies outside [0.01, 100] and the probabilities are
    pushed to one-hot (T at 0.01) or uniform (T at 100)."""
    from probebench.stats.calibration import T_BOUNDS

    if "at_bound" in calibration:
        return bool(calibration["at_bound"])
    t = calibration.get("temperature")  # runs written before the fit recorded it
    return t is not None and min(abs(np.log(t / b)) for b in T_BOUNDS) < 1e-3


def _temperature(r: ReportRow) -> str:
    c = r.run.record.calibration
    if not c:
        return "—"
    if "per_fold" in c:
        return ", ".join(f"{f['temperature']:.3g}" + ("!" if at_bound(f) else "") for f in c["per_fold"]) \
            + " (per fold)"
    return f"{c['temperature']:.3g}" + (" (at its search bound: see the note)" if at_bound(c) else "")


def _html_table(header: list[str], body: list[list[str]], red_rows: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = []
    for i, row in enumerate(body):
        cls = ' class="random"' if i in red_rows else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border-bottom:1px solid #ccc;padding:4px 8px;
text-align:left}th{border-bottom:2px solid #444}tr.random td{color:#c00}.note{color:#555;font-size:0.9em}
.warn{color:#8a5300;background:#fff4e0;padding:6px 10px;border-left:4px solid #e0a040}
img{max-width:100%;margin:0.5em}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:0.8em}"""


def write_report(runs_dir: str | Path, out: str | Path, *, opts: ReportOptions | None = None,
                 rows: list[ReportRow] | None = None, comps: list | None = None, compare_metric: str = "accuracy",
                 settings: dict | None = None, only: list[str] | None = None,
                 study_file: Path | None = None, study_overrides: list[str] = ()) -> Path:
    """Write tables.md, tables.tex, results.csv, figures/ and report.html under ``out``; returns ``out``.

    ``rows`` / ``comps``: already evaluated rows and comparisons (``report --out`` passes its own, so
    nothing is bootstrapped twice). A study passes its ``[report]`` ``settings``, its runs (``only``) and its
    file, which the provenance block quotes.
    """
    final = Path(out)
    foreign = sorted(p.name for p in final.iterdir() if p.name not in REPORT_FILES) if final.is_dir() else []
    if final.exists() and not final.is_dir() or foreign:
        what = f"holds files that are not part of a report ({', '.join(foreign[:5])})" if foreign else "is a file"
        raise ProbebenchError(f"{final} {what}: a report replaces its folder whole, so that a kill leaves the old "
                              "report or the new one, never a mix; choose a new or empty folder with --out")
    with atomic_dir(final) as staging:  # written beside, then swapped into place
        _write_files(staging, runs_dir, opts, rows, comps, compare_metric, settings, only, study_file,
                     study_overrides)
    return final


REPORT_FILES = ("tables.md", "tables.tex", "results.csv", "figures", "report.html",  # what a report folder holds
                ".DS_Store", "Thumbs.db")  # and the file managers' clutter, which a new report may drop


def _write_figure(out: Path, stem: str, fig) -> bytes:
    """``figures/<stem>.png`` and ``.svg``; the PNG bytes, for the page."""
    png, svg = _figure_bytes(fig)
    write_bytes(out / "figures" / f"{stem}.png", png)
    write_bytes(out / "figures" / f"{stem}.svg", svg)
    return png


def _text_files(out: Path, everything, rows, opts, comps, compare_metric, calib) -> None:
    """tables.md (recommendation, results, calibration, data), tables.tex and results.csv (patient-level rows too)."""
    from probebench.report.recommend import render_recommendation

    md = ["# probebench results", ""]
    if rows:
        md += [render_recommendation(rows, opts, opts.metrics[0], "md")]
    md += ["## Results", "", render(everything, "md", opts, comps, compare_metric)]
    if rows:
        md += ["### Calibration", ""] + md_table(*calib)
        md += ["", f"- {CALIBRATION_NOTE}", ""]
    md += ["## Data distribution (Tables I/II)", "", markdown_distribution(everything)]
    write_text(out / "tables.md", "\n".join(md))
    write_text(out / "tables.tex", latex_tables(rows, opts, comps, compare_metric))
    patient_opts = ReportOptions(opts.bootstrap, level="patient", aggregate=opts.aggregate, metrics=opts.metrics,
                                 study_ci=opts.study_ci)
    grouped = [r for r in everything if len(np.unique(r.run.groups)) < len(r.run.groups)]
    csv_text = render(everything, "csv", opts)
    if grouped:
        patient_rows = [evaluate_run(r.run, patient_opts, r.repeats) for r in grouped]
        csv_text += "".join(render(patient_rows, "csv", patient_opts).splitlines(keepends=True)[1:])
    write_text(out / "results.csv", csv_text)


def _figures(out: Path, rows, everything, metric: str) -> tuple[list[str], list[str], list[str]]:
    """Per dataset the forest plot, confusion matrices and reliability diagrams, and the label-efficiency curves:
    written as PNG and SVG; their HTML (sections, reliability panels, curves)."""
    sections, reliabilities, curves = [], [], []
    for dataset in sorted({r.dataset for r in rows}):
        png = _write_figure(out, f"forest_{path_name(dataset)}", forest_plot(rows, dataset, metric))
        confusions = []
        for r in (r for r in rows if r.dataset == dataset):
            stem = (f"confusion_{path_name(dataset)}_{path_name(r.model)}_"
                    f"{r.mode}_{r.head}" + (f"_cv{r.cv['folds']}" if r.cv else ""))
            confusions.append(_img(_write_figure(out, stem, confusion_figure(r)[0]), stem))
        sections.append(f"<h3>{html.escape(dataset)}</h3>{_img(png, 'forest plot ' + dataset)}"
                        f"<div>{''.join(confusions)}</div>")
        rpng = _write_figure(out, f"reliability_{path_name(dataset)}", reliability_figure(rows, dataset))
        reliabilities.append(_img(rpng, "reliability diagram " + dataset))
    for dataset in sorted({key[0] for key in curve_groups(everything)}):
        cpng = _write_figure(out, f"label_efficiency_{path_name(dataset)}", curve_figure(everything, dataset, metric))
        curves.append(_img(cpng, "label efficiency " + dataset))
    return sections, reliabilities, curves


def _recommendation_html(out: Path, rows, opts, metric: str) -> str:
    """The recommendation section: per dataset the panel, then the comparison across datasets (with its figure)."""
    from probebench.report.recommend import across_datasets, across_lines, dataset_panels, panel_lines, panel_notes

    panels = dataset_panels(rows, opts, metric) if rows else []
    across = across_datasets(panels, metric, 1 - opts.bootstrap.confidence)
    parts = []
    for p in panels:
        header_p, body_p = panel_lines(p, opts, metric)
        parts.append(f"<h3>{html.escape(p.dataset + (f' ({p.evaluation})' if p.evaluation else ''))}</h3>"
                     + _html_table(header_p, body_p))
    parts.append(f"<p class=\"note\">{'<br>'.join(html.escape(n) for n in panel_notes(panels, metric))}</p>")
    if across:
        header_a, body_a, notes_a = across_lines(across)
        apng = _write_figure(out, "critical_difference", critical_difference_figure(across))
        parts.append("<h3>Across datasets</h3>" + _html_table(header_a, body_a)
                     + _img(apng, "critical difference diagram")
                     + f"<p class=\"note\">{'<br>'.join(html.escape(n) for n in notes_a)}</p>")
    else:
        parts.append('<p class="note">Across datasets: needs at least two datasets with two common backbones.</p>')
    return "".join(parts)


def _cost_and_data_html(rows, red: set) -> str:
    """The data distribution (Tables I/II) and the cost of each cell, as HTML sections."""
    cost_body = []
    for r in rows:
        cost = run_cost(r)
        cost_body.append([r.dataset, r.model_label, r.freeze, r.head_label, cost["extract_img_s"] or "n/a",
                          f"{cost['train_seconds']:.1f}" if cost["train_seconds"] is not None else "n/a",
                          cost["peak_memory_gib"] if cost["peak_memory_gib"] is not None else "n/a",
                          cost["device"] or "n/a"])
    dist_html = []
    for d, info in distribution(rows).items():
        dist_html.append(f"<h4>{html.escape(d)}</h4>" + _html_table(
            ["Split"] + info["classes"] + ["Total"],
            [[s] + info["counts"][s] + [sum(info["counts"][s])] for s in ("train", "val", "test")]))
    cost_header = ["Dataset", "Model", "Freeze", "Head", "Extraction img/s", "Training s", "Peak memory GiB",
                   "Device"]
    return (f"<h2>Data distribution (Tables I/II)</h2>{''.join(dist_html)}\n"
            f"<h2>Cost per cell</h2>{_html_table(cost_header, cost_body, red)}")


def _provenance(rows, everything, study_file, study_overrides) -> list[str]:
    """Versions, weights (label and sha256), every run with its device, and the study file as run."""
    version_sets = sorted({", ".join(f"{k} {v}" for k, v in sorted(r.run.record.versions.items()))
                           for r in rows})
    provenance = ["versions:"] + [f"  {v}" for v in version_sets]
    provenance += ["weights:"] + sorted({f"  {r.model}: {r.run.record.weights.get('label')} sha256 "
                                         f"{r.run.record.weights['sha256']}" for r in rows})
    provenance += ["runs:"] + [f"  {r.run.path} (device "
                               f"{r.run.record.device})" for r in everything]
    if study_file is not None:
        provenance += [f"study file {study_file}:", Path(study_file).read_text()]
        if study_overrides:
            provenance += ["overridden on the command line: " + "; ".join(study_overrides)]
    return provenance


def _write_files(out: Path, runs_dir, opts, rows, comps, compare_metric, settings, only, study_file,
                 study_overrides) -> None:
    """The report's files, written into the staging folder ``out``."""
    from probebench.supervise import step

    step(f"report: writing tables, figures and report.html for {runs_dir}")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if opts is None:
        opts = ReportOptions.of(**(settings or {}))
    if rows is None:
        rows = collect_rows(runs_dir, opts=opts, only=only)
    if not rows:
        raise ProbebenchError(f"no runs under {runs_dir}; run `probebench fit` first")
    comps = comps if comps is not None else comparisons(rows, opts, compare_metric)
    everything, rows = rows, main_rows(rows)  # label-budget rows feed the curves only
    metric = opts.metrics[0]
    calib_opts = ReportOptions(opts.bootstrap, opts.level, opts.aggregate, CALIBRATION_METRICS)
    calib_header = ["Dataset", "Model", "Freeze", "Head"] + metric_headers(calib_opts, " [CI]") + ["Temperature"]
    calib_body = [row + [_temperature(r)] for row, r in zip(body_rows(rows, calib_opts, False), rows)]
    _text_files(out, everything, rows, opts, comps, compare_metric, (calib_header, calib_body))
    sections, reliabilities, curves = _figures(out, rows, everything, metric)
    recommend_html = _recommendation_html(out, rows, opts, metric)
    curve_header, curve_body = curve_table(everything, metric)
    import matplotlib.pyplot as plt

    plt.close("all")
    header = ["Dataset", "Model", "Freeze", "Head"] + metric_headers(opts, " [CI]") + ["CI unit"]
    body = [row + [r.unit] for row, r in zip(body_rows(rows, opts, False), rows)]
    red = {i for i, r in enumerate(rows) if r.random_weights}
    comp_header = [h.format(metric=LABELS[compare_metric]) for h in COMPARE_HEADER]
    comp_body = comparison_lines(comps, compare_metric)
    comp_red = {i for i, c in enumerate(comps) if "†" in c.label}
    warnings = [n for n in footnotes(rows, opts) if n[:1] in ("‡", "§", "¶")]
    provenance = _provenance(rows, everything, study_file, study_overrides)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>probebench report</title><style>{CSS}</style></head><body>
<h1>probebench report</h1>
<h2>Recommendation ({html.escape(LABELS[metric])})</h2>{recommend_html}
<h2>Results (Tables III/IV)</h2>{''.join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings)}
{_html_table(header, body, red)}
<p class="note">{'<br>'.join(html.escape(n) for n in footnotes(rows, opts))}</p>
<h2>Paired comparisons</h2>{_html_table(comp_header, comp_body, comp_red)}
<p class="note">{html.escape(COMPARE_NOTE)}</p>
<h2>Calibration</h2>{_html_table(calib_header, calib_body, red)}
<p class="note">{html.escape(CALIBRATION_NOTE)}</p><div>{''.join(reliabilities)}</div>
{f"<h2>Label efficiency</h2>{_html_table(curve_header, curve_body)}<p class='note'>{html.escape(CURVE_NOTE)}</p>"
 f"<div>{''.join(curves)}</div>" if curve_body else ""}
<h2>Figures</h2>{''.join(sections)}
{_cost_and_data_html(rows, red)}
<h2>Provenance</h2><pre>{html.escape(chr(10).join(provenance))}</pre>
</body></html>
"""
    write_text(out / "report.html", page)
