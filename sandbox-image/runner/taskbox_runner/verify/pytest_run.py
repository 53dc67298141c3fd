"""The one pytest run per verification, under the harness's own settings, and its reports.

A model-written pytest.ini, ``addopts``, ``PYTEST_ADDOPTS``, .coveragerc or
plugin entry point cannot switch tests or coverage off: pytest reads only the
harness ini (``-c``; a few keys copied from the *base* project config), plugin
autoloading is off and the allowed plugins are named with ``-p``, coverage
reads only the harness rcfile, and ``python -P`` keeps the repository off
``sys.path`` until pytest itself adds it, with pytest and coverage imported
before that (so a ``pytest.py`` or ``coverage.py`` there cannot stand in). Code the tests import (conftest.py included) still runs inside
the session: the checks compare what ran with what the files define.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from taskbox_runner.verify.process import Completed, harness_env, run_bounded
from taskbox_runner.verify.pytest_boot import PYTEST_PREFIX, TESTS_LABEL

if TYPE_CHECKING:
    from taskbox_runner.verify.process import Launch
    from taskbox_runner.verify.workspace import Workspace

logger = logging.getLogger(__name__)

#: pytest plugins the harness loads when installed, by entry-point name.
ALLOWED_PLUGINS = ("pytest_cov", "anyio", "asyncio", "django", "pytest_mock", "mock")

#: Keys of the project's *base* pytest config that tests may need; everything else
#: (addopts above all) is dropped.
CARRIED_KEYS = (
    "python_files",
    "python_classes",
    "python_functions",
    "markers",
    "filterwarnings",
    "xfail_strict",
    "usefixtures",
    "norecursedirs",
    "asyncio_mode",
    "asyncio_default_fixture_loop_scope",
    "DJANGO_SETTINGS_MODULE",
)


@dataclass(frozen=True)
class JunitCase:
    """One ``<testcase>`` of the junit file."""

    classname: str
    name: str
    outcome: str
    """``passed``, ``failed``, ``error`` or ``skipped``."""
    message: str = ""
    skip_location: str | None = None
    """``path:line`` where a skip or xfail was raised (pytest writes it into the element text)."""


@dataclass
class JunitReport:
    """The counts pytest wrote, and every test case."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    cases: list[JunitCase] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Failures plus errors, as the result contract counts them."""
        return self.failures + self.errors

    @property
    def passed(self) -> int:
        """Tests that neither failed, errored nor were skipped."""
        return max(0, self.tests - self.failed - self.skipped)


@dataclass
class CoverageReport:
    """Coverage's JSON totals and the lines each measured file left unrun."""

    percent_covered: float
    num_statements: int
    missing: dict[str, list[int]] = field(default_factory=dict)
    percent_by_file: dict[str, float] = field(default_factory=dict)


@dataclass
class PytestRun:
    """What the single pytest run produced."""

    completed: Completed | None = None
    junit: JunitReport | None = None
    coverage: CoverageReport | None = None
    plugins: list[str] = field(default_factory=list)
    problem: str | None = None
    """Why there is no usable result (timeout, crash, unreadable junit)."""


def installed_plugins() -> dict[str, str]:
    """Allowed pytest plugins present in this interpreter: entry-point name -> module."""
    found: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group="pytest11"):
        if entry.name in ALLOWED_PLUGINS and importlib.util.find_spec(entry.value.split(":")[0]):
            found[entry.name] = entry.value.split(":")[0]
    return found


def base_pytest_settings(base_config_dir: Path | None) -> dict[str, Any]:
    """The project's base pytest settings (pytest.ini, then pyproject.toml, then setup.cfg)."""
    if base_config_dir is None:
        return {}
    ini = base_config_dir / "pytest.ini"
    if ini.is_file():
        return _ini_section(ini, "pytest")
    pyproject = base_config_dir / "pyproject.toml"
    if pyproject.is_file():
        try:
            tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            tool = {}
        table = tool.get("pytest", {})
        settings = table.get("ini_options", table)
        if settings:
            return {k: v for k, v in settings.items() if not isinstance(v, dict)}
    setup_cfg = base_config_dir / "setup.cfg"
    if setup_cfg.is_file():
        return _ini_section(setup_cfg, "tool:pytest")
    return {}


#: pytest's default ``python_files``.
DEFAULT_PYTHON_FILES = ("test_*.py", "*_test.py")


def python_file_patterns(base_config_dir: Path | None) -> tuple[str, ...]:
    """The base config's ``python_files`` globs (pytest's defaults when it sets none)."""
    value = base_pytest_settings(base_config_dir).get("python_files")
    patterns = tuple(_as_list(value)) if value else ()
    return patterns or DEFAULT_PYTHON_FILES


def _ini_section(path: Path, section: str) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return {}
    return dict(parser[section]) if parser.has_section(section) else {}


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "\n" + "\n".join(f"    {item}" for item in value)
    return str(value).replace("\n", "\n    ")


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split()


def write_harness_ini(
    path: Path,
    base: dict[str, Any],
    workdir: Path,
    plugins: dict[str, str],
    extra: dict[str, str],
) -> None:
    """The only pytest config the run reads."""
    settings: dict[str, Any] = {k: base[k] for k in CARRIED_KEYS if k in base}
    pythonpath = [str(workdir)] + [
        str((workdir / p).resolve()) for p in _as_list(base.get("pythonpath", []))
    ]
    settings["pythonpath"] = [p for p in pythonpath if Path(p).is_relative_to(workdir)]
    settings["junit_family"] = "xunit2"
    settings["junit_logging"] = "no"
    settings["console_output_style"] = "classic"
    if "asyncio" in plugins:
        settings.setdefault("asyncio_default_fixture_loop_scope", "function")
    else:
        settings.pop("asyncio_mode", None)
        settings.pop("asyncio_default_fixture_loop_scope", None)
    if "django" not in plugins:
        settings.pop("DJANGO_SETTINGS_MODULE", None)
    settings.update(extra)
    lines = ["[pytest]"] + [f"{key} = {_ini_value(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


#: Coverage's own default ``exclude_lines`` honours ``# pragma: no cover`` (and ``partial_branches``
#: ``# pragma: no branch``); the harness sets both to its own list, so a pragma the model writes
#: excludes nothing. Empty: the harness excludes no line (numbers equal a plain run without pragmas).
HARNESS_EXCLUDE_LINES: tuple[str, ...] = ()


#: Python from which coverage measures with ``sys.monitoring`` (PEP 669) instead of its C
#: ``settrace`` tracer. On 3.12 ``settrace`` itself got slower: the example's test run took 1.5x
#: the CPU of the same run on 3.11 (B4, 2026-12-06), and ``sysmon`` brings it back. Line coverage
#: only (``branch = false``), where both cores report the same lines; earlier Pythons have no
#: ``sys.monitoring``, and asking for it there would only add a warning, so nothing is set.
SYSMON_FROM = (3, 12)


def coverage_core(version: tuple[int, ...] | None = None) -> str | None:
    """The ``[run] core`` the harness asks coverage for under ``version`` (``None``: this Python),
    or ``None`` for coverage's default."""
    major_minor = version[:2] if version is not None else sys.version_info[:2]
    return "sysmon" if major_minor >= SYSMON_FROM else None


def write_harness_rcfile(path: Path, data_file: Path, include: list[str]) -> None:
    """Coverage settings: report exactly the listed files (unrun ones count as 0%), no pragma honoured.

    Which files are tests is the workspace's decision (by location), so there is no name-based omit.
    The core is the harness's too (``COVERAGE_CORE`` is dropped from the environment).
    """
    include_lines = "\n".join(f"    {p}" for p in include)
    exclude_lines = "".join(f"\n    {p}" for p in HARNESS_EXCLUDE_LINES)
    core = coverage_core()
    core_line = f"core = {core}\n" if core else ""
    path.write_text(
        "[run]\n"
        f"data_file = {data_file}\n"
        "branch = false\n"
        "parallel = false\n"
        f"{core_line}"
        "[report]\n"
        f"include =\n{include_lines}\n"
        f"exclude_lines ={exclude_lines}\n"
        "exclude_also =\n"
        "partial_branches =\n"
        "ignore_errors = true\n",
        encoding="utf-8",
    )


def coverage_scope(space: Workspace) -> tuple[list[str], list[str]]:
    """``(--cov source folders, report include paths)``: the owned, non-test files, one by one."""
    include = [str((space.workdir / rel).resolve()) for rel in space.owned_source]
    if not include:
        return [], []
    sources: set[str] = set()
    for owned in space.owns_paths:
        target = space.workdir / owned
        if owned == "" or owned.endswith("/"):
            if target.is_dir():
                sources.add(str(target.resolve()))
        elif owned.endswith(".py") and target.is_file():
            sources.add(str(target.resolve().parent))
    return sorted(sources), include


def collection_targets(base: dict[str, Any], workdir: Path) -> list[str]:
    """The base config's ``testpaths`` that exist, else the whole repository."""
    targets = [workdir / p for p in _as_list(base.get("testpaths", []))]
    existing = [str(t) for t in targets if t.exists() and t.resolve().is_relative_to(workdir)]
    return existing or [str(workdir)]


def _pytest_argv(ini: Path, workdir: Path, plugins: dict[str, str], junit_path: Path) -> list[str]:
    """The harness's pytest command line up to the run-specific options and targets."""
    argv = [
        *PYTEST_PREFIX,
        "-c",
        str(ini),
        "--rootdir",
        str(workdir),
        "--confcutdir",
        str(workdir),
        "-p",
        "no:cacheprovider",
        "-p",
        "no:stepwise",
    ]
    for module in sorted(plugins.values()):
        argv += ["-p", module]
    return [*argv, "-o", "addopts=", "--junitxml", str(junit_path), "-q", "--color=no"]


def _plugins_for(base: dict[str, Any], django_settings: str | None) -> dict[str, str]:
    plugins = installed_plugins()
    if not (django_settings or base.get("DJANGO_SETTINGS_MODULE")):
        # pytest-django only for Django projects: it imports Django and reads its settings.
        plugins.pop("django", None)
    return plugins


def run_pytest(
    space: Workspace,
    *,
    base_config_dir: Path | None,
    scratch_dir: Path,
    timeout: float,
    django_settings: str | None = None,
    launch: Launch = run_bounded,
) -> PytestRun:
    """Run the repository's tests once with coverage; read junit and coverage JSON back.

    ``launch`` starts the process (a :class:`~taskbox_runner.verify.pytest_boot.WarmPytest`'s
    ``run`` hands it to an interpreter started ahead).
    """
    workdir = space.workdir
    base = base_pytest_settings(base_config_dir)
    plugins = _plugins_for(base, django_settings)
    run = PytestRun(plugins=sorted(plugins))
    if "pytest_cov" not in plugins:
        run.problem = "pytest-cov is not installed in this environment"
        return run
    junit_path = scratch_dir / "junit.xml"
    cov_json = scratch_dir / "coverage.json"
    data_file = scratch_dir / ".coverage"
    for stale in (junit_path, cov_json, data_file):
        stale.unlink(missing_ok=True)
    extra = {"DJANGO_SETTINGS_MODULE": django_settings} if django_settings else {}
    ini = scratch_dir / "harness-pytest.ini"
    write_harness_ini(ini, base, workdir, plugins, extra)
    rcfile = scratch_dir / "harness-coveragerc"
    sources, include = coverage_scope(space)
    write_harness_rcfile(rcfile, data_file, include)
    argv = _pytest_argv(ini, workdir, plugins, junit_path)
    if sources:
        argv += [f"--cov={s}" for s in sources]
        argv += [f"--cov-config={rcfile}", f"--cov-report=json:{cov_json}"]
    argv += collection_targets(base, workdir)
    env = harness_env(
        {
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "COVERAGE_FILE": str(data_file),
            "COVERAGE_RCFILE": str(rcfile),
        }
    )
    done = launch(
        argv, cwd=workdir, env=env, timeout=timeout, output_dir=scratch_dir, label=TESTS_LABEL
    )
    run.completed = done
    if done.timed_out:
        run.problem = f"pytest did not finish within {timeout:.0f} s and was killed"
        return run
    run.junit = read_junit(junit_path)
    if run.junit is None:
        run.problem = f"pytest wrote no junit report (exit {done.returncode}): {done.last_line()}"
    if sources:
        run.coverage = read_coverage(cov_json, workdir)
    return run


def run_test_files(
    workdir: Path,
    test_files: list[str],
    *,
    base_config_dir: Path | None,
    scratch_dir: Path,
    timeout: float,
    label: str = "pytest-files",
    django_settings: str | None = None,
    launch: Launch = run_bounded,
) -> PytestRun:
    """Run exactly ``test_files`` (repository-relative) in ``workdir``; junit cases, no coverage.

    Same precautions as :func:`run_pytest` (harness ini, plugin allowlist, ``python -P``, no
    cache provider) and nothing written into ``workdir`` (no bytecode, no coverage data), so the
    folder may be read-only. Everything the run writes goes to ``scratch_dir`` under ``label``.
    """
    root = workdir.resolve()
    base = base_pytest_settings(base_config_dir)
    plugins = _plugins_for(base, django_settings)
    plugins.pop("pytest_cov", None)
    run = PytestRun(plugins=sorted(plugins))
    junit_path = scratch_dir / f"{label}-junit.xml"
    junit_path.unlink(missing_ok=True)
    ini = scratch_dir / f"{label}-pytest.ini"
    extra = {"DJANGO_SETTINGS_MODULE": django_settings} if django_settings else {}
    write_harness_ini(ini, base, root, plugins, extra)
    targets = [str(root / rel) for rel in test_files]
    argv = [*_pytest_argv(ini, root, plugins, junit_path), "-p", "no:pytest_cov", *targets]
    env = harness_env({"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("PYTHONPYCACHEPREFIX", None)
    done = launch(argv, cwd=root, env=env, timeout=timeout, output_dir=scratch_dir, label=label)
    run.completed = done
    if done.timed_out:
        run.problem = f"pytest did not finish within {timeout:.0f} s and was killed"
        return run
    run.junit = read_junit(junit_path)
    if run.junit is None:
        run.problem = f"pytest wrote no junit report (exit {done.returncode}): {done.last_line()}"
    return run


def read_junit(path: Path) -> JunitReport | None:
    """Counts and cases from pytest's junit XML; ``None`` when missing or unreadable."""
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - pytest's own junit, in the harness scratch folder
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    report = JunitReport()
    for suite in suites:
        report.tests += int(suite.get("tests", 0))
        report.failures += int(suite.get("failures", 0))
        report.errors += int(suite.get("errors", 0))
        report.skipped += int(suite.get("skipped", 0))
        report.cases += [_case(case) for case in suite.iter("testcase")]
    return report


_SKIP_LOCATION = re.compile(r"^(?P<loc>[^\s:][^:]*:\d+): ")


def _case(element: ET.Element) -> JunitCase:
    classname = element.get("classname", "")
    name = element.get("name", "")
    for outcome, tag in (("failed", "failure"), ("error", "error"), ("skipped", "skipped")):
        child = element.find(tag)
        if child is not None:
            message = (child.get("message") or "").strip().splitlines()
            location = None
            if tag == "skipped":
                match = _SKIP_LOCATION.match((child.text or "").strip())
                location = match.group("loc") if match else None
            return JunitCase(
                classname, name, outcome, message[0][:300] if message else "", location
            )
    return JunitCase(classname, name, "passed")


def read_coverage(path: Path, workdir: Path) -> CoverageReport | None:
    """Totals and per-file missing lines from coverage's JSON report."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        totals = data["totals"]
        report = CoverageReport(
            percent_covered=float(totals["percent_covered"]),
            num_statements=int(totals["num_statements"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, info in sorted(data.get("files", {}).items()):
        rel = _relative(name, workdir)
        report.missing[rel] = sorted(int(n) for n in info.get("missing_lines", []))
        report.percent_by_file[rel] = float(info.get("summary", {}).get("percent_covered", 0.0))
    return report


def _relative(name: str, workdir: Path) -> str:
    path = Path(name)
    if not path.is_absolute():
        return PurePosixPath(name).as_posix()
    try:
        return path.resolve().relative_to(workdir).as_posix()
    except ValueError:
        return path.as_posix()
