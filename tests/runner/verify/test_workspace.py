"""The walk and the test/production split: every owned file is seen, tests are told by location."""

from __future__ import annotations

import ast

from taskbox_runner.verify.models import Finding
from taskbox_runner.verify.ruff_checks import check_no_print, check_type_hints
from taskbox_runner.verify.statements import one_per_statement, statement_starts
from taskbox_runner.verify.workspace import Workspace, base_test_roots, is_test_path

from tests.runner.verify.conftest import Stage

PRINTS = 'def shout() -> None:\n    """Shout."""\n    print("hidden")\n'


def test_owned_folders_named_like_build_output_are_checked(stage: Stage) -> None:
    """Code in owned build/, dist/, env/ and venv/ folders is walked and fails constraint 8."""
    staged = stage()
    for folder in ("build", "dist", "env", "venv"):
        staged.write(f"app/{folder}/loud.py", PRINTS)
    space, ruff = staged.ruff()
    assert {"app/build/loud.py", "app/dist/loud.py", "app/env/loud.py", "app/venv/loud.py"} <= set(
        space.owned_source
    )
    outcome = check_no_print(space, ruff)
    assert sorted(f.path for f in outcome.findings) == [
        "app/build/loud.py",
        "app/dist/loud.py",
        "app/env/loud.py",
        "app/venv/loud.py",
    ]


def test_an_owned_top_level_build_folder_is_walked(stage: Stage) -> None:
    """Owning build/ itself (not only a folder inside it) walks it too."""
    staged = stage()
    staged.write("build/gen/loud.py", PRINTS)
    space, ruff = staged.ruff(owns=("app/", "build/"))
    assert "build/gen/loud.py" in space.owned_source
    assert [f.path for f in check_no_print(space, ruff).findings] == ["build/gen/loud.py"]


def test_build_folders_outside_owned_paths_are_still_skipped(stage: Stage) -> None:
    """Tool output outside the owned paths stays out of the walk (not the task's code)."""
    staged = stage()
    (staged.workdir / "build" / "lib").mkdir(parents=True)
    (staged.workdir / "build" / "lib" / "copy.py").write_text(PRINTS)
    space = staged.space()
    assert "build/lib/copy.py" not in space.all_python


def test_a_real_virtualenv_inside_an_owned_folder_is_skipped_unless_written(stage: Stage) -> None:
    """An untouched virtualenv (pyvenv.cfg) in an owned folder is tooling; one the model wrote into is code."""
    staged = stage()
    venv = staged.workdir / "app" / ".venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "vendored.py").write_text(PRINTS)
    assert "app/.venv/lib/vendored.py" not in staged.space().owned_files
    staged.write("app/.venv/lib/hidden.py", PRINTS)
    space = staged.space()
    assert {"app/.venv/lib/hidden.py", "app/.venv/lib/vendored.py"} <= set(space.owned_source)


def test_a_production_module_named_like_a_test_is_production(stage: Stage) -> None:
    """app/helpers_test.py imported by the app is production code: constraint 3 covers it."""
    staged = stage()
    staged.write("app/helpers_test.py", "def double(x):\n    return 2 * x\n")
    staged.write(
        "app/uses.py",
        'from app.helpers_test import double\n\n\ndef four() -> int:\n    """Four."""\n'
        "    return double(2)\n",
    )
    space, ruff = staged.ruff()
    assert "app/helpers_test.py" in space.owned_source
    findings = check_type_hints(space, ruff).findings
    assert {f.path for f in findings} == {"app/helpers_test.py"}


def test_a_test_module_beside_the_code_stays_a_test(stage: Stage) -> None:
    """app/test_more.py that defines tests and that nothing imports is a test (FastAPI docs layout)."""
    staged = stage()
    staged.write("app/test_more.py", "def test_more():\n    assert 2 * 2 == 4\n")
    space = staged.space()
    assert space.is_test("app/test_more.py")
    assert "app/test_more.py" not in space.owned_source


def test_base_testpaths_are_test_roots(stage: Stage) -> None:
    """A folder named in the base pytest config's testpaths holds tests, whatever its name."""
    staged = stage()
    pyproject = staged.base_config_dir / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('testpaths = ["tests"]', 'testpaths = ["checks"]')
    )
    staged.write("checks/probe.py", "def helper(x):\n    return x\n")
    assert base_test_roots(staged.base_config_dir) == ("checks",)
    with_config = Workspace.load(
        staged.workdir, ["app/", "checks/"], staged.changed, staged.base_config_dir
    )
    assert with_config.is_test("checks/probe.py")
    without = Workspace.load(staged.workdir, ["app/", "checks/"], staged.changed)
    assert not without.is_test("checks/probe.py")


def test_is_test_path_is_by_location() -> None:
    """Folder names and roots decide; file names do not (conftest.py is pytest's own file)."""
    assert is_test_path("tests/test_a.py")
    assert is_test_path("app/tests/helpers.py")
    assert is_test_path("app/conftest.py")
    assert not is_test_path("app/test_a.py")
    assert not is_test_path("app/a_test.py")
    assert is_test_path("qa/a.py", ("qa",))
    assert not is_test_path("qa2/a.py", ("qa",))


def test_one_finding_per_statement(stage: Stage) -> None:
    """Findings on two lines of one statement merge into one carrying both messages."""
    source = "x = call(\n    f'{a}',\n)\ny = 1\n"
    starts = statement_starts(ast.parse(source))
    assert starts[1] == starts[2] == starts[3] == 1
    assert starts[4] == 4
    staged = stage()
    staged.write("app/m.py", source)
    space = staged.space()
    merged = one_per_statement(
        space,
        [
            Finding("app/m.py", 2, "S608", "ruff says"),
            Finding("app/m.py", 1, "TB0101", "flow says"),
            Finding("app/m.py", 4, "TB0101", "other"),
        ],
    )
    assert [f.render() for f in merged] == [
        "app/m.py:1: TB0101 flow says; also S608 ruff says",
        "app/m.py:4: TB0101 other",
    ]
