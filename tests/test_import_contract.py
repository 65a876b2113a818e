"""The import contract (``[tool.importlinter]`` in pyproject.toml) holds on this tree, and it bites:
the same check on a copy of the tree with one forbidden import added fails and names that import.
Static analysis only: no server, no model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` (first on the path, ahead of any installed copy)."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_tree_keeps_the_contract():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(("module", "line", "contract", "chain"), [
    ("retrain/job.py", "import classifier.engine", "the stages are independent", "retrain.job -> classifier.engine"),
    ("classifier/api.py", "import torch", "only model imports torch", "classifier.api -> torch"),
    ("model/train.py", "from retrain import paths", "model imports no stage", "model.train -> retrain"),
    ("infra/bus.py", "import model.format", "infra imports no stage and not model", "infra.bus -> model.format"),
])
def test_a_forbidden_import_breaks_it(tmp_path, module, line, contract, chain):
    copy = tmp_path / "tree"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    with (copy / module).open("a") as f:
        f.write(f"\n{line}  # deliberate violation\n")

    out = lint_imports(copy)
    assert out.returncode != 0
    assert "1 broken" in out.stdout, out.stdout
    broken = out.stdout[out.stdout.index("Broken contracts"):]
    assert contract in broken and chain in broken, broken
