"""Constraint 1: SQL built from run-time strings is caught by ruff S608 and the AST pass."""

from __future__ import annotations

import ast

import pytest
from taskbox_runner.verify.sql_injection import check_sql_injection, find_sql_building

from tests.runner.verify.conftest import Stage


def _found(source: str) -> list[str]:
    return [f.message for f in find_sql_building("m.py", ast.parse(source))]


def test_good_project_passes(stage: Stage) -> None:
    """The known-good project has no SQL built from strings."""
    space, ruff = stage().ruff()
    outcome = check_sql_injection(space, ruff)
    assert outcome.passed, outcome.findings
    assert outcome.findings == []


def test_bad_project_is_caught_with_locations(stage: Stage) -> None:
    """f-string, concatenation and % SQL are each reported at their line, with the rule."""
    space, ruff = stage(overlay="bad_01_sql").ruff()
    outcome = check_sql_injection(space, ruff)
    assert not outcome.passed
    rendered = [f.render() for f in sorted(outcome.findings)]
    assert rendered == [
        "app/reports.py:11: S608 Possible SQL injection vector through string-based query construction",
        "app/reports.py:16: S608 Possible SQL injection vector through string-based query construction",
        (
            "app/reports.py:17: TB0101 SQL built with string concatenation reaches execute(); "
            "pass values as bound parameters or use the ORM"
        ),
        "app/reports.py:22: S608 Possible SQL injection vector through string-based query construction",
    ]


def test_ast_pass_alone_catches_what_ruff_misses(stage: Stage) -> None:
    """Without ruff's S608 the AST pass still reports each sink (ruff's per-file ignores cannot hide it)."""
    staged = stage(overlay="bad_01_sql")
    space = staged.space()
    lines = sorted(
        f.line
        for rel, tree in space.trees(space.owned_source)
        for f in find_sql_building(rel, tree)
    )
    assert lines == [11, 17, 22]


@pytest.mark.parametrize(
    ("source", "how"),
    [
        ("cur.execute(f'SELECT * FROM t WHERE a = {x}')", "an f-string"),
        ("cur.execute('SELECT * FROM t WHERE a = ' + x)", "string concatenation"),
        ("cur.execute('SELECT * FROM t WHERE a = %s' % x)", "% formatting"),
        ("cur.execute('SELECT * FROM t WHERE a = {}'.format(x))", ".format()"),
        (
            "def f(x):\n    q = 'SELECT 1'\n    q += x\n    return db.execute(q)",
            "string concatenation",
        ),
        ("User.objects.raw(f'SELECT * FROM u WHERE n = {n}')", "an f-string"),
        ("qs.extra(where=[f'name = {n}'])", "an f-string"),
        ("RawSQL('a = ' + b, [])", "string concatenation"),
    ],
)
def test_dynamic_sql_shapes(source: str, how: str) -> None:
    """Each way of building SQL from values is named in the finding."""
    messages = _found(source)
    assert len(messages) == 1
    assert messages[0].startswith(f"SQL built with {how} ")


@pytest.mark.parametrize(
    "source",
    [
        "cur.execute('SELECT * FROM t WHERE a = ?', (x,))",
        "cur.execute(f'SELECT 1')",
        "session.execute(text('SELECT * FROM t WHERE a = :a'), {'a': x})",
        "cur.execute('SELECT ' + 'a FROM t')",
        "logger.info('count: ' + str(n))",
    ],
)
def test_parameterised_sql_is_not_flagged(source: str) -> None:
    """Constant SQL with bound parameters, and strings that never reach a sink, pass."""
    assert _found(source) == []
