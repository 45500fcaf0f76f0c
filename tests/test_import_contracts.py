"""The import directions of pyproject's [tool.importlinter] hold on the tree, and a wrong import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the source tree (app, workers, pyproject.toml) to break on purpose."""
    root = tmp_path_factory.mktemp("tree")
    for package in ("app", "workers"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_import_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("app/engine/core/text.py", "import fastapi", "The engine is torch only"),
        ("app/engine/core/text.py", "from app.engine.serving import pool", "The engine's wings"),
        ("app/db/models.py", "import torch", "The database layer never imports torch"),
        ("app/services/audit.py", "from app.api import errors", "Layers"),
        ("app/api/routes/jobs.py", "from workers import runner", "The API knows the workers only through"),
        ("workers/inputs.py", "from app.engine.serving import batcher", "Workers never import serving code"),
    ],
)
def test_a_wrong_import_breaks_its_contract(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # noqa\n")
    try:
        result = _lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
