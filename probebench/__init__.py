"""probebench: which pretrained backbone, frozen or fine-tuned, serves a medical-imaging classification task.

The pipeline, one package per stage: ``models`` (registry, weights, DINOv2) -> ``data`` (dataset specs,
manifests, pixels, splits, the MRI cohort) -> ``features`` (FeatureSpec, the zarr cache, extract, export)
-> ``train`` (the training loop, heads, fit, finetune) -> run folders (``runs``) -> ``stats`` (metrics,
bootstrap) -> ``report`` (tables, published reports). ``cli`` and ``study`` drive them.

The Python API (imported on first use, so ``import probebench`` stays light)::

    from probebench import FeatureSpec, extract, fit, report_rows
    spec = FeatureSpec("dinov2_b")                      # what a cached feature is
    extract(spec, "chest_xray", data_root="data")       # features once, into ./cache
    fit(spec, "chest_xray")                             # a head on the cache -> runs/...
    rows = report_rows("runs")                          # test metrics with bootstrap intervals
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from probebench.errors import ProbebenchError  # noqa: E402

_API = {
    "create_model": ("probebench.models.registry", "create_model"),
    "load_manifest": ("probebench.data.datasets", "load_manifest"),
    "FeatureSpec": ("probebench.features.spec", "FeatureSpec"),
    "TrainConfig": ("probebench.train.config", "TrainConfig"),
    "extract": ("probebench.features.extract", "extract"),
    "fit": ("probebench.train.fit", "fit"),
    "finetune": ("probebench.train.finetune", "finetune"),
    "report_rows": ("probebench.report.tables", "collect_rows"),
}

__all__ = ["__version__", "ProbebenchError", *_API]


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'probebench' has no attribute {name!r}")
