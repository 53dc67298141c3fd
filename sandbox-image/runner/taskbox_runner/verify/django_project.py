"""Django specifics: the settings module, and whether the migrations are current.

Tests run under pytest with pytest-django (one run, junit and coverage like
every other project); ``manage.py makemigrations --check --dry-run`` runs in its
own subprocess (against in-memory SQLite, see ``django_migrations``) and reports into
constraint 5.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from taskbox_runner.verify import django_migrations
from taskbox_runner.verify.models import Finding
from taskbox_runner.verify.process import harness_env, run_bounded

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

MIGRATIONS_TIMEOUT_SECONDS = 120.0


def find_manage_py(space: Workspace) -> str | None:
    """The shallowest ``manage.py`` in the repository."""
    found = sorted(
        (p for p in space.all_python if Path(p).name == "manage.py"),
        key=lambda p: (p.count("/"), p),
    )
    return found[0] if found else None


def settings_module(space: Workspace, manage_py: str) -> str | None:
    """The ``DJANGO_SETTINGS_MODULE`` that manage.py sets by default."""
    tree = space.tree(manage_py)
    if tree is None:
        return None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setdefault"
            and len(node.args) == 2  # noqa: PLR2004 -- setdefault(key, value)
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "DJANGO_SETTINGS_MODULE"
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            return node.args[1].value
    return None


def check_migrations(
    space: Workspace, manage_py: str, settings: str | None, scratch_dir: Path
) -> list[Finding]:
    """A finding when models changed without a migration (or the check could not run)."""
    project_dir = (space.workdir / manage_py).parent
    script = Path(django_migrations.__file__)
    done = run_bounded(
        [sys.executable, "-P", str(script), str(project_dir), settings or ""],
        cwd=project_dir,
        env=harness_env(),
        timeout=MIGRATIONS_TIMEOUT_SECONDS,
        output_dir=scratch_dir,
        label="makemigrations",
    )
    if done.returncode == 0:
        return []
    if done.returncode == 1 and "Migrations for" in done.stdout:
        pending = [
            line.strip() for line in done.stdout.splitlines() if line.strip().endswith(".py")
        ]
        listed = ", ".join(pending) or done.last_line()
        return [
            Finding(
                manage_py,
                1,
                "TB0508",
                f"models changed without migrations: {listed}; run makemigrations",
            )
        ]
    why = "timed out" if done.timed_out else done.last_line()
    return [Finding(manage_py, 1, "TB0508", f"makemigrations --check could not run: {why}")]
