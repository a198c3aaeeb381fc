"""The registered dataset specs and what of their data is on this machine (``probebench datasets``), as records."""

from __future__ import annotations

from probebench.data.datasets import INTERNAL_SPECS, find_dataset_root, list_specs, load_manifest, load_spec
from probebench.errors import describe_error


def dataset_records(data_root=None, check: bool = False) -> list[dict]:
    """One record per registered spec: kind, folder, classes, whether its data is present (and in which root);
    with ``check``, the resolved dataset's images, groups, split and class counts, clutter, shipped overlap and
    notes, or the error that stopped it (one unreadable dataset never hides the others)."""
    records = []
    for name, path in list_specs(data_root).items():
        if name in INTERNAL_SPECS:
            continue
        spec = load_spec(path)
        base = find_dataset_root(spec, data_root)
        r = {"name": name, "kind": spec.kind, "folder": spec.root, "spec": str(path), "classes": list(spec.classes),
             "description": spec.description, "present": base is not None,
             "data_root": str(base) if base is not None else None}
        if check and base is not None:
            try:
                r.update(_resolved(spec, data_root))
            except Exception as exc:  # one unreadable dataset never hides the others
                r["error"] = describe_error(exc)
        records.append(r)
    return records


def _resolved(spec, data_root) -> dict:
    m = load_manifest(spec, data_root, quiet=True)
    c = m.counts()
    return dict(found_in=str(m.data_root), images=len(m), groups=len(set(m.groups.tolist())), group_kind=m.group_kind,
                splits={s: int(sum(c[s])) for s in ("train", "val", "test")},
                split_groups={s: len(set(m.groups[m.splits == s].tolist())) for s in ("train", "val", "test")},
                per_class={s: dict(zip(spec.classes, map(int, c[s]))) for s in ("train", "val", "test")},
                clutter=len(m.junk), shipped_overlap=m.shipped_overlap or None, notes=list(m.notes))
