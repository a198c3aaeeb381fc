"""The claims table (docs/claims.md) and the README name tests and benchmarks that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_and_benchmark_the_claims_table_names_exists():
    text = (REPO / "docs" / "claims.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text)
    assert len(named) > 80  # the table is parsed, not skipped
    missing = [f"{f}::{t}" for f, t in named if not (REPO / f).exists() or t not in _tests_in(REPO / f)]
    assert not missing, missing
    scripts = set(re.findall(r"python (benchmarks/\w+\.py)", text))
    assert scripts and all((REPO / s).exists() for s in scripts), scripts


def test_every_test_the_readme_names_exists_and_the_readme_links_the_claims():
    readme = (REPO / "README.md").read_text()
    assert "docs/claims.md" in readme
    everything = set().union(*(_tests_in(p) for p in (REPO / "tests").glob("test_*.py")))
    named = set(re.findall(r"`(test_\w+)`", readme))
    assert len(named) >= 8 and not named - everything, named - everything
    scripts = set(re.findall(r"python (benchmarks/\w+\.py)", readme))
    assert all((REPO / s).exists() for s in scripts), scripts
