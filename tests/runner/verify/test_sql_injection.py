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
    s608 = "S608 Possible SQL injection vector through string-based query construction"
    fix = "pass values as bound parameters or use the ORM"
    assert rendered == [
        f"app/reports.py:11: {s608}; also TB0101 SQL built with an f-string reaches execute(); {fix}",
        f"app/reports.py:16: {s608}",
        f"app/reports.py:17: TB0101 SQL built with string concatenation reaches execute(); {fix}",
        f"app/reports.py:22: {s608}; also TB0101 SQL built with % formatting reaches text(); {fix}",
    ]
    assert outcome.verdict == "4 statement(s) build SQL from run-time strings"


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


ONE_STEP_AWAY = '''"""Item queries that build SQL one step away from the execute call."""

import sqlite3

ITEMS_BY_OWNER = "SELECT id, title FROM items WHERE owner = '{}'"


def _title_clause(title: str) -> str:
    """A WHERE fragment."""
    return f"title LIKE '%{title}%'"


def _run(conn: sqlite3.Connection, sql: str) -> list[tuple[int, str]]:
    """Run a statement."""
    return conn.execute(sql).fetchall()


def by_owner(conn: sqlite3.Connection, owner: str) -> list[tuple[int, str]]:
    """Template filled at the call."""
    return conn.execute(ITEMS_BY_OWNER.format(owner)).fetchall()


def by_title(conn: sqlite3.Connection, title: str) -> list[tuple[int, str]]:
    """A helper's fragment appended."""
    query = "SELECT id, title FROM items WHERE " + _title_clause(title)
    return conn.execute(query).fetchall()


def by_tag(conn: sqlite3.Connection, tag: str) -> list[tuple[int, str]]:
    """Parts joined."""
    parts = ["SELECT id, title FROM items WHERE tag = '", tag, "'"]
    return conn.execute("".join(parts)).fetchall()


def by_id(conn: sqlite3.Connection, item_id: str) -> list[tuple[int, str]]:
    """Through a same-module wrapper of execute."""
    return _run(conn, "SELECT id, title FROM items WHERE id = %s" % item_id)


def multi_line(conn: sqlite3.Connection, owner: str) -> list[tuple[int, str]]:
    """An f-string on the line after the call: one statement, one finding."""
    return conn.execute(
        f"SELECT id FROM items WHERE owner = '{owner}'"
    ).fetchall()
'''

CONSTANTS_ONLY = '''"""Item queries that interpolate module constants only, values bound as parameters."""

import sqlite3

COLUMNS = ("id", "title", "owner")
SELECT_ITEMS = f"SELECT {', '.join(COLUMNS)} FROM items"
SORTS = {"title": "title ASC", "newest": "id DESC"}


class ItemTable:
    """The table's name, fixed."""

    NAME = "items"


def by_owner(conn: sqlite3.Connection, owner: str) -> list[tuple[int, str, str]]:
    """Fixed column list in an f-string, owner bound."""
    return conn.execute(f"{SELECT_ITEMS} WHERE owner = ?", (owner,)).fetchall()


def by_ids(conn: sqlite3.Connection, ids: list[int]) -> list[tuple[int, str, str]]:
    """One placeholder per id."""
    marks = ", ".join("?" for _ in ids)
    return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM items WHERE id IN ({marks})", ids).fetchall()


def sorted_items(conn: sqlite3.Connection, key: str) -> list[tuple[int, str, str]]:
    """ORDER BY from a constant table, whatever key the caller passes."""
    return conn.execute(SELECT_ITEMS + " ORDER BY " + SORTS[key]).fetchall()


def count(conn: sqlite3.Connection) -> int:
    """A class constant."""
    return int(conn.execute(f"SELECT count(*) FROM {ItemTable.NAME}").fetchone()[0])
'''


def test_sql_built_one_step_away_is_caught(stage: Stage) -> None:
    """A template filled with .format, a helper's fragment, a join, a wrapper: each caught once."""
    staged = stage()
    staged.write("app/items_sql.py", ONE_STEP_AWAY)
    space, ruff = staged.ruff()
    outcome = check_sql_injection(space, ruff)
    mine = {f.line: f.render() for f in outcome.findings if f.path == "app/items_sql.py"}
    # ruff's S608 also reports the concatenation on line 25, the statement before the call.
    assert sorted(mine) == [20, 25, 26, 32, 37, 42]
    assert (
        "TB0101 SQL built with .format() of the template ITEMS_BY_OWNER reaches execute()"
        in mine[20]
    )
    assert "an f-string in the return value of _title_clause() reaches execute()" in mine[26]
    assert "TB0101 SQL built with str.join() reaches execute()" in mine[32]
    assert "% formatting reaches _run() -> execute()" in mine[37]
    # ruff's S608 (on the f-string's line) and the data-flow finding (on the call): one statement.
    assert "S608" in mine[42]
    assert "TB0101" in mine[42]


def test_sql_from_module_constants_only_passes(stage: Stage) -> None:
    """A fixed column list, placeholders, a constant ORDER BY table and a class constant pass."""
    staged = stage()
    staged.write("app/items_sql.py", CONSTANTS_ONLY)
    space, ruff = staged.ruff()
    assert find_sql_building("app/items_sql.py", ast.parse(CONSTANTS_ONLY)) == []
    outcome = check_sql_injection(space, ruff)
    assert [
        f for f in outcome.findings if f.path == "app/items_sql.py" and f.rule == "TB0101"
    ] == []


def test_fragments_and_constants_from_other_modules(stage: Stage) -> None:
    """A helper in another module returning an f-string fails; a column list imported from one passes."""
    staged = stage()
    staged.write(
        "app/sql_parts.py",
        '"""Shared SQL pieces."""\n\nCOLUMNS = ("id", "title")\n\n\n'
        "def owner_clause(owner: str) -> str:\n"
        '    """A WHERE fragment."""\n'
        "    return f\"owner = '{owner}'\"\n",
    )
    staged.write(
        "app/items_db.py",
        '"""Queries."""\n\nimport sqlite3\n\nfrom app.sql_parts import COLUMNS, owner_clause\n\n\n'
        "def mine(conn: sqlite3.Connection, owner: str) -> list[tuple[int, str]]:\n"
        '    """Unsafe."""\n'
        '    return conn.execute("SELECT id FROM items WHERE " + owner_clause(owner)).fetchall()\n\n\n'
        "def listed(conn: sqlite3.Connection) -> list[tuple[int, str]]:\n"
        '    """Safe."""\n'
        "    return conn.execute(f\"SELECT {', '.join(COLUMNS)} FROM items\").fetchall()\n",
    )
    space, ruff = staged.ruff()
    outcome = check_sql_injection(space, ruff)
    assert [(f.path, f.line) for f in outcome.findings] == [("app/items_db.py", 10)]
    assert "an f-string in the return value of owner_clause()" in outcome.findings[0].message
