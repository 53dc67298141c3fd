"""The seams hold: one place names a concrete engine, and the two sides of the sandbox wall share only the wire package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from controller.settings import PROJECT_ROOT

CONTROLLER = PROJECT_ROOT / "controller"
RUNNER = PROJECT_ROOT / "sandbox-image" / "runner" / "taskbox_runner"
WIRE = PROJECT_ROOT / "taskbox_wire"

#: Names that construct or reach a concrete engine; only controller/sandbox/ may use them.
CONCRETE_ENGINE_NAMES = frozenset({"DockerBackend", "DockerImages", "docker_client", "docker"})


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (``import a.b`` and ``from a.b import c`` give ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def names_used(path: Path) -> set[str]:
    """Every plain name and imported name in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def python_files(root: Path) -> list[Path]:
    """The package's modules, sorted."""
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize(
    "path",
    [p for p in python_files(CONTROLLER) if (CONTROLLER / "sandbox") not in p.parents],
    ids=lambda p: str(p.relative_to(PROJECT_ROOT)),
)
def test_no_module_outside_the_sandbox_package_names_a_concrete_engine(path: Path) -> None:
    """Engines are opened by controller.sandbox.engines.open_engine; nothing else constructs one."""
    modules = imported_modules(path)
    assert not [m for m in modules if m == "docker" or m.startswith("docker.")], path
    assert not [m for m in modules if m.startswith("controller.sandbox.docker")], path
    assert not names_used(path) & (CONCRETE_ENGINE_NAMES - {"docker"}), path


@pytest.mark.parametrize(
    "path", python_files(CONTROLLER), ids=lambda p: str(p.relative_to(PROJECT_ROOT))
)
def test_the_controller_imports_nothing_of_the_runner(path: Path) -> None:
    """The controller talks to the runner only through the wire package."""
    assert not [m for m in imported_modules(path) if m.split(".")[0] == "taskbox_runner"], path


@pytest.mark.parametrize(
    "path", python_files(RUNNER), ids=lambda p: str(p.relative_to(PROJECT_ROOT))
)
def test_the_runner_imports_nothing_of_the_controller(path: Path) -> None:
    """The image ships the runner and the wire package, not the controller."""
    assert not [m for m in imported_modules(path) if m.split(".")[0] == "controller"], path


@pytest.mark.parametrize("path", python_files(WIRE), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_the_wire_package_imports_neither_side(path: Path) -> None:
    """The wire package is shared by both sides, so it depends on neither."""
    roots = {m.split(".")[0] for m in imported_modules(path)}
    assert not roots & {"controller", "taskbox_runner"}, path
