"""Constraint 3's second half: ``Any`` as a parameter or return type is a missing annotation.

``def f(x: Any) -> Any`` satisfies ruff's ANN0xx/ANN2xx while saying nothing
about the types, so an annotation that *is* ``Any`` (``typing.Any``,
``typing_extensions.Any``, ``Optional[Any]``, ``Any | None``, ``Annotated[Any,
...]``, or a module-level alias of those) counts as missing. ``dict[str, Any]``
and other containers of ``Any`` are real types and pass.

The documented escape is a comment on the line of the annotation (the ``def``
line for a return, the parameter's line for a parameter)::

    def dump(value: Any) -> str:  # taskbox: any-ok json.dumps accepts any object

``# taskbox: any-ok`` followed by a reason of at least :data:`MIN_REASON` characters
accepts that line; the reason is shown in the check's verdict so the reviewer
sees every accepted ``Any``. Without a reason the comment accepts nothing.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

from taskbox_runner.verify.endpoints import FunctionNode, last_name
from taskbox_runner.verify.models import Finding

RULE = "TB0302"
ESCAPE = re.compile(r"#\s*taskbox:\s*any-ok\b[\s:,-]*(?P<reason>.*)$", re.IGNORECASE)
#: A reason shorter than this (after stripping) does not count.
MIN_REASON = 8
_ANY_MODULES = ("typing", "typing_extensions")


@dataclass(frozen=True)
class Accepted:
    """An ``Any`` accepted by an escape comment, with its reason."""

    path: str
    line: int
    reason: str


def escape_comments(text: str) -> dict[int, str]:
    """Line -> the reason of a ``# taskbox: any-ok <reason>`` comment ('' when it has none)."""
    found: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                match = ESCAPE.search(token.string)
                if match:
                    found[token.start[0]] = match.group("reason").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def _any_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Local names bound to ``Any`` and module aliases of ``typing`` (``import typing as t``)."""
    names: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in _ANY_MODULES:
            names.update(a.asname or a.name for a in node.names if a.name == "Any")
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name in _ANY_MODULES)
    return names, modules


class AnyFinder:
    """Annotations of one module that amount to ``Any``."""

    def __init__(self, tree: ast.Module) -> None:
        self.names, self.modules = _any_names(tree)
        self.aliases: dict[str, ast.expr] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    self.aliases[target.id] = node.value
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.value is not None
                and last_name(node.annotation) == "TypeAlias"
            ):
                self.aliases[node.target.id] = node.value
            elif type(node).__name__ == "TypeAlias":
                name, value = getattr(node, "name", None), getattr(node, "value", None)
                if isinstance(name, ast.Name) and isinstance(value, ast.expr):
                    self.aliases[name.id] = value

    def is_any(self, annotation: ast.expr | None, depth: int = 0) -> bool:  # noqa: C901, PLR0911 - one return per annotation shape
        """Whether the annotation is ``Any`` itself (possibly optional, annotated or aliased)."""
        if annotation is None or depth > 10:  # noqa: PLR2004 - alias chains deeper than this are cycles
            return False
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                return self.is_any(ast.parse(annotation.value, mode="eval").body, depth + 1)
            except SyntaxError:
                return False
        if isinstance(annotation, ast.Name):
            if annotation.id in self.names:
                return True
            alias = self.aliases.get(annotation.id)
            return alias is not None and self.is_any(alias, depth + 1)
        if isinstance(annotation, ast.Attribute):
            return (
                annotation.attr == "Any"
                and isinstance(annotation.value, ast.Name)
                and annotation.value.id in self.modules
            )
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            return self.is_any(annotation.left, depth + 1) or self.is_any(
                annotation.right, depth + 1
            )
        if isinstance(annotation, ast.Subscript):
            outer = last_name(annotation.value)
            items = (
                annotation.slice.elts
                if isinstance(annotation.slice, ast.Tuple)
                else [annotation.slice]
            )
            if outer in {"Optional", "Union"}:
                return any(self.is_any(i, depth + 1) for i in items)
            if outer == "Annotated" and items:
                return self.is_any(items[0], depth + 1)
        return False


def _signature(node: FunctionNode) -> list[tuple[str, ast.expr | None, int]]:
    """``(what, annotation, line)`` for each parameter and the return."""
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    items = [(f"parameter '{a.arg}'", a.annotation, a.lineno) for a in every]
    items.append(("return type", node.returns, node.lineno))
    return items


def find_any(rel: str, tree: ast.Module, text: str) -> tuple[list[Finding], list[Accepted]]:
    """Signatures of one module annotated with ``Any``, and those an escape comment accepts."""
    finder = AnyFinder(tree)
    escapes = escape_comments(text)
    findings: list[Finding] = []
    accepted: list[Accepted] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for what, annotation, line in _signature(node):
            if not finder.is_any(annotation):
                continue
            # The escape may sit on the annotation's line or on the def line.
            reason = escapes.get(line, escapes.get(node.lineno))
            if reason is not None and len(reason) >= MIN_REASON:
                accepted.append(Accepted(rel, line, reason))
                continue
            why = (
                f"; the '# taskbox: any-ok' comment needs a reason of {MIN_REASON}+ characters"
                if reason is not None
                else "; name the real type (or accept it with '# taskbox: any-ok <reason>')"
            )
            findings.append(
                Finding(rel, line, RULE, f"{what} of {node.name}() is Any, not a type{why}")
            )
    return findings, accepted
