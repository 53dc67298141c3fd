"""The one ``ruff check`` run per verification, and how its results split between checks.

ruff runs once, from the repository root, with the project's *base* ruff config
(``--config`` makes ruff use it for every file and ignore any config the model
wrote; its relative paths resolve against the working directory), or with ruff's
own defaults when the base has none (the seed's command is plain ``ruff check
.``), plus ``--extend-select`` of the rules behind constraints 1, 2, 3 and 8. It
runs with ``--ignore-noqa``: every file it is given is owned or changed by the
model, so no ``# noqa`` there hides a finding; constraint 9 reports them with
the comment named. Files are passed by name and without ``--force-exclude``, so
an owned file in a folder ruff excludes by default (``build/``, ``dist/``,
``venv/``) is checked too. Constraint 9 then counts only the rules the project
itself selects, and follows the project's own ``exclude``/``extend-exclude``
(e.g. generated Django migrations), never ruff's default folder exclusions.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskbox_runner.verify.process import harness_env, run_bounded

if TYPE_CHECKING:
    from taskbox_runner.verify.process import Completed
    from taskbox_runner.verify.workspace import Workspace

logger = logging.getLogger(__name__)

#: Rules ruff checks for the constraints other than 9, by constraint id.
HARNESS_RULES: dict[int, tuple[str, ...]] = {
    1: ("S608",),
    2: ("S105", "S106", "S107"),
    3: ("ANN001", "ANN002", "ANN003", "ANN201", "ANN202", "ANN204", "ANN205", "ANN206"),
    8: ("T201", "T203"),
}
ALL_HARNESS_RULES = tuple(code for codes in HARNESS_RULES.values() for code in codes)

#: Folder names ruff excludes by default; an owned file there is never left out.
RUFF_DEFAULT_EXCLUDED = frozenset(
    {
        ".bzr", ".direnv", ".eggs", ".git", ".git-rewrite", ".hg", ".ipynb_checkpoints",
        ".mypy_cache", ".nox", ".pants.d", ".pyenv", ".pytest_cache", ".pytype", ".ruff_cache",
        ".svn", ".tox", ".venv", ".vscode", "__pypackages__", "_build", "buck-out", "build",
        "dist", "node_modules", "site-packages", "venv",
    }
)  # fmt: skip
#: ruff's own default when a config sets no ``select`` (and when there is no config at all).
RUFF_DEFAULT_SELECT = ("E4", "E7", "E9", "F")
#: Kept for callers of the first cut; the harness no longer widens ruff's defaults.
DEFAULT_SELECT = RUFF_DEFAULT_SELECT
RUFF_TIMEOUT_SECONDS = 120.0
#: ``ruff check`` as every harness run starts it. ``-P``: the repository (the working folder)
#: never goes on sys.path, so a model-written module there (``__future__.py``, ``ruff/``) is
#: never imported by the harness.
RUFF_CHECK = (sys.executable, "-P", "-m", "ruff", "check", "--no-cache")
#: ruff's JSON for a huge repository could be larger; past this it is reported as unreadable.
MAX_RUFF_OUTPUT = 64 * 1024 * 1024
SYNTAX_RULE = "SYNTAX"

_ENABLED_CODE = re.compile(r"\(([A-Z]+[0-9]+)\),?\s*$")
_NOQA = re.compile(
    r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.IGNORECASE
)
_CODE = re.compile(r"^(?P<alpha>[A-Z]+)(?P<rest>[0-9A-Z]*)$")
# Linters whose code mixes letters and digits, or whose prefix is shorter than the letters.
_DIGIT_LINTERS = ("C4", "C90", "T10", "T20")
_GROUPS = {"C": ("C4", "C90"), "T": ("T10", "T20")}
_REDIRECTS = {"TCH": "TC", "C9": "C90", "T1": "T10", "T2": "T20"}


@dataclass(frozen=True)
class RuffDiagnostic:
    """One ruff finding, with a repository-relative path."""

    path: str
    line: int
    code: str
    message: str
    noqa_line: int


@dataclass
class RuffRun:
    """What the single ruff run found, and which rules the project itself selects."""

    diagnostics: list[RuffDiagnostic] = field(default_factory=list)
    error: str | None = None
    """Why ruff could not run or its output could not be read; ``None`` on success."""
    selection: RuleSelection | None = None
    config_source: str = "ruff defaults"
    project_excluded: set[str] = field(default_factory=set)
    """Files the project's own ``exclude``/``extend-exclude`` leaves out (not ruff's defaults):
    constraint 9 follows the project there; the harness rules still cover them."""

    def for_rules(self, codes: tuple[str, ...], files: set[str]) -> list[RuffDiagnostic]:
        """Diagnostics of the given rules in the given files."""
        return [d for d in self.diagnostics if d.code in codes and d.path in files]


@dataclass(frozen=True)
class RuleSelection:
    """A ruff ``select``/``extend-select``/``ignore`` set, resolved per rule code like ruff does.

    The most specific matching selector wins; on a tie, ignore wins.
    """

    select: tuple[str, ...]
    ignore: tuple[str, ...]
    codes: frozenset[str] | None = None
    """The exact rule codes ruff reports as enabled (``--show-settings``); wins when known."""

    @classmethod
    def from_lint_table(cls, table: dict[str, Any]) -> RuleSelection:
        """From a ``[lint]`` (or legacy top-level) table of a ruff config."""
        select = tuple(table.get("select", RUFF_DEFAULT_SELECT))
        extend = tuple(table.get("extend-select", ()))
        ignore = tuple(table.get("ignore", ())) + tuple(table.get("extend-ignore", ()))
        return cls(
            tuple(_redirect(s) for s in select + extend), tuple(_redirect(s) for s in ignore)
        )

    def enables(self, code: str) -> bool:
        """Whether the project's config turns ``code`` on."""
        if self.codes is not None:
            return code in self.codes
        best: tuple[int, bool] | None = None
        for selector, on in [(s, True) for s in self.select] + [(s, False) for s in self.ignore]:
            if _matches(selector, code):
                # Ignore sorts after select at the same specificity, so max() picks it.
                candidate = (_specificity(selector), not on)
                if best is None or candidate > best:
                    best = candidate
        return best is not None and not best[1]


def _redirect(selector: str) -> str:
    for old, new in _REDIRECTS.items():
        # "C9" -> "C90" must leave "C901" alone; "TCH" -> "TC" always applies.
        if selector.startswith(old) and not (new.startswith(old) and selector.startswith(new)):
            return new + selector[len(old) :]
    return selector


def _linter(code: str) -> str:
    if code.startswith("PL"):
        return "PL"
    for prefix in _DIGIT_LINTERS:
        if code.startswith(prefix):
            return prefix
    match = _CODE.match(code)
    return match.group("alpha") if match else code


def _matches(selector: str, code: str) -> bool:
    if selector == "ALL":
        return True
    if selector in _GROUPS:
        return _linter(code) in _GROUPS[selector]
    return _linter(selector) == _linter(code) and code.startswith(selector)


def _specificity(selector: str) -> int:
    if selector == "ALL":
        return 0
    if selector in _GROUPS:
        return 1
    return 2 + len(selector) - len(_linter(selector))


def noqa_codes(line: str) -> set[str] | None:
    """Codes a ``# noqa: A1, B2`` comment names; an empty set for a blanket ``# noqa``; else ``None``."""
    match = _NOQA.search(line)
    if match is None:
        return None
    codes = match.group("codes")
    return {c.upper() for c in re.split(r"[\s,]+", codes) if c} if codes else set()


def project_ruff_config(base_config_dir: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """The base ruff config file to pass with ``--config`` and its (root-level) settings table."""
    if base_config_dir is None:
        return None, {}
    for name in (".ruff.toml", "ruff.toml", "pyproject.toml"):
        path = base_config_dir / name
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            logger.warning("base %s does not parse; using the harness default ruff rules", name)
            continue
        if name == "pyproject.toml":
            table = data.get("tool", {}).get("ruff")
            if table is None:
                continue
            return path, table
        return path, data
    return None, {}


def run_ruff(
    space: Workspace, files: list[str], base_config_dir: Path | None, scratch_dir: Path
) -> RuffRun:
    """Run ruff once over ``files`` (repository-relative) and parse its JSON output."""
    config_path, table = project_ruff_config(base_config_dir)
    if config_path is None:
        # An empty config: ruff's own defaults, and no config the model wrote is picked up.
        config_path = scratch_dir / "harness-ruff.toml"
        config_path.write_text(
            "# ruff defaults: the base repository has no ruff config\n", encoding="utf-8"
        )
        selection = RuleSelection(RUFF_DEFAULT_SELECT, ())
        source = "ruff's own defaults (the base repository has no ruff config)"
    else:
        lint = {**{k: v for k, v in table.items() if k != "lint"}, **table.get("lint", {})}
        selection = RuleSelection.from_lint_table(lint)
        where = " [tool.ruff]" if config_path.name == "pyproject.toml" else ""
        source = f"base {config_path.name}{where}"
    if files:
        codes = enabled_rules(space, config_path, files[0], scratch_dir)
        if codes is not None:
            selection = RuleSelection(selection.select, selection.ignore, codes)
    run = RuffRun(selection=selection, config_source=source)
    if not files:
        return run
    if "exclude" in table or "extend-exclude" in table:
        run.project_excluded = project_excluded(space, config_path, files, scratch_dir)
    argv = [
        *RUFF_CHECK,
        "--no-fix",
        "--exit-zero",
        "--ignore-noqa",
        "--output-format",
        "json",
        "--config",
        str(config_path),
        # A project may relax this; constraint 3 wants every signature annotated anyway.
        "--config",
        "lint.flake8-annotations.ignore-fully-untyped = false",
        "--extend-select",
        ",".join(ALL_HARNESS_RULES),
        "--",
        *files,
    ]
    done = _run_ruff_command(argv, space, scratch_dir, "ruff")
    if done.returncode != 0:
        run.error = "ruff timed out" if done.timed_out else f"ruff failed: {done.last_line()}"
        return run
    try:
        raw = json.loads(_full_stdout(scratch_dir, "ruff") or "[]")
    except json.JSONDecodeError:
        run.error = "ruff output was not JSON"
        return run
    run.diagnostics = [_diagnostic(item, space.workdir) for item in raw]
    return run


def _run_ruff_command(
    argv: list[str], space: Workspace, scratch_dir: Path, label: str
) -> Completed:
    """One bounded ruff process in the work tree, its output kept under ``label``."""
    return run_bounded(
        argv,
        cwd=space.workdir,
        env=harness_env(),
        timeout=RUFF_TIMEOUT_SECONDS,
        output_dir=scratch_dir,
        label=label,
    )


def project_excluded(
    space: Workspace, config_path: Path, files: list[str], scratch_dir: Path
) -> set[str]:
    """Files the project's own ruff excludes leave out (``--show-files --force-exclude``), minus
    those ruff's default exclusions alone would drop (an owned ``build/`` is still code)."""
    argv = [
        *RUFF_CHECK,
        "--show-files",
        "--force-exclude",
        "--config",
        str(config_path),
        "--",
        *files,
    ]
    done = _run_ruff_command(argv, space, scratch_dir, "ruff-files")
    if done.returncode != 0:
        logger.warning("ruff --show-files failed: %s", done.last_line())
        return set()
    shown = set()
    for line in _full_stdout(scratch_dir, "ruff-files").splitlines():
        path = Path(line.strip())
        if line.strip():
            try:
                shown.add(path.resolve().relative_to(space.workdir).as_posix())
            except ValueError:
                continue
    return {
        f for f in files if f not in shown and not set(Path(f).parts[:-1]) & RUFF_DEFAULT_EXCLUDED
    }


def enabled_rules(
    space: Workspace, config_path: Path, sample: str, scratch_dir: Path
) -> frozenset[str] | None:
    """The rule codes ruff itself enables under ``config_path`` (its defaults change by version)."""
    argv = [
        *RUFF_CHECK,
        "--show-settings",
        "--config",
        str(config_path),
        "--",
        sample,
    ]
    done = _run_ruff_command(argv, space, scratch_dir, "ruff-settings")
    if done.returncode != 0:
        logger.warning("ruff --show-settings failed: %s", done.last_line())
        return None
    codes: set[str] = set()
    inside = False
    for line in _full_stdout(scratch_dir, "ruff-settings").splitlines():
        if line.startswith("linter.rules.enabled"):
            inside = True
        elif inside and line.startswith("]"):
            break
        elif inside:
            match = _ENABLED_CODE.search(line)
            if match:
                codes.add(match.group(1))
    return frozenset(codes) if codes else None


def _full_stdout(scratch_dir: Path, label: str) -> str:
    """The whole stdout :func:`run_bounded` saved (its ``Completed.stdout`` is only the tail)."""
    path = scratch_dir / f"{label}.stdout"
    try:
        if path.stat().st_size > MAX_RUFF_OUTPUT:
            return ""
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _diagnostic(item: dict[str, Any], workdir: Path) -> RuffDiagnostic:
    path = Path(item.get("filename", ""))
    try:
        rel = path.resolve().relative_to(workdir).as_posix()
    except ValueError:
        rel = path.as_posix()
    line = int((item.get("location") or {}).get("row", 1))
    return RuffDiagnostic(
        path=rel,
        line=line,
        code=item.get("code") or SYNTAX_RULE,
        message=str(item.get("message", "")).splitlines()[0] if item.get("message") else "",
        noqa_line=int(item.get("noqa_row") or line),
    )
