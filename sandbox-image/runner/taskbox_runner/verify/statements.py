"""One finding per statement: findings on lines of the same Python statement are merged.

A statement spanning several lines (a call with its arguments on the following
lines) is one place in the code; two tools, or two rules of one check, that
report it must not count it twice.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from taskbox_runner.verify.models import Finding

if TYPE_CHECKING:
    from collections.abc import Iterable

    from taskbox_runner.verify.workspace import Workspace


def statement_starts(tree: ast.Module) -> dict[int, int]:
    """Line -> first line of the innermost statement covering it."""
    starts: dict[int, int] = {}
    spans: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            end = node.end_lineno or node.lineno
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                # A definition's own statement is its header (decorators through the colon).
                first = node.body[0].lineno if node.body else end + 1
                end = max(node.lineno, first - 1)
            elif hasattr(node, "body") and isinstance(node.body, list) and node.body:
                end = max(node.lineno, node.body[0].lineno - 1)
            spans.append((node.lineno, end))
    # Longer spans first so the innermost (shorter) statement writes last.
    for start, end in sorted(spans, key=lambda s: s[0] - s[1]):
        for line in range(start, end + 1):
            starts[line] = start
    return starts


def one_per_statement(space: Workspace, findings: Iterable[Finding]) -> list[Finding]:
    """One finding per statement: the first in sorted order, carrying the others' messages."""
    starts: dict[str, dict[int, int]] = {}
    groups: dict[tuple[str, int], list[Finding]] = {}
    for finding in sorted(set(findings)):
        if finding.path not in starts:
            tree = space.tree(finding.path) if finding.path.endswith(".py") else None
            starts[finding.path] = statement_starts(tree) if tree is not None else {}
        key = (finding.path, starts[finding.path].get(finding.line, finding.line))
        groups.setdefault(key, []).append(finding)
    kept = []
    for group in groups.values():
        first = group[0]
        extra = [
            f.message if f.rule == first.rule else f"{f.rule} {f.message}"
            for f in group[1:]
            if f.message != first.message
        ]
        if extra:
            first = Finding(
                first.path, first.line, first.rule, "; also ".join([first.message, *extra])
            )
        kept.append(first)
    return sorted(kept)
