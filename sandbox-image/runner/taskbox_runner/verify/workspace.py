"""The files a verification looks at: owned vs. the rest, tests vs. code, parsed once.

Walking never follows symlinks. Outside the owned paths it skips tool caches,
virtualenvs and build output by folder name; inside them it skips no folder by
name (a model could put code in ``app/build/``): only a real virtualenv
(``pyvenv.cfg``) the model wrote nothing into, and the non-Python files of tool
caches (``__pycache__``, ``node_modules``...). Test or production is decided by
location: a file under a test root (a ``tests``/``test``/``testing`` folder or
the base pytest config's ``testpaths``) is a test; elsewhere it is production
code whatever its name, except a pytest-style module beside the code (as in
FastAPI's docs: ``app/test_main.py``) that defines tests and that no
production module imports. Every path handed to a check is
repository-relative with forward slashes.
"""

from __future__ import annotations

import ast
import configparser
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

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
#: Tool folders whose other files are never code: inside owned paths only their ``.py`` files count.
TOOL_DIRS = frozenset(
    {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules", ".tox", ".nox"}
)
#: Compiled files are never code the model wrote; scanning them would report their constants twice.
COMPILED_SUFFIXES = (".pyc", ".pyo")


def is_test_path(rel: str, test_roots: Iterable[str] = ()) -> bool:
    """Whether a repository-relative file lies under a test root, by location only.

    A test root is any ``tests``/``test``/``testing`` folder, or one of ``test_roots``
    (repository-relative, e.g. the base pytest config's ``testpaths``). ``conftest.py``
    is pytest's own plugin file, never production code, wherever it is.
    """
    path = PurePosixPath(rel)
    if path.name == "conftest.py":
        return True
    if any(part in TEST_DIR_NAMES for part in path.parts[:-1]):
        return True
    for root in test_roots:
        folder = root.strip("/")
        if folder in {"", "."}:
            continue
        if rel == folder or rel.startswith(f"{folder}/"):
            return True
    return False


def is_test_module_name(rel: str) -> bool:
    """Whether pytest collects this file as a test module by default (``test_*.py``/``*_test.py``)."""
    name = PurePosixPath(rel).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def base_test_roots(base_config_dir: Path | None) -> tuple[str, ...]:
    """The base pytest config's ``testpaths``, in pytest's own order of config files."""
    if base_config_dir is None:
        return ()
    value: object = None
    for name, section in (
        ("pytest.ini", "pytest"),
        ("pyproject.toml", ""),
        ("tox.ini", "pytest"),
        ("setup.cfg", "tool:pytest"),
    ):
        path = base_config_dir / name
        if not path.is_file():
            continue
        value = _pyproject_testpaths(path) if not section else _ini_testpaths(path, section)
        if value is not None:
            break
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        return ()
    roots = (str(v).replace("\\", "/").strip().removeprefix("./") for v in value)
    return tuple(r for r in roots if r)


def _ini_testpaths(path: Path, section: str) -> object:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return None
    return parser.get(section, "testpaths") if parser.has_option(section, "testpaths") else None


def _pyproject_testpaths(path: Path) -> object:
    if not path.is_file():
        return None
    try:
        tool = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {})
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return None
    table = tool.get("pytest", {})
    options = table.get("ini_options", table) if isinstance(table, dict) else {}
    return options.get("testpaths") if isinstance(options, dict) else None


def walk_files(
    root: Path, start: Path, descend: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Regular files under ``start`` (or ``start`` itself), no symlinks.

    ``descend(folder)`` decides which folders are entered; by default every folder
    whose name is not in :data:`SKIPPED_DIRS` (nor an ``*.egg-info``).
    """
    if start.is_symlink() or not start.exists():
        return
    if start.is_file():
        yield start
        return
    enter = descend or _ordinary_folder
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
                if enter(entry):
                    stack.append(entry)
            elif entry.is_file() and root in entry.parents:
                yield entry


def _ordinary_folder(folder: Path) -> bool:
    return folder.name not in SKIPPED_DIRS and not folder.name.endswith(".egg-info")


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
    test_roots: tuple[str, ...] = ()
    """Repository-relative test roots from the base pytest config (``testpaths``)."""
    _trees: dict[str, ast.Module | None] = field(default_factory=dict)
    _texts: dict[str, str] = field(default_factory=dict)
    _tests: frozenset[str] | None = None

    @classmethod
    def load(
        cls,
        workdir: Path,
        owns_paths: Iterable[str],
        changed_files: Iterable[str],
        base_config_dir: Path | None = None,
    ) -> Workspace:
        """Walk ``workdir`` once: every Python file, and every file under the owned paths.

        ``base_config_dir`` (the base pytest config) adds its ``testpaths`` to the test roots.
        """
        root = workdir.resolve()
        # "." or "/" (the whole repository) normalises to "" and then owns every path.
        owns = tuple(_as_folder(root, _normalise(p)) for p in owns_paths)
        space = cls(
            root,
            owns,
            tuple(_normalise(p) for p in changed_files),
            test_roots=base_test_roots(base_config_dir),
        )
        for count, path in enumerate(walk_files(root, root, space.descends_into), start=1):
            if count > MAX_FILES:
                space.truncated = True
                logger.warning(
                    "more than %d files under %s; the rest are not checked", MAX_FILES, root
                )
                break
            rel = path.relative_to(root).as_posix()
            if rel.endswith(COMPILED_SUFFIXES) or (
                not rel.endswith(".py") and set(PurePosixPath(rel).parts[:-1]) & TOOL_DIRS
            ):
                continue
            if rel.endswith(".py"):
                space.all_python.append(rel)
            if space.is_owned(rel):
                space.owned_files.append(rel)
        space.all_python.sort()
        space.owned_files.sort()
        return space

    def descends_into(self, folder: Path) -> bool:
        """Skip caches and virtualenvs by name outside the owned paths; inside, never by name."""
        rel = folder.relative_to(self.workdir).as_posix()
        if folder.name in {".git", ".hg"}:
            return False
        if self.is_owned(f"{rel}/"):
            # A real virtualenv inside an owned folder is tooling, unless the model wrote into it.
            return not (
                (folder / "pyvenv.cfg").is_file()
                and not any(f.startswith(f"{rel}/") for f in self.changed_files)
            )
        if any(owned.startswith(f"{rel}/") for owned in self.owns_paths):
            return True  # on the way to an owned path such as "build/app/"
        return _ordinary_folder(folder)

    def is_owned(self, rel: str) -> bool:
        """Whether a repository-relative path lies under one of the owned paths."""
        for owned in self.owns_paths:
            if owned == "" or owned.endswith("/"):
                if rel.startswith(owned):
                    return True
            elif rel == owned:
                return True
        return False

    def is_test(self, rel: str) -> bool:
        """Test code or production code, by location (see the module docstring)."""
        return rel in self._test_files()

    def _test_files(self) -> frozenset[str]:
        if self._tests is None:
            located = {f for f in self.all_python if is_test_path(f, self.test_roots)}
            beside = [f for f in self.all_python if f not in located and is_test_module_name(f)]
            imported = self._imported_modules(located) if beside else set()
            self._tests = frozenset(
                located | {f for f in beside if f not in imported and self._defines_tests(f)}
            )
        return self._tests

    def _defines_tests(self, rel: str) -> bool:
        """Whether a module defines pytest tests (``test_*`` functions or ``Test*`` classes)."""
        tree = self.tree(rel)
        if tree is None:
            return False
        return any(
            (isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test"))
            or (isinstance(n, ast.ClassDef) and n.name.startswith("Test"))
            for n in tree.body
        )

    def _imported_modules(self, tests: set[str]) -> set[str]:
        """Python files that some non-test module imports (absolute or relative imports)."""
        by_module = {module_name(f): f for f in self.all_python}
        found: set[str] = set()
        for rel in self.all_python:
            if rel in tests:
                continue
            tree = self.tree(rel)
            if tree is None:
                continue
            for node in ast.walk(tree):
                for name in imported_module_names(rel, node):
                    if name in by_module and by_module[name] != rel:
                        found.add(by_module[name])
        return found

    @property
    def owned_python(self) -> list[str]:
        """Owned ``.py`` files, tests included."""
        return [f for f in self.owned_files if f.endswith(".py")]

    @property
    def owned_source(self) -> list[str]:
        """Owned ``.py`` files that are not tests: what the code constraints are about."""
        return [f for f in self.owned_python if not self.is_test(f)]

    @property
    def source_python(self) -> list[str]:
        """Every non-test ``.py`` file in the repository (for finding models and the app)."""
        return [f for f in self.all_python if not self.is_test(f)]

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


def module_name(rel: str) -> str:
    """The dotted module a repository-relative ``.py`` file is imported as (from the root)."""
    parts = list(PurePosixPath(rel).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_module_names(rel: str, node: ast.AST) -> list[str]:
    """Dotted modules (and ``module.name`` candidates) an import statement in ``rel`` can load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = resolve_relative(rel, node.module, node.level)
    if base is None:
        return []
    return [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names]


def resolve_relative(rel: str, module: str | None, level: int) -> str | None:
    """The absolute dotted module of ``from <dots><module> import ...`` written in ``rel``."""
    if level == 0:
        return module or ""
    package = list(PurePosixPath(rel).parent.parts)
    if level - 1 > len(package):
        return None
    package = package[: len(package) - (level - 1)]
    return ".".join([*package, *([module] if module else [])])
