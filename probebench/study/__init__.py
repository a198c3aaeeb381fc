"""``run``: a whole study grid (datasets x models x frozen/unfrozen x heads x seeds) from one TOML file.

``config`` reads and checks the file into a ``Study``; ``plan`` resolves its cells and their status; ``run`` runs
what is not done and writes the report; ``state`` records each cell (``<runs_dir>/_studies/<name>.json``), so a
rerun after a crash picks up where it stopped; ``launch`` spreads shards over devices or SLURM jobs.
"""

from probebench.study.config import MODES, SECTIONS, Study, apply_overrides, load_study
from probebench.study.launch import run_on_devices, run_with_submitit
from probebench.study.plan import Cell, feature_spec, model_inputs, parse_shard, plan, plan_record, render_plan
from probebench.study.run import StudyResult, run_study
from probebench.study.state import study_runs

__all__ = ["MODES", "SECTIONS", "Cell", "Study", "StudyResult", "apply_overrides", "feature_spec", "load_study",
           "model_inputs", "parse_shard", "plan", "plan_record", "render_plan", "run_on_devices", "run_study",
           "run_with_submitit", "study_runs"]
