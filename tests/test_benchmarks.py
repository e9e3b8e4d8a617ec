"""The benchmarks are not run by the tests (they take minutes to hours), but every name they take
from recog must exist: a module moved by a refactor once broke profile_step.py unnoticed."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _recog_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every ``from recog… import name`` and ``import recog…`` in the file."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "recog":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "recog"]
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_name_a_benchmark_takes_from_recog_exists(path: Path) -> None:
    for module, name in _recog_imports(path):
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as e:
            pytest.fail(f"{path.name}: no module {module} ({e})")
        if name is not None and not hasattr(loaded, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                pytest.fail(f"{path.name}: {module} has no {name}")


def test_the_check_sees_a_missing_module(tmp_path: Path) -> None:
    bad = tmp_path / "bench.py"
    bad.write_text("from recog.engine.memory import reuse_freed_memory\n")
    with pytest.raises(pytest.fail.Exception, match="no module recog.engine.memory"):
        test_every_name_a_benchmark_takes_from_recog_exists(bad)
