"""Constraint 1, no SQL injection: ruff's S608 plus an AST pass over SQL sinks.

The AST pass flags SQL text built at run time (f-string with a value, ``+``
concatenation, ``%`` formatting, ``.format()``) that reaches a call that runs or
wraps SQL: ``execute``/``executemany``/``executescript``/``exec_driver_sql``,
SQLAlchemy ``text``, Django ``raw``/``extra``/``RawSQL``. A name is followed to
its assignments in the same function (one level), which is how such strings
usually travel.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from taskbox_runner.verify.endpoints import call_name
from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.ruff_run import HARNESS_RULES, RuffRun

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

SINKS = frozenset(
    {"execute", "executemany", "executescript", "exec_driver_sql", "text", "raw", "extra", "RawSQL"}
)
#: Keyword arguments that carry SQL text, besides the first positional one.
SQL_KEYWORDS = frozenset(
    {"sql", "statement", "query", "raw_query", "where", "select", "tables", "order_by"}
)
RULE = "TB0101"
#: How many names/concatenations deep a SQL argument is followed.
MAX_FOLLOW_DEPTH = 3


def dynamic_sql(node: ast.expr, assigned: dict[str, list[ast.expr]], depth: int = 0) -> str | None:
    """How ``node`` builds a string from run-time values, or ``None`` if it does not."""
    if depth > MAX_FOLLOW_DEPTH:
        return None
    direct = _direct_shape(node)
    if direct:
        return direct
    # Look through names (to their assignments), concatenations and lists for a dynamic part.
    parts: list[ast.expr] = []
    if isinstance(node, ast.Name):
        parts = assigned.get(node.id, [])
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts = [node.left, node.right]
    elif isinstance(node, ast.List | ast.Tuple):
        parts = node.elts
    for part in parts:
        how = dynamic_sql(part, assigned, depth + 1)
        if how:
            return how
    return _concatenation(node)


def _direct_shape(node: ast.expr) -> str | None:
    """f-string with a value, ``'...' % value`` or ``'...'.format(value)``."""
    if isinstance(node, ast.JoinedStr) and any(
        isinstance(v, ast.FormattedValue) for v in node.values
    ):
        return "an f-string"
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mod)
        and _stringish(node.left)
        and not _constant(node.right)
    ):
        return "% formatting"
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and _stringish(node.func.value)
        and (node.args or node.keywords)
    ):
        return ".format()"
    return None


def _concatenation(node: ast.expr) -> str | None:
    """``'...' + value``: a string joined with something that is not a constant."""
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and (_stringish(node.left) or _stringish(node.right))
        and not (_constant(node.left) and _constant(node.right))
    ):
        return "string concatenation"
    return None


def _stringish(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return _stringish(node.left) or _stringish(node.right)
    return False


def _constant(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.BinOp):
        return _constant(node.left) and _constant(node.right)
    if isinstance(node, ast.Tuple):
        return all(_constant(e) for e in node.elts)
    return False


def _assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    """Values assigned to simple names in a scope (``x = ...`` and ``x += ...``)."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
        elif (
            isinstance(node, ast.AugAssign | ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.value is not None
        ):
            value = node.value
            if isinstance(node, ast.AugAssign):
                # ``q += f"..."`` or ``q += user_value``: the result is built at run time.
                value = ast.BinOp(left=ast.Constant(""), op=ast.Add(), right=value)
            assigned.setdefault(node.target.id, []).append(value)
    return assigned


def find_sql_building(rel: str, tree: ast.Module) -> list[Finding]:
    """Every SQL sink in the module whose SQL argument is built at run time."""
    findings = []
    scopes: list[ast.AST] = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    seen: set[int] = set()
    # Innermost scope first, so a call is judged with its own function's assignments.
    for scope in reversed(scopes):
        assigned = _assignments(scope)
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or id(node) in seen or call_name(node) not in SINKS:
                continue
            seen.add(id(node))
            arguments = node.args[:1] + [k.value for k in node.keywords if k.arg in SQL_KEYWORDS]
            for argument in arguments:
                how = dynamic_sql(argument, assigned)
                if how:
                    findings.append(
                        Finding(
                            rel,
                            node.lineno,
                            RULE,
                            f"SQL built with {how} reaches {call_name(node)}(); "
                            "pass values as bound parameters or use the ORM",
                        )
                    )
                    break
    return findings


def check_sql_injection(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 1 over the owned, non-test code."""
    files = space.owned_source
    findings = [
        Finding(d.path, d.line, d.code, d.message)
        for d in ruff.for_rules(HARNESS_RULES[1], set(files))
    ]
    for rel, tree in space.trees(files):
        findings += find_sql_building(rel, tree)
    if ruff.error:
        findings.append(Finding(files[0] if files else ".", 1, "TB0102", ruff.error))
    # One place, one report: ruff and the AST pass often agree on the same line.
    by_line: dict[tuple[str, int], Finding] = {}
    for finding in sorted(findings):
        by_line.setdefault((finding.path, finding.line), finding)
    kept = list(by_line.values())
    verdict = (
        f"no SQL built from run-time strings in {len(files)} owned source files (ruff S608 + AST)"
        if not kept
        else f"{len(kept)} place(s) build SQL from run-time strings"
    )
    return CheckOutcome(1, verdict, kept)
