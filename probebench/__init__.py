"""probebench: which pretrained backbone, frozen or fine-tuned, serves a medical-imaging task.

The Python API under the CLI: ``create_model``, ``load_manifest``, ``extract``, ``fit``,
``collect_runs`` / ``report_table``, ``run_demo``.
"""

__version__ = "0.1.0"

from probebench.errors import ProbebenchError  # noqa: E402

__all__ = ["__version__", "ProbebenchError"]
