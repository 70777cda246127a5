"""The layering rules of docs/ENGINEERING.md ("Floors"), checked on the code: every module's imports and string
constants are parsed, so the page cannot claim what the code no longer does."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what each package may import besides itself (and the standard library and third-party packages)
ALLOWED_IMPORTS = {
    "bertforge": set(),  # the ground floor imports no stage
    "train": {"bertforge"},
    "export": {"bertforge"},  # export and serve never import each other: they meet on the ground floor
    "serve": {"bertforge"},
    "pipeline": {"bertforge", "train", "export"},
    "bench": {"bertforge", "train", "export", "serve"},
    "deploy": {"bertforge", "bench"},  # bench.report writes the simulation's figures with their provenance
}
PROJECT_PACKAGES = {*ALLOWED_IMPORTS, "tests"}
REGISTRY = ROOT / "bertforge" / "tasks.py"
# (module, task name) -> why the name is spelled there; the test fails once an exception is no longer needed
TASK_NAME_EXCEPTIONS = {
    ("export/report.py", "embed_sparse"): "ExportReport's field of that name, read back by _from_dict (a JSON key)",
}


def test_every_package_imports_only_the_floors_below_it():
    wrong = [f"{path}:{line}: imports {name}" for package, allowed in ALLOWED_IMPORTS.items()
             for path in python_files(package) for line, name, _ in imports(path)
             if name in PROJECT_PACKAGES and name != package and name not in allowed]
    assert wrong == [], "docs/ENGINEERING.md 'Floors' is broken:\n" + "\n".join(wrong)


def test_nothing_outside_tests_imports_tests():
    wrong = [f"{path}:{line}" for package in ALLOWED_IMPORTS for path in python_files(package)
             for line, name, _ in imports(path) if name == "tests"]
    assert wrong == [], "tests.* is not installed: move what these need into bertforge/testing.py\n" + "\n".join(wrong)


def test_tests_import_bench_only_to_test_it():
    """tests/bench/ tests bench; elsewhere a bench import sits inside a test whose name says it tests bench."""
    wrong = [f"{path}:{line} (in {function or 'the module'})" for path in python_files("tests")
             if not path.startswith("tests/bench/") for line, name, function in imports(path)
             if name == "bench" and "bench" not in (function or "")]
    assert wrong == [], "fixtures that tests and benches share belong in bertforge/testing.py:\n" + "\n".join(wrong)


def test_task_names_are_spelled_only_in_the_registry():
    from bertforge.tasks import TASKS

    found = {(path, node.value): node.lineno for package in ALLOWED_IMPORTS for path in python_files(package)
             if ROOT / path != REGISTRY for node in ast.walk(syntax_tree(path))
             if isinstance(node, ast.Constant) and node.value in TASKS}
    assert sorted(set(found) - set(TASK_NAME_EXCEPTIONS)) == [], \
        "import the name from bertforge/tasks.py (FILL_MASK, EMBED, ...) instead of spelling it"
    assert sorted(set(TASK_NAME_EXCEPTIONS) - set(found)) == [], "no longer needed: remove it from TASK_NAME_EXCEPTIONS"


@pytest.mark.parametrize("source, expected", [
    ("import export.cli\n", [(1, "export", None)]),
    ("from serve.client import X\n", [(1, "serve", None)]),
    ("def test_bench_x():\n    from bench import report\n", [(2, "bench", "test_bench_x")]),
    ("from . import sibling\nimport numpy as np\n", [(2, "numpy", None)]),
])
def test_imports_are_read_at_every_depth(tmp_path, source, expected):
    """The checks above see imports inside functions too, with the function's name; relative imports stay inside
    their package."""
    (tmp_path / "module.py").write_text(source)
    assert imports(str(tmp_path / "module.py")) == expected


def python_files(package: str) -> list[str]:
    """The package's .py files, as paths relative to the repository root."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in path.parts)


def imports(path: str) -> list[tuple[int, str, str | None]]:
    """(line, top-level package, enclosing function or None) of every absolute import in `path` (relative to the
    repository root, or absolute)."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name.split(".")[0], function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module.split(".")[0], function))
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            visit(child, inner)

    visit(syntax_tree(path), None)
    return found


@cache
def syntax_tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), filename=path)
