"""Which web framework a project uses, as the worker brief says: from its dependency files.

The base copies of pyproject.toml / requirements.txt / setup.cfg come first (the
model cannot change them); when they name no framework (a new project), the
repository's own files and then the imports in its code decide. FastAPI wins
when several are named.
"""

from __future__ import annotations

import ast
import re
import tomllib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from taskbox_runner.verify.models import Framework
    from taskbox_runner.verify.workspace import Workspace

DEPENDENCY_FILES = ("pyproject.toml", "requirements.txt", "setup.cfg")
_ORDER: tuple[Framework, ...] = ("fastapi", "django", "flask")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def detect_framework(base_config_dir: Path | None, space: Workspace) -> Framework:
    """The framework named by the base dependency files, else the current ones, else imports."""
    for folder in (base_config_dir, space.workdir):
        if folder is not None:
            found = _pick(dependency_names(folder))
            if found != "unknown":
                return found
    imported: set[str] = set()
    for _, tree in space.trees(space.source_python):
        imported |= _top_level_imports(tree)
    return _pick(imported)


def dependency_names(folder: Path) -> set[str]:
    """Lower-case distribution names listed in the folder's dependency files."""
    names: set[str] = set()
    for file_name in DEPENDENCY_FILES:
        path = folder / file_name
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if file_name == "pyproject.toml":
            names |= _pyproject_names(text)
        elif file_name == "requirements.txt":
            names |= _requirement_names(text.splitlines())
        else:
            names |= _setup_cfg_names(text)
    return names


def _pick(names: Iterable[str]) -> Framework:
    present = {n.lower().replace("_", "-") for n in names}
    for framework in _ORDER:
        if framework in present or (framework == "django" and "djangorestframework" in present):
            return framework
    return "unknown"


def _requirement_names(lines: Iterable[str]) -> set[str]:
    names = set()
    for line in lines:
        stripped = line.split("#", 1)[0].strip()
        if not stripped or stripped.startswith("-"):
            continue
        match = _REQUIREMENT_NAME.match(stripped)
        if match:
            names.add(match.group(1).lower().split("[")[0])
    return names


def _pyproject_names(text: str) -> set[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return set()
    lines: list[str] = []
    project = data.get("project", {})
    lines += [str(d) for d in project.get("dependencies", [])]
    for group in project.get("optional-dependencies", {}).values():
        lines += [str(d) for d in group]
    for group in data.get("dependency-groups", {}).values():
        lines += [d for d in group if isinstance(d, str)]
    poetry = data.get("tool", {}).get("poetry", {})
    lines += list(poetry.get("dependencies", {}).keys())
    for group in poetry.get("group", {}).values():
        lines += list(group.get("dependencies", {}).keys())
    return _requirement_names(lines)


def _setup_cfg_names(text: str) -> set[str]:
    # install_requires is a multi-line value; a plain scan of indented lines is enough here.
    lines = [line for line in text.splitlines() if line.startswith((" ", "\t"))]
    return _requirement_names(lines)


def _top_level_imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names
