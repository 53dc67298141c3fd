"""A static index of the tests a repository defines, to notice tests removed or never run.

It reads the source (no import, no pytest) the way pytest's default collection
sees it: ``test*`` functions at module level and ``test*`` methods of ``Test*``
classes (or ``unittest.TestCase`` subclasses) in ``test_*.py`` / ``*_test.py`` files.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from taskbox_runner.verify.workspace import MAX_FILE_BYTES, is_test_module_name, walk_files

if TYPE_CHECKING:
    from pathlib import Path

#: ``{test file: {test id: line}}``; a test id is ``name`` or ``Class::name``.
TestLines = dict[str, dict[str, int]]


def index_tests(workdir: Path) -> dict[str, list[str]]:
    """Test ids per test file under ``workdir``: run it at the base, pass it as ``base_tests``."""
    return {rel: sorted(ids) for rel, ids in index_test_lines(workdir).items()}


def index_test_lines(workdir: Path) -> TestLines:
    """Test ids with their definition lines, per repository-relative test file."""
    root = workdir.resolve()
    index: TestLines = {}
    for path in walk_files(root, root):
        rel = path.relative_to(root).as_posix()
        if not is_test_module_name(rel):
            continue
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError):
            continue
        index[rel] = tests_in_module(tree)
    return index


def tests_in_module(tree: ast.Module) -> dict[str, int]:
    """The tests pytest would collect from a parsed module, by id."""
    found: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            found[node.name] = node.lineno
        elif isinstance(node, ast.ClassDef) and _collected_class(node):
            for item in node.body:
                if isinstance(
                    item, ast.FunctionDef | ast.AsyncFunctionDef
                ) and item.name.startswith("test"):
                    found[f"{node.name}::{item.name}"] = item.lineno
    return found


def _collected_class(node: ast.ClassDef) -> bool:
    is_case = any(_base_name(b).endswith("TestCase") for b in node.bases)
    if not (node.name.startswith("Test") or is_case):
        return False
    for item in node.body:
        # pytest refuses classes with __init__, and honours ``__test__ = False``.
        if isinstance(item, ast.FunctionDef) and item.name == "__init__" and not is_case:
            return False
        if (
            isinstance(item, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__test__" for t in item.targets)
            and isinstance(item.value, ast.Constant)
            and item.value.value is False
        ):
            return False
    return True


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""
