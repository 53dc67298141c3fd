"""Constraints 3, 8 and 9 from the single ruff run."""

from __future__ import annotations

from taskbox_runner.verify.ruff_checks import (
    check_no_print,
    check_ruff_clean,
    check_type_hints,
    noqa_warnings,
)

from tests.runner.verify.conftest import Stage


def test_good_project_passes_all_three(stage: Stage) -> None:
    """The known-good project is annotated, print-free and clean under its own ruff config."""
    space, ruff = stage().ruff()
    assert ruff.error is None
    for check in (check_type_hints, check_no_print, check_ruff_clean):
        outcome = check(space, ruff)
        assert outcome.passed, outcome.findings


def test_missing_annotations_are_reported(stage: Stage) -> None:
    """Unannotated parameters and returns are reported with their ANN rule."""
    space, ruff = stage(overlay="bad_03_hints").ruff()
    outcome = check_type_hints(space, ruff)
    assert not outcome.passed
    rendered = {f.render() for f in outcome.findings}
    # One finding per statement: the def line carries every problem of its signature.
    assert (
        "app/pagination.py:4: ANN001 Missing type annotation for function argument `page`; "
        "also Missing type annotation for function argument `size`; "
        "also ANN201 Missing return type annotation for public function `page_bounds`"
    ) in rendered
    assert any(r.startswith("app/pagination.py:13: ANN001 ") and "ANN204" in r for r in rendered)
    assert any(r.startswith("app/pagination.py:16: ANN201 ") for r in rendered)
    assert outcome.verdict == "3 missing or Any annotation(s)"


def test_tests_need_no_annotations(stage: Stage) -> None:
    """Test functions are outside constraint 3 (the project's own rules still cover them in 9)."""
    staged = stage()
    staged.write("tests/test_more.py", "def test_x(client):\n    assert client\n")
    space, ruff = staged.ruff()
    assert check_type_hints(space, ruff).passed


def test_print_is_reported(stage: Stage) -> None:
    """print and pprint in owned code are reported with T201/T203."""
    space, ruff = stage(overlay="bad_08_print").ruff()
    outcome = check_no_print(space, ruff)
    assert not outcome.passed
    assert [f.render() for f in sorted(outcome.findings)] == [
        "app/audit.py:8: T201 `print` found",
        "app/audit.py:13: T203 `pprint` found",
    ]


def test_noqa_does_not_hide_harness_rules(stage: Stage) -> None:
    """A '# noqa: T201' the model adds still fails constraint 8 and raises a warning."""
    staged = stage()
    staged.write(
        "app/debug.py", 'def show() -> None:\n    """Show."""\n    print("x")  # noqa: T201\n'
    )
    space, ruff = staged.ruff()
    assert not check_no_print(space, ruff).passed
    assert noqa_warnings(space, ruff) == [
        "1 '# noqa' comment(s) in owned files (app/debug.py) were not honoured; constraint 9 lists them"
    ]


def test_ruff_findings_under_the_project_rules(stage: Stage) -> None:
    """Unused import, == None and unsorted imports fail 9; a '# noqa: F841' in owned code hides nothing."""
    space, ruff = stage(overlay="bad_09_ruff").ruff()
    outcome = check_ruff_clean(space, ruff)
    assert not outcome.passed
    rendered = [f.render() for f in sorted(outcome.findings)]
    assert rendered == [
        "app/formatting.py:3: F401 `os` imported but unused; also I001 Import block is un-sorted or un-formatted",
        "app/formatting.py:9: E711 Comparison to `None` should be `cond is None`",
        (
            "app/formatting.py:16: F841 Local variable `unused` is assigned to but never used "
            "(a '# noqa' on line 16 does not hide it)"
        ),
    ]
    assert outcome.verdict == (
        "3 ruff finding(s) under base pyproject.toml [tool.ruff]; "
        "1 '# noqa' comment(s) in owned files not honoured (listed)"
    )
    assert outcome.notes == [
        "app/formatting.py:16: '# noqa: F841' not honoured: owned code gets no noqa"
    ]


def test_harness_rules_count_for_9_only_when_the_project_selects_them(stage: Stage) -> None:
    """A print fails 9 when the project selects T20, and not when it does not."""
    staged = stage(overlay="bad_08_print")
    space, ruff = staged.ruff()
    assert {f.rule for f in check_ruff_clean(space, ruff).findings} == {"T201", "T203"}
    pyproject = staged.base_config_dir / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"ANN", "T20", "S"', '"ANN", "S"'))
    space, ruff = staged.ruff()
    assert check_ruff_clean(space, ruff).passed
    assert not check_no_print(space, ruff).passed


def test_default_rules_without_a_project_config(stage: Stage) -> None:
    """With no ruff config at the base, ruff's own defaults apply and the verdict says so."""
    staged = stage(overlay="bad_09_ruff")
    (staged.base_config_dir / "pyproject.toml").unlink()
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert "ruff's own defaults (the base repository has no ruff config)" in outcome.verdict
    assert {f.rule for f in outcome.findings} >= {"F401", "F841"}


def test_a_ruff_config_the_model_writes_is_ignored(stage: Stage) -> None:
    """A ruff.toml the model writes into app/ (ignore everything) changes nothing."""
    staged = stage(overlay="bad_09_ruff")
    staged.write("app/ruff.toml", '[lint]\nignore = ["ALL"]\n')
    staged.write("ruff.toml", '[lint]\nignore = ["ALL"]\n')
    space, ruff = staged.ruff()
    assert not check_ruff_clean(space, ruff).passed


def test_syntax_error_fails_9(stage: Stage) -> None:
    """A file that does not parse is a ruff finding of its own under constraint 9."""
    staged = stage()
    staged.write("app/broken.py", "def broken(:\n    pass\n")
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert not outcome.passed
    # ruff names it "invalid-syntax" (older ruff gave no code; the harness calls that SYNTAX).
    assert {(f.path, f.rule) for f in outcome.findings} <= {
        ("app/broken.py", "invalid-syntax"),
        ("app/broken.py", "SYNTAX"),
    }


ANY_EVERYWHERE = '''"""Helpers annotated with Any everywhere (the gaming way)."""

import typing as t
from typing import Any, Optional

Json = Any


def load(raw: Any) -> Any:
    """Parse."""
    return raw


def keep(
    value: t.Any,
    default: Optional[Any] = None,
) -> Json:
    """Keep."""
    return value or default
'''

ANY_LOOK_ALIKES = '''"""Real types that contain Any, and one Any accepted with a reason."""

import json
from typing import Any


def dump(payload: dict[str, Any]) -> list[Any]:
    """Containers of Any are types."""
    return [json.dumps(payload)]


def echo(value: Any) -> str:  # taskbox: any-ok json.dumps accepts any JSON-able object
    """Accepted with a reason the evidence shows."""
    return json.dumps(value)
'''


def test_any_annotations_count_as_missing(stage: Stage) -> None:
    """Any, typing.Any, Optional[Any] and an alias of Any fail constraint 3, naming each."""
    staged = stage()
    staged.write("app/anyhelp.py", ANY_EVERYWHERE)
    space, ruff = staged.ruff()
    outcome = check_type_hints(space, ruff)
    rendered = [f.render() for f in outcome.findings if f.path == "app/anyhelp.py"]
    assert len(rendered) == 2  # one per def statement
    assert rendered[0].startswith(
        "app/anyhelp.py:9: TB0302 parameter 'raw' of load() is Any, not a type"
    )
    assert "return type of load() is Any" in rendered[0]
    for what in (
        "parameter 'value' of keep()",
        "parameter 'default' of keep()",
        "return type of keep()",
    ):
        assert f"{what} is Any" in rendered[1]


def test_any_inside_types_and_with_a_reason_passes(stage: Stage) -> None:
    """dict[str, Any] is a type; an Any with '# taskbox: any-ok <reason>' passes and shows the reason."""
    staged = stage()
    staged.write("app/anyhelp.py", ANY_LOOK_ALIKES)
    space, ruff = staged.ruff()
    outcome = check_type_hints(space, ruff)
    assert outcome.passed, outcome.findings
    assert outcome.notes == [
        "app/anyhelp.py:12: Any accepted by '# taskbox: any-ok': json.dumps accepts any JSON-able object"
    ]
    assert "1 Any accepted by '# taskbox: any-ok' (reasons listed)" in outcome.verdict
    assert outcome.to_report().evidence[-1] == outcome.notes[0]


def test_any_escape_without_a_reason_accepts_nothing(stage: Stage) -> None:
    """A bare '# taskbox: any-ok' is no escape: the finding says a reason is needed."""
    staged = stage()
    staged.write(
        "app/anyhelp.py",
        "from typing import Any\n\n\ndef echo(value: Any) -> str:  # taskbox: any-ok\n"
        '    """Echo."""\n    return str(value)\n',
    )
    space, ruff = staged.ruff()
    [finding] = check_type_hints(space, ruff).findings
    assert finding.render().startswith(
        "app/anyhelp.py:4: TB0302 parameter 'value' of echo() is Any"
    )
    assert "needs a reason" in finding.message


CONSOLE = '''"""Output that is not print() by name (the gaming way)."""

import builtins
import sys
from functools import partial
from pprint import pprint as show

out = print
err = partial(print, file=sys.stderr)


def report(rows: list[str]) -> None:
    """Every row to the console."""
    sys.stdout.write("rows\\\\n")
    sys.stderr.writelines(rows)
    out(rows)
    show(rows)
    builtins.print(len(rows))
    err("done")
    list(map(print, rows))
'''

CONSOLE_LOOK_ALIKES = '''"""Logging to stdout and writing to buffers: no console print."""

import io
import logging
import sys

logger = logging.getLogger(__name__)
handler = logging.StreamHandler(sys.stdout)


def render(rows: list[str]) -> str:
    """Rows into a buffer; a tty check; logging."""
    buffer = io.StringIO()
    buffer.write("\\\\n".join(rows))
    if sys.stdout.isatty():
        logger.info("%d rows", len(rows))
    return buffer.getvalue()


def show(rows: list[str]) -> str:
    """A function named like an alias is not one."""
    return render(rows)
'''


def test_console_writes_and_print_aliases_are_reported(stage: Stage) -> None:
    """sys.stdout/stderr writes, print/pprint aliases, builtins.print and print as a value fail 8."""
    staged = stage()
    staged.write("app/console.py", CONSOLE)
    space, ruff = staged.ruff()
    outcome = check_no_print(space, ruff)
    lines = {f.line: f.render() for f in outcome.findings if f.path == "app/console.py"}
    assert sorted(lines) == [9, 14, 15, 16, 17, 18, 19, 20]
    assert "hands print to partial() to be called" in lines[9]
    assert "TB0802 writes to sys.stdout with .write()" in lines[14]
    assert "TB0802 writes to sys.stderr with .writelines()" in lines[15]
    assert "calls out(), an alias of print/pprint" in lines[16]
    assert "calls show(), an alias of print/pprint" in lines[17] or "T203" in lines[17]
    assert "builtins.print" in lines[18]
    assert "calls err(), an alias of print/pprint" in lines[19]
    assert "hands print to map() to be called" in lines[20]


def test_logging_to_stdout_and_buffer_writes_pass(stage: Stage) -> None:
    """A StreamHandler on sys.stdout, StringIO.write, isatty and a function named show pass 8."""
    staged = stage()
    staged.write("app/console.py", CONSOLE_LOOK_ALIKES)
    space, ruff = staged.ruff()
    outcome = check_no_print(space, ruff)
    assert outcome.passed, outcome.findings


DEPENDS_APP = '''"""A FastAPI app with Depends() defaults and no ruff config in the repository."""

from fastapi import Depends, FastAPI, Query

app = FastAPI()


def get_prefix() -> str:
    """A dependency."""
    return "hello"


@app.get("/greet")
async def greet(prefix: str = Depends(get_prefix), name: str = Query("world")) -> str:
    """Greets."""
    return f"{prefix} {name}"
'''


def test_depends_defaults_pass_under_ruff_defaults(stage: Stage) -> None:
    """With no base ruff config, ruff's own defaults apply: FastAPI's Depends() is no B008."""
    staged = stage()
    (staged.base_config_dir / "pyproject.toml").unlink()
    staged.write("app/greet.py", DEPENDS_APP)
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert [f for f in outcome.findings if f.path == "app/greet.py"] == []
    assert "ruff's own defaults (the base repository has no ruff config)" in outcome.verdict


def test_noqa_on_every_finding_hides_nothing(stage: Stage) -> None:
    """'# noqa: CODE' on each finding (and a blanket one) still fails 9; each comment is listed."""
    staged = stage()
    staged.write(
        "app/quiet.py",
        '"""Quiet."""\n\nimport os  # noqa: F401\nimport sys  # noqa\n\n'
        'NOTE = "# noqa: E501 inside a string is not a comment"\n',
    )
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    mine = [f.render() for f in outcome.findings if f.path == "app/quiet.py"]
    assert mine == [
        "app/quiet.py:3: F401 `os` imported but unused (a '# noqa' on line 3 does not hide it)",
        "app/quiet.py:4: F401 `sys` imported but unused (a '# noqa' on line 4 does not hide it)",
    ]
    assert outcome.notes == [
        "app/quiet.py:3: '# noqa: F401' not honoured: owned code gets no noqa",
        "app/quiet.py:4: '# noqa' not honoured: owned code gets no noqa",
    ]


def test_project_excludes_apply_to_9_but_ruff_default_excludes_do_not(stage: Stage) -> None:
    """The project's own extend-exclude is followed by 9; an owned build/ folder is still checked."""
    staged = stage()
    pyproject = staged.base_config_dir / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            'target-version = "py311"',
            'target-version = "py311"\nextend-exclude = ["app/generated/*"]',
        )
    )
    staged.write("app/generated/schema.py", '"""Generated."""\n\nimport os\n')
    staged.write("app/build/helpers.py", '"""Built."""\n\nimport os\n')
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert [f.path for f in outcome.findings] == ["app/build/helpers.py"]
    assert "1 owned file(s) excluded by the project's own ruff config" in outcome.verdict


def test_a_bound_write_method_is_a_print_alias(stage: Stage) -> None:
    """write = sys.stdout.write; write(...) fails 8; a bound write of a StringIO passes."""
    staged = stage()
    staged.write(
        "app/emit.py",
        '"""Emit."""\n\nimport io\nimport sys\n\nwrite = sys.stdout.write\nbuffer = io.StringIO()\n'
        "keep = buffer.write\n\n\n"
        "def emit(text: str) -> None:\n"
        '    """Emit."""\n'
        "    write(text)\n"
        "    keep(text)\n",
    )
    space, ruff = staged.ruff()
    assert [f.render() for f in check_no_print(space, ruff).findings] == [
        (
            "app/emit.py:13: TB0803 calls write(), an alias of print/pprint or a console write; "
            "use logging.getLogger(__name__)"
        )
    ]


def test_a_file_level_ruff_noqa_hides_nothing(stage: Stage) -> None:
    """'# ruff: noqa' at the top of a model's file still fails 9 and is listed."""
    staged = stage()
    staged.write("app/quiet.py", '# ruff: noqa\n"""Quiet."""\n\nimport os\n')
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert [f.render() for f in outcome.findings if f.path == "app/quiet.py"] == [
        "app/quiet.py:4: F401 `os` imported but unused (the file's '# ruff: noqa' does not hide it)"
    ]
    assert outcome.notes == ["app/quiet.py:1: '# ruff: noqa' not honoured: owned code gets no noqa"]
