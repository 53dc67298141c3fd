"""The one ``ruff check`` run per verification, and how its results split between checks.

ruff runs once, from the repository root, with the project's *base* ruff config
(``--config`` makes ruff use it for every file and ignore any config the model
wrote; its relative paths resolve against the working directory) plus
``--extend-select`` of the rules behind constraints 1, 2, 3 and 8, and with
``--ignore-noqa`` so a ``# noqa`` the model adds cannot hide those. Constraint 9
then counts only the rules the project itself selects, and honours a
``# noqa: CODE`` naming the rule (not a blanket ``# noqa``).
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

#: Used when the project has no ruff config: pycodestyle, pyflakes, isort, pyupgrade, bugbear.
DEFAULT_SELECT = ("E", "F", "W", "I", "UP", "B")
#: ruff's own default when a config sets no ``select``.
RUFF_DEFAULT_SELECT = ("E4", "E7", "E9", "F")
RUFF_TIMEOUT_SECONDS = 120.0
SYNTAX_RULE = "SYNTAX"

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
    config_source: str = "harness default"

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
        config_path = scratch_dir / "harness-ruff.toml"
        select = ", ".join(f'"{s}"' for s in DEFAULT_SELECT)
        config_path.write_text(f"[lint]\nselect = [{select}]\n", encoding="utf-8")
        selection = RuleSelection(DEFAULT_SELECT, ())
        source = f"harness default ({', '.join(DEFAULT_SELECT)})"
    else:
        lint = {**{k: v for k, v in table.items() if k != "lint"}, **table.get("lint", {})}
        selection = RuleSelection.from_lint_table(lint)
        source = f"base {config_path.name}"
    run = RuffRun(selection=selection, config_source=source)
    if not files:
        return run
    argv = [
        sys.executable,
        "-m",
        "ruff",
        "check",
        "--no-cache",
        "--no-fix",
        "--exit-zero",
        "--ignore-noqa",
        "--force-exclude",
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
    done = run_bounded(
        argv,
        cwd=space.workdir,
        env=harness_env(),
        timeout=RUFF_TIMEOUT_SECONDS,
        output_dir=scratch_dir,
        label="ruff",
    )
    if done.returncode != 0:
        run.error = "ruff timed out" if done.timed_out else f"ruff failed: {done.last_line()}"
        return run
    try:
        raw = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        run.error = "ruff output was not JSON"
        return run
    run.diagnostics = [_diagnostic(item, space.workdir) for item in raw]
    return run


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
