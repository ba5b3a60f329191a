"""Repository invariants a clean-clone CI run relies on."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_command_ci_runs():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if "pytest" in line and not line.startswith("#"))
    assert command in (ROOT / "README.md").read_text().splitlines()


def test_core_package_imports_no_flower():
    """fp8fl/ must stay usable without Flower (flwr-datasets' partitioners are a separate library)."""
    flower_import = re.compile(r"^\s*(from|import)\s+flwr(\.|\s|$)", re.MULTILINE)
    for source in (ROOT / "fp8fl").rglob("*.py"):
        assert not flower_import.search(source.read_text()), source
