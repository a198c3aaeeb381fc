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

from probebench.atomic import write_bytes, write_text
from probebench.stats.bootstrap import BootstrapConfig
from probebench.errors import ProbebenchError
from probebench.stats.metrics import LABELS, LOWER_IS_BETTER, STUDY_METRICS, scale
from probebench.validate import path_name
from probebench.report.tables import (COMPARE_HEADER, COMPARE_NOTE, ReportOptions, ReportRow, body_rows, cell_text,
                               collect_rows, comparison_lines, comparisons, evaluate_run, footnotes, metric_headers,
                               render, study_cell)

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^\dagger$",
                 "±": r"$\pm$", "−": "--", "×": r"$\times$", "‡": r"$^\ddagger$", "§": r"\S{}", "Δ": r"$\Delta$",
                 "α": r"$\alpha$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def distribution(rows: list[ReportRow]) -> dict[str, dict]:
    """Tables I/II: per dataset, samples per split and class (from the runs' manifests)."""
    out = {}
    for r in rows:
        c = r.run.config
        if c["dataset"] not in out and "counts" in c:
            out[c["dataset"]] = {"classes": c["classes"], "counts": c["counts"], "group_kind": c.get("group_kind")}
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
    caption = (f"Test-set metrics in %: value [{b.confidence:.0%} {'BCa' if b.method == 'bca' else 'percentile'} "
               f"bootstrap interval, {b.n_resamples} replicates, resampling unit: {', '.join(units)}]. "
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
        lines += [f"#### {d}", "", "| Split | " + " | ".join(info["classes"]) + " | Total |",
                  "|---|" + "---|" * (len(info["classes"]) + 1)]
        for s in ("train", "val", "test"):
            counts = info["counts"][s]
            lines.append(f"| {s} | " + " | ".join(str(n) for n in counts) + f" | {sum(counts)} |")
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
        return f"{r.model_label} · {r.head_label}" if r.freeze == "Y" else f"{r.model_label} · fine-tuned"

    labels = list(dict.fromkeys(row_label(r) for r in mine))
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(labels) + 1.2))
    styles = {"Y": ("#1f77b4", "o", "frozen"), "N": ("#d62728", "s", "unfrozen")}
    for freeze, (color, marker, name) in styles.items():
        pts = [(labels.index(row_label(r)), r.values[metric]) for r in mine if r.freeze == freeze]
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
    ax.set_title(f"{row.dataset} · {row.model_label} · {'frozen' if row.freeze == 'Y' else 'unfrozen'}", fontsize=8)
    fig.tight_layout()
    return fig, cm


def _cost(row: ReportRow) -> dict:
    """Extraction images/s, training time, peak memory: what the run recorded (reports read run folders only)."""
    record, m = row.run.record, row.run.metrics
    return {"extract_img_s": record.extract_img_s, "train_seconds": m.get("fit_seconds", m.get("train_seconds")),
            "peak_memory_gib": m.get("peak_memory_gib"), "device": record.device}


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
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if opts is None:
        r = settings or {}
        opts = ReportOptions(BootstrapConfig(n_resamples=r.get("resamples", 1000), method=r.get("method", "percentile"),
                                             unit=r.get("unit", "auto"), stratify=r.get("stratify", "auto")),
                             level=r.get("level", "sample"),
                             aggregate=r.get("aggregate", "mean"), metrics=tuple(r.get("metrics", STUDY_METRICS)),
                             study_ci=r.get("study_ci", False))
    if rows is None:
        rows = collect_rows(runs_dir, opts=opts, only=only)
    if not rows:
        raise ProbebenchError(f"no runs under {runs_dir}; run `probebench fit` first")
    comps = comps if comps is not None else comparisons(rows, opts, compare_metric)
    md = ["# probebench results", "", render(rows, "md", opts, comps, compare_metric),
          "## Data distribution (Tables I/II)", "", markdown_distribution(rows)]
    write_text(out / "tables.md", "\n".join(md))
    write_text(out / "tables.tex", latex_tables(rows, opts, comps, compare_metric))
    patient_opts = ReportOptions(opts.bootstrap, level="patient", aggregate=opts.aggregate, metrics=opts.metrics,
                                 study_ci=opts.study_ci)
    grouped = [r for r in rows if len(np.unique(r.run.groups)) < len(r.run.groups)]
    csv_text = render(rows, "csv", opts)
    if grouped:
        patient_rows = [evaluate_run(r.run, patient_opts, r.repeats) for r in grouped]
        csv_text += "".join(render(patient_rows, "csv", patient_opts).splitlines(keepends=True)[1:])
    write_text(out / "results.csv", csv_text)

    sections = []
    for dataset in sorted({r.dataset for r in rows}):
        png, svg = _figure_bytes(forest_plot(rows, dataset, opts.metrics[0]))
        write_bytes(out / "figures" / f"forest_{path_name(dataset)}.png", png)
        write_bytes(out / "figures" / f"forest_{path_name(dataset)}.svg", svg)
        confusions = []
        for r in (r for r in rows if r.dataset == dataset):
            fig, _ = confusion_figure(r)
            cpng, csvg = _figure_bytes(fig)
            stem = (f"confusion_{path_name(dataset)}_{path_name(r.model)}_"
                    f"{'frozen' if r.freeze == 'Y' else 'unfrozen'}_{r.head}")
            write_bytes(out / "figures" / f"{stem}.png", cpng)
            write_bytes(out / "figures" / f"{stem}.svg", csvg)
            confusions.append(_img(cpng, stem))
        sections.append(f"<h3>{html.escape(dataset)}</h3>{_img(png, 'forest plot ' + dataset)}"
                        f"<div>{''.join(confusions)}</div>")
    import matplotlib.pyplot as plt

    plt.close("all")
    header = ["Dataset", "Model", "Freeze", "Head"] + metric_headers(opts, " [CI]") + ["CI unit"]
    body = [row + [r.unit] for row, r in zip(body_rows(rows, opts, False), rows)]
    red = {i for i, r in enumerate(rows) if r.random_weights}
    comp_header = [h.format(metric=LABELS[compare_metric]) for h in COMPARE_HEADER]
    comp_body = comparison_lines(comps, compare_metric)
    comp_red = {i for i, c in enumerate(comps) if "†" in c.label}
    warnings = [n for n in footnotes(rows, opts) if n[:1] in ("‡", "§")]
    cost_body = []
    for r in rows:
        cost = _cost(r)
        cost_body.append([r.dataset, r.model_label, r.freeze, r.head_label, cost["extract_img_s"] or "n/a",
                          f"{cost['train_seconds']:.1f}" if cost["train_seconds"] is not None else "n/a",
                          cost["peak_memory_gib"] if cost["peak_memory_gib"] is not None else "n/a",
                          cost["device"] or "n/a"])
    dist_html = []
    for d, info in distribution(rows).items():
        dist_html.append(f"<h4>{html.escape(d)}</h4>" + _html_table(
            ["Split"] + info["classes"] + ["Total"],
            [[s] + info["counts"][s] + [sum(info["counts"][s])] for s in ("train", "val", "test")]))
    version_sets = sorted({", ".join(f"{k} {v}" for k, v in sorted(r.run.config.get("versions", {}).items()))
                           for r in rows})
    provenance = ["versions:"] + [f"  {v}" for v in version_sets]
    provenance += ["weights:"] + sorted({f"  {r.model}: {r.run.config['weights'].get('label')} sha256 "
                                         f"{r.run.config['weights']['sha256']}" for r in rows})
    provenance += ["runs:"] + [f"  {r.run.path} (device "
                               f"{r.run.record.device})" for r in rows]
    if study_file is not None:
        provenance += [f"study file {study_file}:", Path(study_file).read_text()]
        if study_overrides:
            provenance += ["overridden on the command line: " + "; ".join(study_overrides)]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>probebench report</title><style>{CSS}</style></head><body>
<h1>probebench report</h1>
<h2>Results (Tables III/IV)</h2>{''.join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings)}
{_html_table(header, body, red)}
<p class="note">{'<br>'.join(html.escape(n) for n in footnotes(rows, opts))}</p>
<h2>Paired comparisons</h2>{_html_table(comp_header, comp_body, comp_red)}
<p class="note">{html.escape(COMPARE_NOTE)}</p>
<h2>Figures</h2>{''.join(sections)}
<h2>Data distribution (Tables I/II)</h2>{''.join(dist_html)}
<h2>Cost per cell</h2>{_html_table(['Dataset', 'Model', 'Freeze', 'Head', 'Extraction img/s', 'Training s',
                                    'Peak memory GiB', 'Device'], cost_body, red)}
<h2>Provenance</h2><pre>{html.escape(chr(10).join(provenance))}</pre>
</body></html>
"""
    write_text(out / "report.html", page)
    return out
