"""``prepare-mri``: a NIfTI cohort (one folder per patient, image + tumour mask per modality) and a grade
table -> slice datasets ``t1``, ``t2``, ``flair`` with patient-level splits shared by every modality.

Per patient and modality: load with nibabel, reorient image and mask to the closest canonical (RAS)
orientation, put a mask that sits on another grid onto the image grid (nearest neighbour, noted),
resample both together to the modality's voxel spacing (image linear or cubic, mask nearest), keep
the axial slices whose mask covers more than ``min_roi_pixels`` pixels, scale intensities per volume
(robust percentiles, clipping recorded) and write 8-bit PNGs plus a manifest. Problems with one
patient's files skip that patient-modality with the reason in the summary (``strict`` makes them
errors); nothing is dropped silently. Output folders are replaced atomically.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes

from probebench.budget import default_workers
from probebench.atomic import final_path, flush_tree, partial_name
from probebench.data.datasets import load_spec
from probebench.errors import ProbebenchError
from probebench.data.splits import check_disjoint, stratified_group_holdout

MODALITIES = ("t1", "t2", "flair")
GRADES = ("II", "III", "IV")
LAYOUTS = {  # file-name patterns; .nii.gz and .nii are both tried
    "default": {"image": "{patient}/{modality}.nii.gz", "mask": "{patient}/{modality}_mask.nii.gz"},
    "brats": {"image": "{patient}/{patient}_{modality}.nii.gz", "mask": "{patient}/{patient}_seg.nii.gz"},
}
MRI_KEYS = {"modality", "spacing", "min_roi_pixels", "interpolation", "percentiles", "crop_margin", "allow_4d",
            "mask_labels", "image", "mask"}


class SkipVolume(Exception):
    """This patient's modality cannot be used; the message says why (reported, never silent)."""


@dataclass(frozen=True)
class MriSettings:
    """How one modality is prepared (from the ``[mri]`` table of its dataset spec, CLI overrides on top)."""

    modality: str
    spacing: tuple[float, float, float]
    min_roi_pixels: int = 30
    interpolation: str = "linear"  # or "cubic"
    percentiles: tuple[float, float] = (0.5, 99.5)
    crop_margin: int | None = None  # None: the full slice, as in the study
    allow_4d: bool = False
    mask_labels: tuple[int, ...] | None = None  # None: any non-zero voxel is tumour
    image: str = LAYOUTS["default"]["image"]
    mask: str = LAYOUTS["default"]["mask"]

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def settings_for(modality: str, layout: str = "default", **overrides) -> MriSettings:
    """Settings from the shipped (or local) spec ``<modality>.toml`` and the chosen file layout."""
    spec = load_spec(modality)
    table = dict(spec.mri)
    unknown = set(table) - MRI_KEYS
    if unknown:
        raise ProbebenchError(f"{spec.source}: unknown keys {sorted(unknown)} in [mri]; allowed: {sorted(MRI_KEYS)}")
    if layout not in LAYOUTS:
        raise ProbebenchError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    patterns = {**LAYOUTS[layout], **({k: table[k] for k in ("image", "mask") if k in table}
                                        if layout == "default" else {})}
    values = {**table, **patterns, **{k: v for k, v in overrides.items() if v is not None}}
    values["modality"] = table.get("modality", modality)
    for key in ("spacing", "percentiles", "mask_labels"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    if values.get("interpolation", "linear") not in ("linear", "cubic"):
        raise ProbebenchError(f"{spec.source}: interpolation must be linear or cubic")
    return MriSettings(**values)


# ---------------------------------------------------------------- labels

def parse_grade(raw: str) -> str | None:
    """'2', 'II', 'grade2', 'Grade II', 'WHO III', 'G4' ... -> 'II' / 'III' / 'IV' (None if unknown)."""
    s = raw.strip().upper()
    for word in ("WHO", "GRADE", " ", "-", "_", "."):
        s = s.replace(word, "")
    if s.startswith("G") and len(s) > 1:
        s = s[1:]
    return {"2": "II", "3": "III", "4": "IV", "II": "II", "III": "III", "IV": "IV"}.get(s)


def read_labels(path: str | Path) -> dict[str, str]:
    """patient_id -> grade class from a CSV with columns ``patient_id,grade``."""
    path = Path(path)
    if not path.is_file():
        raise ProbebenchError(f"labels file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"patient_id", "grade"} - set(reader.fieldnames or [])
        if missing:
            raise ProbebenchError(f"{path}: missing column(s) {sorted(missing)}; expected patient_id,grade")
        labels: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            grade = parse_grade(row["grade"] or "")
            if grade is None:
                raise ProbebenchError(f"{path}, line {line}: grade {row['grade']!r} is not a WHO grade II, III or "
                                      "IV (written 2/3/4, II/III/IV or grade2 ...)")
            pid = row["patient_id"].strip()
            if pid in labels and labels[pid] != grade:
                raise ProbebenchError(f"{path}, line {line}: patient {pid} has two different grades")
            labels[pid] = grade
    return labels


# ---------------------------------------------------------------- geometry

def resample_to_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape: tuple,
                     order: int) -> np.ndarray:
    """``data`` (on ``src_affine``) sampled on the grid ``dst_affine`` x ``shape`` (order 0 nearest, 1, 3)."""
    from scipy import ndimage

    m = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in shape),
                                    order=order, mode="constant" if order == 0 else "nearest", cval=0)


def target_grid(affine: np.ndarray, shape: tuple, spacing: tuple) -> tuple[np.ndarray, tuple]:
    """The grid with voxel ``spacing`` along the same axes, covering the same field of view, same centre."""
    zooms = voxel_sizes(affine)
    spacing = np.asarray(spacing, dtype=float)
    new_shape = np.maximum(1, np.round(np.asarray(shape) * zooms / spacing)).astype(int)
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * (spacing / zooms)
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    new[:3, 3] = centre - new[:3, :3] @ ((new_shape - 1) / 2)
    return new, tuple(new_shape)


def _load(path: Path, what: str, settings: MriSettings, notes: list[str]):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if img.ndim == 4:
            if img.shape[3] > 1 and not settings.allow_4d:
                raise SkipVolume(f"{path.name}: 4D {what} with {img.shape[3]} volumes (prepare-mri --allow-4d, or "
                                 "allow_4d = true in the spec's [mri], takes the first)")
            notes.append(f"{path.name}: 4D {what}, first volume used")
            img = img.slicer[..., 0]
        elif img.ndim != 3:
            raise SkipVolume(f"{path.name}: {img.ndim}D {what}, expected 3D")
        img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except SkipVolume:
        raise
    except Exception as exc:  # truncated gzip, bad header, ...
        raise SkipVolume(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from exc
    return img, data


def _binary_mask(data: np.ndarray, settings: MriSettings, name: str, notes: list[str]) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating):
        if not np.isin(np.unique(data), (0.0, 1.0)).all():
            notes.append(f"{name}: float mask thresholded at 0.5")
        return data > 0.5
    if settings.mask_labels is not None:
        return np.isin(data, settings.mask_labels)
    values = np.unique(data)
    if (values > 1).any():
        notes.append(f"{name}: mask labels {values[values > 0].tolist()}, any non-zero counts as tumour")
    return data != 0


def find_file(folder: Path, pattern: str, patient: str, modality: str) -> Path | None:
    """The file a pattern names, as .nii.gz or .nii."""
    rel = pattern.format(patient=patient, modality=modality)
    stem = rel[:-7] if rel.endswith(".nii.gz") else rel[:-4] if rel.endswith(".nii") else rel
    for candidate in (folder / f"{stem}.nii.gz", folder / f"{stem}.nii"):
        if candidate.is_file():
            return candidate
    return None


def process_volume(image_path: Path, mask_path: Path, settings: MriSettings
                   ) -> tuple[np.ndarray, np.ndarray, list[int], list[str], dict]:
    """One patient-modality -> (uint8 volume, binary mask, kept slice indices, notes, intensity record).

    Raises SkipVolume with the reason when the files cannot be used.
    """
    notes: list[str] = []
    img, data = _load(image_path, "image", settings, notes)
    mimg, mdata = _load(mask_path, "mask", settings, notes)
    data = data.astype(np.float32)
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise SkipVolume(f"{image_path.name}: {bad} NaN or inf voxels")
    mask = _binary_mask(mdata, settings, mask_path.name, notes)
    if not mask.any():
        raise SkipVolume(f"{mask_path.name}: the mask is empty (all zero)")
    if mask.shape != data.shape or not np.allclose(mimg.affine, img.affine, atol=1e-3):
        on_grid = resample_to_grid(mask.astype(np.uint8), mimg.affine, img.affine, data.shape, order=0) > 0
        if not on_grid.any():
            raise SkipVolume(f"{mask_path.name}: mask (shape {mask.shape}) does not overlap the image "
                             f"(shape {data.shape}) in world space")
        notes.append(f"{mask_path.name}: on another grid than the image (shape {mask.shape} vs {data.shape}), "
                     "resampled onto the image grid with nearest neighbour")
        mask = on_grid
    affine = img.affine
    if not np.allclose(voxel_sizes(affine), settings.spacing, atol=1e-3):
        new_affine, new_shape = target_grid(affine, data.shape, settings.spacing)
        order = 1 if settings.interpolation == "linear" else 3
        data = resample_to_grid(data, affine, new_affine, new_shape, order=order)
        mask = resample_to_grid(mask.astype(np.uint8), affine, new_affine, new_shape, order=0) > 0
    roi = mask.sum(axis=(0, 1))
    keep = [int(k) for k in np.flatnonzero(roi > settings.min_roi_pixels)]
    if not keep:
        raise SkipVolume(f"{mask_path.name}: no axial slice has more than {settings.min_roi_pixels} mask pixels "
                         f"after resampling (largest: {int(roi.max())})")
    scaled, intensity = scale_volume(data, settings.percentiles)
    if scaled is None:
        raise SkipVolume(f"{image_path.name}: constant intensity, nothing to scale")
    return scaled, mask, keep, notes, intensity


def scale_volume(data: np.ndarray, percentiles=(0.5, 99.5)) -> tuple[np.ndarray | None, dict]:
    """Per-volume intensity scaling to 8 bits: the percentiles map to 0 and 255, values beyond are clipped (and
    the clipped shares recorded); None for a constant volume."""
    lo, hi = np.percentile(data, percentiles)
    info = {"low": float(lo), "high": float(hi), "percentiles": list(percentiles),
            "clipped_low": float((data < lo).mean()), "clipped_high": float((data > hi).mean())}
    if hi <= lo:
        return None, info
    return np.rint(np.clip((data - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8), info


def display_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice k of a RAS volume as an image: anterior at the top, patient's left on the right."""
    return np.flipud(volume[:, :, k].T)


def _crop(image: np.ndarray, mask: np.ndarray, margin: int) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(0, rows[0] - margin), min(image.shape[0], rows[-1] + margin + 1)
    c0, c1 = max(0, cols[0] - margin), min(image.shape[1], cols[-1] + margin + 1)
    return image[r0:r1, c0:c1]


def _task(args) -> dict:
    """Worker: one patient-modality -> PNGs under ``out`` and their rows, or a skip reason."""
    from PIL import Image

    patient, grade, image_path, mask_path, settings, out = args
    try:
        volume, mask, keep, notes, intensity = process_volume(image_path, mask_path, settings)
    except SkipVolume as exc:
        return {"patient": patient, "skip": str(exc)}
    rows = []
    folder = out / "images" / patient
    folder.mkdir(parents=True, exist_ok=True)
    for k in keep:
        image = display_slice(volume, k)
        if settings.crop_margin is not None:
            image = _crop(image, display_slice(mask, k), settings.crop_margin)
        rel = f"images/{patient}/{patient}_{settings.modality}_z{k:03d}.png"
        Image.fromarray(image, mode="L").save(out / rel)
        rows.append({"path": rel, "patient_id": patient, "modality": settings.modality, "slice_index": k,
                     "roi_pixels": int(mask[:, :, k].sum()), "grade": grade})
    return {"patient": patient, "rows": rows, "notes": notes, "intensity": intensity}


# ---------------------------------------------------------------- cohort

@dataclass
class CohortPlan:
    patients: list[str]  # labelled patients with a folder
    labels: dict[str, str]
    unlabelled: list[str]  # folders without a grade
    without_images: list[str]  # grades without a folder


def patient_splits(patients: list[str], labels: dict[str, str], seed: int = 0, test_fraction: float = 0.3,
                   val_fraction: float = 0.2) -> dict[str, str]:
    """Patient -> split: test = 30% of patients, val = 20% of the rest; stratified by grade, seeded."""
    ids = np.array(sorted(patients))
    y = np.array([GRADES.index(labels[p]) for p in ids])
    test = stratified_group_holdout(y, ids, fraction=test_fraction, seed=seed)
    rest = np.flatnonzero(~test)
    val = np.zeros(len(ids), dtype=bool)
    val[rest[stratified_group_holdout(y[rest], ids[rest], fraction=val_fraction, seed=seed + 1)]] = True
    return {p: ("test" if t else "val" if v else "train") for p, t, v in zip(ids, test, val)}


def plan_cohort(cohort: Path, labels_csv: Path) -> CohortPlan:
    if not cohort.is_dir():
        raise ProbebenchError(f"cohort folder not found: {cohort}")
    labels = read_labels(labels_csv)
    folders = sorted(p.name for p in cohort.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    return CohortPlan(patients=[p for p in folders if p in labels], labels=labels,
                      unlabelled=[p for p in folders if p not in labels],
                      without_images=sorted(p for p in labels if p not in folders))


def prepare_mri(cohort: str | Path, labels_csv: str | Path, out: str | Path, *, modalities=MODALITIES,
                layout: str = "default", seed: int = 0, test_fraction: float = 0.3, val_fraction: float = 0.2,
                workers: int | None = None, strict: bool = False, progress: bool = True, **overrides) -> dict:
    """Build ``<out>/<modality>/`` slice datasets (images, manifest.csv, summary.json); returns the summary."""
    from probebench.progress import make_progress

    cohort, out = Path(cohort), Path(out)
    plan = plan_cohort(cohort, Path(labels_csv))
    if not plan.patients:
        raise ProbebenchError(f"no patient folder in {cohort} has a grade in {labels_csv}")
    splits = patient_splits(plan.patients, plan.labels, seed, test_fraction, val_fraction)
    summary = {"cohort": str(cohort), "labels": str(labels_csv), "layout": layout,
               "split": {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
                         "unit": "patient", "stratified_by": "grade"},
               "patients_per_split": {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")},
               "unlabelled_folders": plan.unlabelled, "labels_without_images": plan.without_images,
               "modalities": {}}
    out.mkdir(parents=True, exist_ok=True)
    n_workers = workers if workers is not None else default_workers(reserve=0)
    staging = partial_name(out / GENERATIONS / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")
    staged = {}
    with make_progress(progress, unit="vol") as bar:
        for modality in modalities:
            settings = settings_for(modality, layout, **overrides)
            tmp = staging / modality
            tmp.mkdir(parents=True)
            skipped, tasks = [], []
            for p in plan.patients:
                image = find_file(cohort, settings.image, p, settings.modality)
                mask = find_file(cohort, settings.mask, p, settings.modality)
                if image is None or mask is None:
                    what = "image" if image is None else "mask"
                    missing = (settings.image if image is None else settings.mask).format(patient=p,
                                                                                           modality=settings.modality)
                    skipped.append({"patient": p, "reason": f"no {modality} {what} ({missing} or .nii)"})
                    continue
                tasks.append((p, plan.labels[p], image, mask, settings, tmp))
            task_id = bar.add_task(f"prepare-mri {modality}", total=len(tasks), info="")
            results = []
            if n_workers > 1 and len(tasks) > 1:
                with ProcessPoolExecutor(n_workers) as pool:
                    for r in pool.map(_task, tasks):
                        results.append(r)
                        bar.update(task_id, advance=1)
            else:
                for t in tasks:
                    results.append(_task(t))
                    bar.update(task_id, advance=1)
            rows, notes, intensity = [], [], {}
            for r in results:
                if "skip" in r:
                    skipped.append({"patient": r["patient"], "reason": r["skip"]})
                    continue
                rows += [{**row, "split": splits[r["patient"]]} for row in r["rows"]]
                notes += [{"patient": r["patient"], "note": n} for n in r["notes"]]
                intensity[r["patient"]] = r["intensity"]
            skipped.sort(key=lambda s: s["patient"])
            if strict and skipped:
                raise ProbebenchError(f"{modality}: " + "; ".join(f"{s['patient']}: {s['reason']}" for s in skipped))
            if not rows:  # this modality is left out; the others are still prepared (the summary says why)
                summary.setdefault("modalities_without_volumes", {})[modality] = skipped
                shutil.rmtree(tmp)
                continue
            rows.sort(key=lambda r: (r["patient_id"], r["slice_index"]))
            check_disjoint(np.array([r["patient_id"] for r in rows]), np.array([r["split"] for r in rows]),
                           where=f"{modality}: ")
            with (tmp / "manifest.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["path", "patient_id", "modality", "slice_index", "roi_pixels",
                                                   "grade", "split"], lineterminator="\n")
                w.writeheader()
                w.writerows(rows)
            mod_summary = _modality_summary(rows, skipped, notes, intensity, settings)
            (tmp / "summary.json").write_text(json.dumps(mod_summary, indent=1, sort_keys=True) + "\n")
            summary["modalities"][modality] = mod_summary
            staged[modality] = tmp
    if not staged:
        shutil.rmtree(staging, ignore_errors=True)
        raise ProbebenchError(f"no usable volume in {cohort} for any modality; " + "; ".join(
            f"{m}: " + "; ".join(f"{s['patient']}: {s['reason']}" for s in sk[:3])
            for m, sk in summary.get("modalities_without_volumes", {}).items()))
    (staging / "prepare_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    publish_generation(out, staging, list(staged))
    return summary


GENERATIONS = ".prepare-mri"  # <out>/.prepare-mri/<generation>/<modality>/ ; "current" links to the live one


def publish_generation(out: Path, staging: Path, modalities: list[str]) -> Path:
    """Make a finished preparation live in one atomic step: ``<out>/<modality>`` are fixed links through
    ``.prepare-mri/current``, and only that link is swapped (a rename), so a kill at any moment leaves either
    the previous preparation or the new one, never modalities from two preparations or a missing folder."""
    gens = out / GENERATIONS
    final = final_path(staging)
    flush_tree(staging)  # complete files on disk before the renames that publish them
    staging.rename(final)
    link = gens / f".current.probebench-{os.getpid()}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(final.name)
    os.replace(link, gens / "current")  # the one step that switches every modality at once
    for name in modalities + ["prepare_summary.json"]:
        target, entry = Path(GENERATIONS) / "current" / name, out / name
        if entry.is_symlink() and os.readlink(entry) == str(target):
            continue
        if entry.exists() and not entry.is_symlink():  # a folder from before generations: replaced once
            old = gens / f"old-{name}"
            shutil.rmtree(old, ignore_errors=True)
            entry.rename(old)
        entry.unlink(missing_ok=True)
        entry.symlink_to(target)
    for entry in out.iterdir():  # links to modalities the live preparation does not have
        if entry.is_symlink() and os.readlink(entry).startswith(f"{GENERATIONS}/current/") and not entry.exists():
            entry.unlink()
    for old in gens.iterdir():  # earlier and interrupted preparations
        if old.name in (final.name, "current"):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    return final


def _modality_summary(rows, skipped, notes, intensity, settings: MriSettings) -> dict:
    per_split = {}
    for s in ("train", "val", "test"):
        mine = [r for r in rows if r["split"] == s]
        per_split[s] = {"patients": len({r["patient_id"] for r in mine}), "slices": len(mine),
                        "slices_per_grade": {g: sum(r["grade"] == g for r in mine) for g in GRADES},
                        "patients_per_grade": {g: len({r["patient_id"] for r in mine if r["grade"] == g})
                                               for g in GRADES}}
    return {"settings": settings.as_dict(), "splits": per_split, "skipped": skipped, "notes": notes,
            "intensity": intensity}


def _grouped(items: list[dict], key: str) -> dict[str, str]:
    """The same message for several patients said once: message -> "P01" or "12 patients: P01, P02, …"."""
    by: dict[str, list[str]] = {}
    for item in items:
        by.setdefault(item[key], []).append(item["patient"])
    return {text: ps[0] if len(ps) == 1 else f"{len(ps)} patients ({', '.join(ps[:3])}{', …' if len(ps) > 3 else ''})"
            for text, ps in by.items()}


def render_summary(summary: dict) -> str:
    """The study's Tables I and II: patients and slices per split, slices per grade per split, and skips."""
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=140)
    with console.capture() as cap:
        table = Table(title="prepare-mri: patients / slices per split (Tables I and II)")
        for col in ["modality", "split", "patients", "slices"] + [f"grade {g} slices (patients)" for g in GRADES]:
            table.add_column(col)
        for m, ms in summary["modalities"].items():
            for s, v in ms["splits"].items():
                table.add_row(m, s, str(v["patients"]), str(v["slices"]),
                              *[f"{v['slices_per_grade'][g]} ({v['patients_per_grade'][g]})" for g in GRADES])
        console.print(table)
        for m, ms in summary["modalities"].items():
            for reason, patients in _grouped(ms["skipped"], "reason").items():
                console.print(f"[yellow]skipped[/] {m} {patients}: {reason}", highlight=False)
            for note, patients in _grouped(ms["notes"], "note").items():
                console.print(f"note {m} {patients}: {note}", highlight=False)
        for m, skipped in summary.get("modalities_without_volumes", {}).items():
            console.print(f"[red]{m}: no usable volume, not written[/]", highlight=False)
            for reason, patients in _grouped(skipped, "reason").items():
                console.print(f"  {patients}: {reason}", highlight=False)
        if summary["unlabelled_folders"]:
            console.print(f"[yellow]folders without a grade (not used):[/] {', '.join(summary['unlabelled_folders'])}")
        if summary["labels_without_images"]:
            console.print(f"[yellow]grades without a folder:[/] {', '.join(summary['labels_without_images'])}")
    return cap.get()
