"""The files a verification looks at: owned vs. the rest, tests vs. code, parsed once.

Walking never follows symlinks and skips tool caches and virtualenvs; every path
handed to a check is repository-relative with forward slashes.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".venv",
        "venv",
        "env",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".tox",
        ".nox",
        "build",
        "dist",
        "site-packages",
    }
)

#: Files larger than this are not parsed or scanned (generated data, not code).
MAX_FILE_BYTES = 1_000_000
#: Files walked per verification; a repository past this is cut with a warning.
MAX_FILES = 20_000

TEST_DIR_NAMES = frozenset({"tests", "test", "testing"})


def is_test_path(rel: str) -> bool:
    """Whether a repository-relative file is test code (pytest's default layout and names)."""
    path = PurePosixPath(rel)
    name = path.name
    if name == "conftest.py" or name.startswith("test_") or name.endswith("_test.py"):
        return True
    return any(part in TEST_DIR_NAMES for part in path.parts[:-1])


def is_test_module_name(rel: str) -> bool:
    """Whether pytest collects this file as a test module by default (``test_*.py``/``*_test.py``)."""
    name = PurePosixPath(rel).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def walk_files(root: Path, start: Path) -> Iterator[Path]:
    """Regular files under ``start`` (or ``start`` itself), no symlinks, no cache folders."""
    if start.is_symlink() or not start.exists():
        return
    if start.is_file():
        yield start
        return
    stack = [start]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in SKIPPED_DIRS and not entry.name.endswith(".egg-info"):
                    stack.append(entry)
            elif entry.is_file() and root in entry.parents:
                yield entry


@dataclass
class Workspace:
    """The repository as the checks see it."""

    workdir: Path
    owns_paths: tuple[str, ...]
    changed_files: tuple[str, ...]
    owned_files: list[str] = field(default_factory=list)
    all_python: list[str] = field(default_factory=list)
    truncated: bool = False
    syntax_errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    _trees: dict[str, ast.Module | None] = field(default_factory=dict)
    _texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls, workdir: Path, owns_paths: Iterable[str], changed_files: Iterable[str]
    ) -> Workspace:
        """Walk ``workdir`` once: every Python file, and every file under the owned paths."""
        root = workdir.resolve()
        # "." or "/" (the whole repository) normalises to "" and then owns every path.
        owns = tuple(_as_folder(root, _normalise(p)) for p in owns_paths)
        space = cls(root, owns, tuple(_normalise(p) for p in changed_files))
        for count, path in enumerate(walk_files(root, root), start=1):
            if count > MAX_FILES:
                space.truncated = True
                logger.warning(
                    "more than %d files under %s; the rest are not checked", MAX_FILES, root
                )
                break
            rel = path.relative_to(root).as_posix()
            if rel.endswith(".py"):
                space.all_python.append(rel)
            if space.is_owned(rel):
                space.owned_files.append(rel)
        space.all_python.sort()
        space.owned_files.sort()
        return space

    def is_owned(self, rel: str) -> bool:
        """Whether a repository-relative path lies under one of the owned paths."""
        for owned in self.owns_paths:
            if owned == "" or owned.endswith("/"):
                if rel.startswith(owned):
                    return True
            elif rel == owned:
                return True
        return False

    @property
    def owned_python(self) -> list[str]:
        """Owned ``.py`` files, tests included."""
        return [f for f in self.owned_files if f.endswith(".py")]

    @property
    def owned_source(self) -> list[str]:
        """Owned ``.py`` files that are not tests: what the code constraints are about."""
        return [f for f in self.owned_python if not is_test_path(f)]

    @property
    def source_python(self) -> list[str]:
        """Every non-test ``.py`` file in the repository (for finding models and the app)."""
        return [f for f in self.all_python if not is_test_path(f)]

    def text(self, rel: str) -> str:
        """The file's text ('' when unreadable or too large)."""
        if rel not in self._texts:
            path = self.workdir / rel
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    self._texts[rel] = ""
                else:
                    self._texts[rel] = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                self._texts[rel] = ""
        return self._texts[rel]

    def tree(self, rel: str) -> ast.Module | None:
        """The parsed module, or ``None`` when it does not parse (ruff reports the syntax error)."""
        if rel not in self._trees:
            try:
                self._trees[rel] = ast.parse(self.text(rel), filename=rel)
            except (SyntaxError, ValueError) as exc:
                line = getattr(exc, "lineno", None) or 1
                self.syntax_errors[rel] = (line, str(getattr(exc, "msg", exc)))
                self._trees[rel] = None
        return self._trees[rel]

    def trees(self, files: Iterable[str]) -> Iterator[tuple[str, ast.Module]]:
        """``(rel, tree)`` for each file that parses."""
        for rel in files:
            tree = self.tree(rel)
            if tree is not None:
                yield rel, tree


def _as_folder(root: Path, owned: str) -> str:
    """An owned entry naming an existing folder gets its trailing '/' even if the caller left it off."""
    if owned and not owned.endswith("/") and (root / owned).is_dir():
        return f"{owned}/"
    return owned


def _normalise(path: str) -> str:
    """Repository-relative, forward slashes, no leading './'; directories keep their '/'."""
    text = path.replace("\\", "/").strip()
    while text.startswith("./"):
        text = text[2:]
    text = text.lstrip("/")
    return "" if text == "." else text
