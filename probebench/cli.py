"""The ``probebench`` command line: a thin Typer layer over the Python API."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.text import Text

from probebench.errors import ProbebenchError
from probebench.train.config import PROTOCOL, check_fit_options
from probebench.features.spec import CACHE_ONLY, FeatureSpec
from probebench.validate import parse_floats, parse_ints

# rich_markup_mode=None: help text is printed as written, so "[default: ...]" or "timm:<name>[.<tag>]" never
# vanishes as markup; the consoles print messages literally too (markup=False), styled only through Text.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
out = Console(markup=False, highlight=False, soft_wrap=True)  # paths are never broken across lines
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def styled(style: str, head: str, rest: str = "") -> Text:
    """``head`` in ``style`` followed by plain ``rest``: colour without markup parsing of either."""
    return Text.assemble((head, style), rest)


def debugging() -> bool:
    return os.environ.get("PROBEBENCH_DEBUG", "") not in ("", "0")


def friendly(fn):
    """Any failure becomes one red message and exit status 2, never a traceback (unless ``--debug``): a
    ProbebenchError says what to do; an I/O error names the file; anything else is named by its type."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException, click.exceptions.Exit):
            raise
        except KeyboardInterrupt:
            err.print(styled("bold red", "interrupted"))
            raise typer.Exit(130)
        except Exception as exc:
            from probebench.errors import describe_error

            if debugging():
                raise
            extra = "" if isinstance(exc, (ProbebenchError, OSError)) else \
                " (unexpected: rerun with --debug to see where, and report it)"
            err.print(styled("bold red", "error:", f" {describe_error(exc)}{extra}"), soft_wrap=True)
            raise typer.Exit(2)
    return wrapper


def show_version(value: bool) -> None:
    if value:
        from probebench import __version__

        out.print(f"probebench {__version__}")
        raise typer.Exit()


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (also "
                                    "PROBEBENCH_DEBUG=1)."),
         version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help="Print the version and exit."),
         threads: Optional[int] = typer.Option(None, "--threads", help="Threads for torch and the BLAS libraries "
                                               "(also PROBEBENCH_THREADS).", show_default="OMP_NUM_THREADS, else the "
                                               "CPUs this process may use (affinity and cgroup quota)")):
    """Which pretrained backbone, frozen or fine-tuned, serves your imaging task, with honest CIs.

    Exit status: 0 success, 1 a check or cell failed (verify, run), 2 an error (message on stderr),
    130 interrupted.
    """
    if debug:
        os.environ["PROBEBENCH_DEBUG"] = "1"
    if threads is not None:
        if threads < 1:
            err.print(styled("bold red", "error:", f" --threads must be at least 1, got {threads}"))
            raise typer.Exit(2)
        os.environ["PROBEBENCH_THREADS"] = str(threads)  # applied when a command's heavy work starts
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, never a crash
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def float_tuple(text: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> (0.5, 0.5, 0.5) (a mean or std); None and "" stay None (``validate.parse_floats``)."""
    values = parse_floats(text, what)
    return tuple(values) if values is not None else None


DatasetOpt = typer.Option(..., "--dataset", "-d", help="Dataset spec name, or path to a spec .toml.")
DataRootOpt = typer.Option(None, "--data-root", metavar="DIR", help="Folder holding one folder per dataset; give "
                           "it more than once to search several in order.",
                           show_default="$PROBEBENCH_DATA (a :-separated list), else ./data")
RehashOpt = typer.Option(False, "--rehash", help="Read and hash every data file again instead of trusting the "
                         "memo of unchanged files (device, inode, size, mtime, ctime).")
CacheOpt = typer.Option("cache", "--cache-dir", help="Feature cache root: a folder, or an fsspec URL "
                                                     "(file://, s3://, ...) that zarr accepts.")
RunsOpt = typer.Option(Path("runs"), "--runs-dir", help="Runs folder: one folder per run under "
                       "<runs-dir>/<dataset>/<model>/<mode>/.")
WorkersOpt = typer.Option(None, "--workers", help="DataLoader workers.", show_default="CPUs - 1, max 8")
SeedOpt = typer.Option(PROTOCOL.seed, "--seed", help="Seed for shuffling and head initialisation.")
StudyBnOpt = typer.Option(False, "--study-bn-epoch1", help="The study's training loop: train mode until the first "
                          "validation, eval mode ever after (frozen: BatchNorm statistics re-estimated in epoch 1; "
                          "fine-tuned: BatchNorm fixed at its epoch-1 statistics and dropout off from epoch 2). "
                          "finetune only: it changes the features, so no cache holds them.")
StudyVggOpt = typer.Option(False, "--study-vgg-features-only", help="The study's frozen VGG16: only vgg16.features "
                           "frozen, fc6/fc7 trained. finetune --freeze-backbone only.")


JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of the table (schema: docs/json.md).")


JSON_VERSION = 1  # raised when a field changes meaning or disappears; new fields may appear without a raise


def print_json(kind: str, body: dict) -> None:
    """One JSON document on stdout: ``{"schema": "probebench.<kind>", "version": 1, ...}`` (docs/json.md)."""
    import json

    sys.stdout.write(json.dumps({"schema": f"probebench.{kind}", "version": JSON_VERSION, **body}, indent=2,
                                default=str) + "\n")


CalibrateOpt = typer.Option(None, "--calibrate", help="'temperature': fit a temperature on validation and apply it "
                            "to the test probabilities (recorded in the run).")
TrackOpt = typer.Option(None, "--track", help="Also log each new run (curves, test metrics with intervals, "
                       "configuration) to tensorboard (in <runs-dir>/_tensorboard) or mlflow; optional extras: "
                       'pip install "probebench[tensorboard]" or "probebench[mlflow]".')


def _quirks(bn_epoch1: bool, vgg_features_only: bool) -> tuple[str, ...]:
    return tuple(q for q, on in (("bn_epoch1", bn_epoch1), ("vgg_features_only", vgg_features_only)) if on)


def stage_threads() -> None:
    """The thread policy (``threads.py``) for the heavy work a command is about to start, after its cheap checks."""
    from probebench.threads import apply_threads

    apply_threads()


def check_dataset(dataset: str, data_root) -> None:
    """A misspelt dataset or a broken spec is said before any heavy library loads (after the options' own
    checks)."""
    from probebench.data.datasets import load_spec

    load_spec(dataset, data_root)


def _feature_option(f: dataclasses.Field) -> tuple[type, typer.models.OptionInfo]:
    """A ``FeatureSpec`` field as (annotation, Typer option), from the field's own declaration (``spec.option``)."""
    optional = f.type.endswith(" | None")
    base = {"str": str, "int": int, "bool": bool, "tuple[float, ...]": str}[f.type.removesuffix(" | None")]
    flag = "--" + f.name.replace("_", "-")
    flags = f.metadata["flags"] or ((f"{flag}/--no-{flag[2:]}",) if base is bool and optional else (flag,))
    default = ... if f.default is dataclasses.MISSING else f.default
    return (Optional[base] if optional else base), typer.Option(default, *flags, help=f.metadata["help"],
                                                                show_default=f.metadata.get("show_default") or True)


# FeatureSpec field -> (type, option): one group of options shared by every command that names a feature
FEATURE_OPTIONS = {f.name: _feature_option(f) for f in dataclasses.fields(FeatureSpec)}
PARSED_FLOATS = tuple(f.name for f in dataclasses.fields(FeatureSpec) if f.type.startswith("tuple"))  # mean, std


def feature_option(name: str) -> typer.models.OptionInfo:
    return FEATURE_OPTIONS[name][1]


# TrainConfig field -> (type, option), the defaults from the one protocol (train.config.PROTOCOL)
TRAIN_OPTIONS = {
    "epochs": (int, typer.Option(PROTOCOL.epochs, help="Training epochs (the best validation epoch is kept).")),
    "lr": (float, typer.Option(PROTOCOL.lr, help="Learning rate.")),
    "batch_size": (int, typer.Option(PROTOCOL.batch_size, help="Training batch size (finetune: the effective "
                                     "batch, per optimiser step).")),
    "weight_decay": (float, typer.Option(PROTOCOL.weight_decay, help="Weight decay.")),
    "optimizer": (str, typer.Option(PROTOCOL.optimizer, help="adam, adamw or sgd (fit: the linear and mlp heads).")),
    "select_metric": (str, typer.Option(PROTOCOL.select_metric, help="Keep the best epoch by val_accuracy or "
                                        "val_loss.")),
    "patience": (Optional[int], typer.Option(PROTOCOL.patience, help="Stop after N epochs without improvement.")),
    "seed": (int, SeedOpt),
}


def train_options(fn):
    """Give a command the training options; it receives them as one validated ``TrainConfig``, ``train``."""
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(fn).parameters.values() if p.name != "train"]
    added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ)
             for n, (typ, opt) in TRAIN_OPTIONS.items()]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        from probebench.train.config import TrainConfig

        return fn(train=TrainConfig(**{n: kwargs.pop(n) for n in TRAIN_OPTIONS}), **kwargs)

    wrapper.__signature__ = inspect.Signature([*own, *added])
    wrapper.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k != "train"},
                               **{n: t for n, (t, _) in TRAIN_OPTIONS.items()}}
    return wrapper


def feature_options(exclude: tuple[str, ...] = ()):
    """Give a command the feature options; it receives them as one validated ``FeatureSpec``, ``features``."""
    names = [n for n in FEATURE_OPTIONS if n not in exclude]

    def decorate(fn):
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn).parameters.values() if p.name != "features"]
        added = {n: inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=FEATURE_OPTIONS[n][1],
                                      annotation=FEATURE_OPTIONS[n][0]) for n in names}

        @functools.wraps(fn)
        def wrapper(**kwargs):
            values = {n: kwargs.pop(n) for n in names}
            for n in PARSED_FLOATS:
                values[n] = float_tuple(values.get(n), n)
            return fn(features=FeatureSpec(**values), **kwargs)  # a misspelt model is said here, before torch

        # --model first, then the command's own options, then the rest of the feature options
        wrapper.__signature__ = inspect.Signature([added.pop("model"), *own, *added.values()])
        wrapper.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k != "features"},
                                   **{n: FEATURE_OPTIONS[n][0] for n in names}}
        return wrapper
    return decorate


@app.command()
@friendly
@feature_options()
def extract(features, dataset: str = DatasetOpt, data_root: Optional[list[Path]] = DataRootOpt,
            cache_dir: str = CacheOpt,
            device: str = typer.Option("auto", help="auto (cuda > mps > cpu), or a torch device such as cuda:1."),
            batch_size: Optional[int] = typer.Option(None, help="Images per forward pass.",
                                                     show_default="8 on CPU, 64 on GPU"),
            workers: Optional[int] = WorkersOpt,
            chunk_size: int = typer.Option(256, help="Samples per cache chunk (the unit of resume and of sharding)."),
            force: bool = typer.Option(False, "--force", help="Recompute even if cached."),
            skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images and record them."),
            rehash: bool = RehashOpt):
    """Fill the feature cache: one forward pass per image through the frozen backbone (resumable)."""
    check_dataset(dataset, data_root)
    stage_threads()
    from probebench.features.extract import extract as run

    t0 = time.perf_counter()
    path = run(features, dataset, data_root=data_root, cache_dir=cache_dir, device=device, batch_size=batch_size,
               chunk_size=chunk_size, workers=workers, force=force, skip_bad=skip_bad, rehash=rehash)
    out.print(f"features cached in {path} ({time.perf_counter() - t0:.1f} s)")


@app.command()
@friendly
@feature_options()
@train_options
def fit(features, train, dataset: str = DatasetOpt, data_root: Optional[list[Path]] = DataRootOpt,
        cache_dir: str = CacheOpt, runs_dir: Path = RunsOpt,
        head: str = typer.Option("linear", help="linear (the study's layer for the CNNs), mlp, study_mlp (the "
                                 "study's DINOv2 head, 256 hidden, on --tap imagenet_logits), logreg or knn."),
        grid: bool = typer.Option(False, "--grid", help="linear/mlp: train heads over lr x weight decay "
                                                        "(5 x 4) at once and keep the best on validation."),
        hidden: int = typer.Option(256, help="Hidden width of the mlp head."),
        normalize: Optional[str] = typer.Option(None, help="'l2': L2-normalise features."),
        standardize: bool = typer.Option(False, "--standardize", help="Standardise features (train mean/sd)."),
        class_weight: Optional[str] = typer.Option(None, help="'balanced' for imbalanced classes."),
        seeds: Optional[str] = typer.Option(None, help="Repeat the fit for each seed, e.g. 1,2,3."),
        label_fraction: Optional[str] = typer.Option(
            None, "--label-fraction", help="Label-efficiency curve: train on these shares of the training labels, "
            "e.g. 0.01,0.1,1 (whole patients, stratified by class, nested; one run per share and seed)."),
        shots: Optional[str] = typer.Option(
            None, "--shots", help="Label-efficiency curve: this many training samples per class, e.g. 1,4,16 "
            "(whole patients, nested; one run per number and seed)."),
        cv: Optional[int] = typer.Option(
            None, "--cv", help="K-fold cross-validation by patient over every sample (no test split needed): "
            "out-of-fold predictions pooled into one run, per-fold metrics beside them."),
        calibrate: Optional[str] = CalibrateOpt,
        study_bn_epoch1: bool = typer.Option(False, "--study-bn-epoch1", hidden=True),  # said: finetune only
        study_vgg_features_only: bool = typer.Option(False, "--study-vgg-features-only", hidden=True),
        force: bool = typer.Option(False, "--force", help="Train again even if an identical run exists (same "
                                   "cache, settings and seed); otherwise that run is reused."),
        fit_memory: Optional[float] = typer.Option(None, "--fit-memory", help="GiB the features may take in "
                                                   "memory; above it the linear head trains from the store, a window "
                                                   "of batches at a time, with the same weights.",
                                                   show_default="half the free memory"),
        track: Optional[str] = TrackOpt):
    """Train a head on cached features (frozen backbone) and write a run directory."""
    from probebench.report.tracking import check_tracker, track_run, tracker_location

    check_tracker(track)
    seed_list = parse_ints(seeds, "seeds")
    fractions, shot_list = parse_floats(label_fraction, "label-fraction"), parse_ints(shots, "shots")
    if study_bn_epoch1 or study_vgg_features_only:
        from probebench.train.finetune import STUDY_QUIRKS

        quirks = _quirks(study_bn_epoch1, study_vgg_features_only)
        raise ProbebenchError("fit trains on cached features, which are fixed; the study's quirk "
                              + "; ".join(f"--study-{q.replace('_', '-')}: {STUDY_QUIRKS[q]}" for q in quirks)
                              + " — changes what the backbone computes or trains, so no cache can hold it. Use "
                              "`probebench finetune --freeze-backbone` with the same flag.")
    check_fit_options(hidden=hidden, normalize=normalize, standardize=standardize,
                      class_weight=class_weight, seeds=seed_list, grid=grid, label_fractions=fractions,
                      shots=shot_list, cv=cv, calibrate=calibrate)
    check_dataset(dataset, data_root)
    stage_threads()
    from probebench.train.fit import fit as run

    path = run(features, dataset, data_root=data_root, cache_dir=cache_dir, runs_dir=runs_dir, head=head, grid=grid,
               train=train, hidden=hidden, normalize=normalize, standardize=standardize, class_weight=class_weight,
               seeds=seed_list,
               label_fractions=fractions, shots=shot_list, cv=cv, calibrate=calibrate,
               force=force, on_run=lambda run: track_run(run, track), fit_memory=fit_memory)
    out.print(f"run: {path}")
    if track:
        out.print(f"logged to {tracker_location(track, runs_dir)}")


@app.command()
@friendly
@feature_options(exclude=CACHE_ONLY)
@train_options
def finetune(features, train, dataset: str = DatasetOpt, data_root: Optional[list[Path]] = DataRootOpt,
             runs_dir: Path = RunsOpt,
             head: str = typer.Option("linear", help="The new layer: linear, or study_mlp (256 hidden; the study's "
                                      "DINOv2 head, with --tap imagenet_logits)."),
             freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train only the new layer, "
                                                  "images through the frozen backbone every epoch (the slow "
                                                  "equivalent of extract + fit)."),
             accumulate: int = typer.Option(1, help="Split each batch into N micro-batches (gradient "
                                                    "accumulation; same effective batch)."),
             grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute ViT "
                                                     "activations in backward to save memory."),
             precision: str = typer.Option("auto", help="auto (bf16 on CUDA, else fp16 with a grad scaler; "
                                                        "fp32 on CPU), fp32, bf16, fp16."),
             device: str = typer.Option("auto", help="auto (cuda > mps > cpu) or a torch device."),
             workers: Optional[int] = WorkersOpt,
             study_bn_epoch1: bool = StudyBnOpt, study_vgg_features_only: bool = StudyVggOpt,
             resume: bool = typer.Option(False, "--resume", help="Continue from the last completed epoch."),
             force: bool = typer.Option(False, "--force", help="Run again even if an identical run is complete."),
             calibrate: Optional[str] = CalibrateOpt,
             track: Optional[str] = TrackOpt):
    """Fine-tune end to end (all weights trained: the study's unfrozen setting) and write a run directory."""
    from probebench.report.tracking import check_tracker, track_run, tracker_location

    check_tracker(track)
    check_dataset(dataset, data_root)
    stage_threads()
    from probebench.train.finetune import finetune as run

    path = run(features, dataset, data_root=data_root, runs_dir=runs_dir, head=head, train=train,
               freeze_backbone=freeze_backbone, accumulate=accumulate, grad_checkpointing=grad_checkpointing,
               precision=precision, device=device, workers=workers, resume=resume, force=force,
               study_quirks=_quirks(study_bn_epoch1, study_vgg_features_only), calibrate=calibrate,
               on_run=lambda run: track_run(run, track))
    if path is not None:  # under torchrun only rank 0 writes
        out.print(f"run written to {path}")
        if track:
            out.print(f"logged to {tracker_location(track, runs_dir)}")


def _report_options(n_resamples: int, method: str, unit: str, seed: int, level: str, aggregate: str,
                    metrics: str | None = None, stratify: str = "auto", study_ci: bool = False,
                    bootstrap_memory: float | None = None, jackknife_groups: int | None = None):
    from probebench.report.tables import ReportOptions

    return ReportOptions.of(resamples=n_resamples, method=method, unit=unit, seed=seed, stratify=stratify,
                            level=level, aggregate=aggregate, metrics=metrics, study_ci=study_ci,
                            bootstrap_memory=bootstrap_memory, jackknife_groups=jackknife_groups)


ResamplesOpt = typer.Option(1000, "--resamples", help="Bootstrap replicates (>= 1000 advised).")
MethodOpt = typer.Option("percentile", "--method", help="Interval: percentile or bca.")
UnitOpt = typer.Option("auto", "--unit", help="Resample 'group' (patients, lesions), 'sample', or 'auto' "
                                              "(groups when samples share them).")
LevelOpt = typer.Option("sample", "--level", help="'sample', or 'patient': one prediction per group.")
AggOpt = typer.Option("mean", "--aggregate", help="Patient level: 'mean' probability or majority 'vote'.")
BootSeedOpt = typer.Option(0, "--seed", help="Bootstrap seed.")
MemoryOpt = typer.Option(None, "--bootstrap-memory", help="GiB for the replicates' metrics at once (default: a "
                         "quarter of the free memory, at most 2); any value gives the same intervals.")
GroupsOpt = typer.Option(None, "--jackknife-groups", help="BCa: the exact leave-one-out jackknife up to this many "
                         "units, a delete-d jackknife of this many random groups above (O(n)).",
                         show_default="1000")
StratifyOpt = typer.Option("auto", "--stratify", help="Resample within each class: 'class', 'none', or 'auto' "
                           "(when a class has fewer than 5 units in the test set).")


@app.command()
@friendly
def report(runs_dir: Path = RunsOpt,
           dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="Only these datasets."),
           fmt: str = typer.Option("table", "--format", "-f", help="table, md or csv."),
           metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated columns; csv always has "
                                                 "every metric.", show_default="accuracy,precision,recall,f1"),
           n_resamples: int = ResamplesOpt, method: str = MethodOpt, unit: str = UnitOpt, level: str = LevelOpt,
           aggregate: str = AggOpt, seed: int = BootSeedOpt, stratify: str = StratifyOpt,
           bootstrap_memory: Optional[float] = MemoryOpt, jackknife_groups: Optional[int] = GroupsOpt,
           compare_metric: str = typer.Option("accuracy", "--compare-metric", help="Metric of the comparisons."),
           all_runs: bool = typer.Option(False, "--all", help="Every run, not only the latest per cell."),
           study_ci: bool = typer.Option(False, "--study-ci", help="Add the study's summary beside each interval: "
                                         "the mean of the replicates with the CI of that mean (labelled; for "
                                         "comparison with published numbers, not a measure of uncertainty)."),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Also write tables.md, tables.tex, "
                                                  "results.csv, figures/ and report.html into this folder."),
           recommend: bool = typer.Option(False, "--recommend", help="Print which backbone to pick instead of the "
                                          "tables: per dataset the backbones ranked by the first --metrics metric "
                                          "with intervals and paired tests against the top one (Holm), their cost, "
                                          "and across datasets mean ranks with Friedman's test."),
           strict: bool = typer.Option(False, "--strict", help="Stop at a run that does not read back whole "
                                       "(edited, malformed or damaged) instead of leaving it out with a note."),
           as_json: bool = JsonOpt):
    """Tables laid out like the study's Tables III/IV, with bootstrap intervals and paired comparisons."""
    from probebench.report.tables import FORMATS, collect_rows, comparisons, render

    if fmt not in FORMATS:
        raise ProbebenchError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    opts = _report_options(n_resamples, method, unit, seed, level, aggregate, metrics, stratify, study_ci,
                           bootstrap_memory, jackknife_groups)
    stage_threads()
    from probebench.supervise import step

    step(f"report: reading and checking the runs under {runs_dir}")
    rows = collect_rows(runs_dir, datasets=dataset, opts=opts, latest_only=not all_runs, strict=strict)
    for _, reason in rows.skipped:
        err.print(styled("yellow", "note:", f" left out {reason}"))
    if not rows:
        left = f" ({len(rows.skipped)} damaged run(s) left out: `probebench verify`)" if rows.skipped else ""
        raise ProbebenchError(f"no runs found under {runs_dir}{left}; run `probebench fit` first")
    comps = comparisons(rows, opts, compare_metric) if fmt != "csv" or as_json else None
    if recommend and fmt == "csv" and not as_json:
        raise ProbebenchError("--recommend prints a table or Markdown (--format table|md) or JSON (--json), not csv")
    if as_json:
        from probebench.report.tables import report_record

        record = report_record(rows, opts, comps, compare_metric)
        if recommend:
            from probebench.report.recommend import recommendation_record

            record["recommendation"] = recommendation_record(rows, opts, opts.metrics[0])
        print_json("report", record)
    elif recommend:
        from probebench.report.recommend import render_recommendation

        sys.stdout.write(render_recommendation(rows, opts, opts.metrics[0], fmt))
    else:
        sys.stdout.write(render(rows, fmt, opts, comps, compare_metric))
    if out_dir is not None:
        from probebench.report.publish import write_report

        write_report(runs_dir, out_dir, opts=opts, rows=rows, comps=comps, compare_metric=compare_metric)
        out.print(f"report files written to {out_dir}/ (tables.md, tables.tex, results.csv, figures/, report.html)")


@app.command()
@friendly
def compare(run_a: Path = typer.Argument(..., help="First run directory."),
            run_b: Path = typer.Argument(..., help="Second run directory (same test set)."),
            n_resamples: int = ResamplesOpt, method: str = MethodOpt, unit: str = UnitOpt, level: str = LevelOpt,
            aggregate: str = AggOpt, seed: int = BootSeedOpt, stratify: str = StratifyOpt,
            bootstrap_memory: Optional[float] = MemoryOpt, jackknife_groups: Optional[int] = GroupsOpt):
    """A − B for every metric on the same bootstrap replicates: intervals, and p-values that invert them."""
    from probebench.report.tables import compare_runs, render_compare
    from probebench.runs import read_run

    for p in (run_a, run_b):
        if not (p / "predictions.csv").is_file():
            raise ProbebenchError(f"{p} is not a run directory (no predictions.csv)")
    opts = _report_options(n_resamples, method, unit, seed, level, aggregate, stratify=stratify,
                           bootstrap_memory=bootstrap_memory, jackknife_groups=jackknife_groups)
    a, b = read_run(run_a), read_run(run_b)
    stage_threads()
    diffs, used = compare_runs(a, b, opts)
    sys.stdout.write(render_compare(a, b, diffs, used, opts))


@app.command()
@friendly
def demo(out_dir: Path = typer.Option(Path("demo-output"), "--out", help="Where data, cache and runs go."),
         models: str = typer.Option("resnet50,dinov2_s", help="Comma-separated registry names."),
         epochs: int = typer.Option(100, help="Head training epochs.")):
    """Synthetic data end to end (extract, fit, report) with random weights, offline, in minutes."""
    from probebench.demo import run_demo

    stage_threads()
    t0 = time.perf_counter()
    text = run_demo(out_dir, tuple(m.strip() for m in models.split(",") if m.strip()), epochs=epochs)
    sys.stdout.write(text)
    out.print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {out_dir}/")


@app.command()
@friendly
@feature_options()
def export(features, dataset: str = DatasetOpt,
           out_file: Path = typer.Option(..., "--out", help="File to write (.h5, .npz or .pt)."),
           fmt: Optional[str] = typer.Option(None, "--format", help="h5, npz or pt.",
                                             show_default="from the suffix of --out"),
           data_root: Optional[list[Path]] = DataRootOpt, cache_dir: str = CacheOpt):
    """Write cached features with labels, ids, groups and splits to HDF5, NumPy or PyTorch."""
    check_dataset(dataset, data_root)
    stage_threads()
    from probebench.features.export import export_features

    path = export_features(features, dataset, out_file, fmt=fmt, data_root=data_root, cache_dir=cache_dir)
    out.print(f"features exported to {path}")


bench_app = typer.Typer(help="Benchmarks (the scripts in benchmarks/ call the same code).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("extract")
@friendly
def bench_extract(model: str = typer.Option("resnet50", "--model", "-m", help="Registry or timm: model name."),
                  images: int = typer.Option(96, help="Synthetic JPEGs to extract."),
                  image_size: int = typer.Option(1024, help="Side of the synthetic JPEGs in px."),
                  color: bool = typer.Option(False, "--color", help="Colour JPEGs (fundus-like) instead of "
                                                                    "grayscale (chest X-ray-like)."),
                  batch_size: Optional[int] = typer.Option(None, help="Images per forward pass.",
                                                           show_default="8 on CPU, 64 on GPU"),
                  precision: str = feature_option("precision"), channels_last: Optional[bool] = feature_option("channels_last"),
                  draft: bool = feature_option("draft"),
                  device: str = typer.Option("auto", help="auto (cuda > mps > cpu) or a torch device."),
                  workers: Optional[int] = WorkersOpt,
                  json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result to this file.")):
    """Extraction throughput: forward only (a), the real extract (b), the study's one-image loop (c), decoding
    alone (d), and b/a, b/c, b / limit; prints JSON."""
    import json

    from probebench.bench import throughput

    stage_threads()
    result = throughput(model, images, image_size, not color, batch_size, precision, device, workers,
                        channels_last, draft)
    text = json.dumps(result, indent=1)
    sys.stdout.write(text + "\n")
    if json_out is not None:
        from probebench.atomic import write_text

        write_text(json_out, text + "\n")


@bench_app.command("memory")
@friendly
def bench_memory(model: str = typer.Option("resnet50", "--model", "-m", help="Registry or timm: model name.")):
    """Peak memory (RSS) of whole extractions of 1,000 and 4,000 small images, each in a fresh process."""
    import json

    from probebench.bench import memory

    sys.stdout.write(json.dumps(memory(model), indent=1) + "\n")


@app.command("run")
@friendly
def run_study(study_file: Path = typer.Argument(..., help="Study TOML, e.g. configs/paper.toml or configs/demo.toml. "
                                               "Paths inside it are relative to its folder."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
              only: Optional[str] = typer.Option(None, "--only", help="Select cells, e.g. dataset=t1,model=dinov2_b "
                                                 "(alternatives with |, quoted in the shell: 'model=resnet50|vgg16')."),
              data_root: Optional[list[Path]] = typer.Option(None, "--data-root", metavar="DIR", help="Search "
                                                             "these folders for the datasets instead of the file's "
                                                             "data_root (relative to the current folder)."),
              assignments: Optional[list[str]] = typer.Option(None, "--set", metavar="SECTION.KEY=VALUE",
                                                              help="Override a setting of the file, e.g. --set "
                                                              "training.lr=3e-4 (repeatable; recorded in the state "
                                                              "and the report)."),
              weights: Optional[list[str]] = typer.Option(
                  None, "--weights", metavar="WEIGHTS|MODEL=WEIGHTS", help="Weights for every model (random, "
                  "random:SEED, a checkpoint or snapshot path) or for one, e.g. --weights dinov2_b=/models/vitb14.pth "
                  "(repeatable); recorded like --set."),
              as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the plan as JSON "
                                                                 "(schema: docs/json.md)."),
              track: Optional[str] = TrackOpt,
              shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N", help="Run only the I-th of N "
                                                  "deterministic shares of the cells (dataset x model units dealt "
                                                  "round-robin), e.g. from a SLURM job array; the report covers "
                                                  "every shard finished so far."),
              devices: Optional[str] = typer.Option(None, "--devices", help="Run the cells side by side, one "
                                                    "shard per device, e.g. 0,1,2,3 (GPU ids; cpu for none), "
                                                    "then write the whole report."),
              launcher: Optional[str] = typer.Option(None, "--launcher", help="submitit: submit --jobs shards "
                                                     "as SLURM jobs (local processes without SLURM), wait, then "
                                                     "write the whole report; needs the submitit extra."),
              jobs: int = typer.Option(4, "--jobs", help="With --launcher: how many shards (jobs)."),
              slurm: Optional[list[str]] = typer.Option(None, "--slurm", metavar="KEY=VALUE", help="With --launcher "
                                                        "submitit: a job parameter, e.g. slurm_partition=gpu, "
                                                        "gpus_per_node=1, timeout_min=720 (repeatable).")):
    """The whole study grid: extract once, fit every frozen head, fine-tune; skip what is done; report."""
    from probebench.report.tracking import check_tracker
    from probebench.study import load_study, parse_shard, plan_record
    from probebench.study import run_study as run
    from probebench.study.launch import launch

    from probebench.study.config import weights_assignments

    t0 = time.perf_counter()
    check_tracker(track)
    share = parse_shard(shard)
    assignments = [*(assignments or []), *weights_assignments(weights or [])]
    for line in launch(study_file, devices=devices, launcher=launcher, jobs=jobs, slurm=slurm or [], shard=shard,
                       dry_run=dry_run, overrides=assignments or [], data_root=data_root, only=only, track=track):
        err.print(styled("red", "failed", f" {line}"))
    study = load_study(study_file, overrides=assignments or [], data_root=data_root)
    if as_json and not dry_run:
        raise ProbebenchError("--json prints the plan: use it with --dry-run")
    echo = (lambda text: None) if as_json else (lambda text: sys.stdout.write(text))
    if not dry_run:
        stage_threads()
    result = run(study, only=only, dry_run=dry_run, echo=echo, track=track, shard=share)
    if dry_run:
        if as_json:
            print_json("plan", plan_record(study, result.cells))
        return
    failed = result.failed
    for c in failed:
        err.print(styled("red", c.status, f" {c.key}: {c.detail}"))
    done = sum(c.status == "done" for c in result.cells)
    out.print(f"{done}/{len(result.cells)} cells done, {len(failed)} failed or blocked, "
              f"{time.perf_counter() - t0:.1f} s" + (f"; report in {result.report_dir}/" if result.report_dir else ""))
    if failed:
        raise typer.Exit(1)


@app.command("prepare-mri")
@friendly
def prepare_mri(cohort: Path = typer.Option(..., "--cohort", help="Folder with one subfolder per patient."),
                labels: Path = typer.Option(..., "--labels", help="CSV with columns patient_id,grade."),
                out_dir: Optional[Path] = typer.Option(None, "--out", help="Where t1/ t2/ flair/ go.",
                                                       show_default="the data root"),
                modalities: str = typer.Option("t1,t2,flair", help="Comma-separated modalities (dataset specs)."),
                layout: str = typer.Option("default", help="default: <patient>/<modality>.nii.gz + "
                                           "<modality>_mask.nii.gz; brats: <patient>/<patient>_<modality>.nii.gz + "
                                           "<patient>_seg.nii.gz."),
                min_roi_pixels: Optional[int] = typer.Option(None, help="Keep slices whose mask covers more "
                                                             "pixels than this.", show_default="the spec's, 30"),
                interpolation: Optional[str] = typer.Option(None, help="Image resampling: linear or cubic.",
                                                            show_default="the spec's"),
                crop_margin: Optional[int] = typer.Option(None, help="Crop around the tumour with this margin "
                                                          "(px).", show_default="no crop: the full slice"),
                allow_4d: bool = typer.Option(False, "--allow-4d", help="Take the first volume of 4D files."),
                seed: int = typer.Option(0, help="Split seed."),
                workers: Optional[int] = typer.Option(None, help="Parallel processes.",
                                                      show_default="CPUs, max 8"),
                strict: bool = typer.Option(False, "--strict", help="Stop at the first unusable volume instead "
                                            "of skipping and reporting it."),
                data_root: Optional[list[Path]] = DataRootOpt):
    """NIfTI cohort + grades -> slice datasets t1 / t2 / flair with patient-level splits."""
    from probebench.data.datasets import data_root as resolve_root
    from probebench.data.mri import prepare_mri as run
    from probebench.data.mri import render_summary

    target = out_dir or resolve_root(data_root)
    summary = run(cohort, labels, target, modalities=[m.strip() for m in modalities.split(",") if m.strip()],
                  layout=layout, seed=seed, workers=workers, strict=strict, min_roi_pixels=min_roi_pixels,
                  interpolation=interpolation, crop_margin=crop_margin, allow_4d=allow_4d or None)
    sys.stdout.write(render_summary(summary))
    out.print(f"datasets written under {target}/ (summary: {target}/prepare_summary.json); next: "
              f"probebench extract --model dinov2_b --dataset t1 --data-root {target}")


@app.command()
@friendly
def models(model: Optional[str] = typer.Option(None, "--model", "-m", help="Show the preprocessing this model gets "
                                               "with --weights (and --mean/--std, --resize/--crop)."),
           weights: str = typer.Option("auto", "--weights", help="With --model: a checkpoint or a Hugging Face "
                                       "snapshot folder, whose preprocessor_config.json is then used."),
           resize: Optional[int] = feature_option("resize"), crop: Optional[int] = feature_option("crop"),
           mean: Optional[str] = feature_option("mean"), std: Optional[str] = feature_option("std"),
           interpolation: Optional[str] = feature_option("interpolation"), as_json: bool = JsonOpt):
    """The model registry: feature taps, dimensions, weights, where they are looked for, and preprocessing."""
    from dataclasses import asdict

    from probebench.models.registry import REGISTRY, preprocessing_of, registry_records

    if model is not None:
        pre = preprocessing_of(model, weights, resize=resize, crop=crop, mean=float_tuple(mean, "mean"),
                               std=float_tuple(std, "std"), interpolation=interpolation)
        if as_json:
            print_json("model", {"name": model, "weights": weights, "preprocessing": asdict(pre)})
        else:
            out.print(f"{model}: {pre.describe()}")
        return
    hub, records = registry_records()
    if as_json:
        print_json("models", {"hub": str(hub), "models": records})
        return
    out.print(f"models (weights looked for in {hub}):")  # plain lines: readable at 80 columns, names never cut
    for c, r in zip(REGISTRY.values(), records):
        taps = ", ".join(f"{t}{'*' if t == c.default_tap else ''} ({d})" for t, d in c.taps.items())
        out.print(Text.assemble((c.name, "bold"), f"  {c.family.name}; taps {taps}"))
        if c.card:
            out.print(f"  {c.card.source}")
            out.print(f"  licence {c.card.licence}{'; gated: accept its terms on the hub first' if c.card.gated else ''}")
            out.print(f"  feature: {c.card.feature}")
        else:
            out.print(f"  weights {c.weights_label}: {c.weight_file} ({'present' if r['present'] else 'not present'})")
        out.print(f"  preprocessing {c.preprocessing.describe()}")
        if r["needs"]:
            out.print(f"  needs: {r['needs']}")
    out.print("* default tap. Any timm model works too: --model timm:<name>[.<tag>] (e.g. "
              "timm:convnext_tiny.fb_in1k) or timm:hf-hub:<org>/<repo>; its pre-logits features are the tap and "
              "its pretrained config gives the preprocessing. Hugging Face vision models (DINOv2, DINOv3, ViT, SigLIP, "
              "CLIP): --model hf:<org>/<repo> or hf:<snapshot folder> (pip install \"probebench[hf]\"). open_clip "
              "image towers: --model open_clip:<model>@<tag>, open_clip:hf-hub:<org>/<repo> or open_clip:<folder> "
              "(pip install \"probebench[open_clip]\"). A named model given a snapshot folder as --weights DIR takes "
              "its architecture from the folder and, for Hugging Face snapshots, the preprocessing of its "
              "preprocessor_config.json. --mean/--std override any model's normalisation; "
              "`probebench models --model NAME --weights W` shows what a model will get.")


@app.command()
@friendly
def verify(cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Feature cache root to check."),
           runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Runs folder to check."),
           repair: bool = typer.Option(False, "--repair", help="Mark damaged chunks for recomputation by the next "
                                       "extract, move damaged runs into <runs-dir>/_damaged/, remove leftovers of "
                                       "interrupted writes. Not while another probebench command writes there."),
           verbose: bool = typer.Option(False, "--verbose", "-v", help="List the items that are fine too.")):
    """Check every feature store and run folder (metadata, chunks finite and readable, predictions parse);
    exit status 1 when a problem is left."""
    from probebench.verify import render
    from probebench.verify import verify as run

    result = run(cache_dir, runs_dir, repair=repair)
    sys.stdout.write(render(result, verbose))
    if result.problems:
        raise typer.Exit(1)


@app.command()
@friendly
def datasets(data_root: Optional[list[Path]] = DataRootOpt,
             check: bool = typer.Option(False, "--check", help="Resolve present datasets: split counts, the data "
                                        "root each was found in, ids shared across shipped splits, notes."),
             rehash: bool = RehashOpt, as_json: bool = JsonOpt):
    """Dataset specs that are registered, and whether their data is present under the data roots."""
    if rehash:
        from probebench.data.filehash import forget

        forget()
    from probebench.data.catalog import dataset_records
    from probebench.data.datasets import data_roots, spec_dirs

    roots = data_roots(data_root)
    folders = spec_dirs(data_root)
    records = dataset_records(data_root, check)
    if as_json:
        print_json("datasets", {"data_roots": [str(r) for r in roots], "spec_dirs": [str(d) for d in folders],
                                "datasets": records})
        return
    # plain lines, not a table: readable at 80 columns, in logs and through pipes, names never cut
    out.print(f"data roots: {', '.join(str(r) for r in roots)}")
    out.print(f"spec folders (first match wins): {', '.join(str(d) for d in folders)}")
    for r in records:
        where = (f" in {r['data_root']}" if len(roots) > 1 else "") if r["present"] else ""
        out.print(Text.assemble((r["name"], "bold"), f"  {r['kind']}, folder {r['folder']}: "
                                f"{'present' + where if r['present'] else 'not present'}; classes "
                                f"{', '.join(r['classes'])}"))
        if r["description"]:
            out.print(f"  {r['description']}")
        if check and "error" in r:
            out.print(Text(f"  error: {r['error']}", style="red"))
        elif check and "splits" in r:
            out.print("  " + "\n  ".join(_check_lines(r)))


def _check_lines(r: dict) -> list[str]:
    """What `datasets --check` says of a resolved dataset: images (and groups) per split, overlap, notes."""
    kind = r["group_kind"]
    per = lambda d: "/".join(f"{d[s]:,}" for s in ("train", "val", "test"))  # noqa: E731
    lines = [f"found in {r['found_in']}", f"train/val/test: {per(r['splits'])} images"
             + (f", {per(r['split_groups'])} {kind}s ({r['groups']:,} in all)" if kind != "image" else "")
             + (f"; {r['clutter']} clutter file(s) skipped" if r["clutter"] else "")]
    if o := r["shipped_overlap"]:
        what = ("ids numbered per shipped split, treated as different groups" if o["scope"] == "split"
                else "shared by the release's own splits, kept as shipped")
        lines.append(f"{o['count']} {kind} id(s) in more than one shipped split ({what}): "
                     + ", ".join(o["examples"][:3]))
    return lines + [f"note: {n}" for n in r["notes"]]


def entry() -> None:
    """The ``probebench`` command: the Typer app, supervised (a death by a signal becomes one message)."""
    from probebench.supervise import supervised

    supervised(app)


if __name__ == "__main__":
    entry()
