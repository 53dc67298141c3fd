"""Constraint 10: FastAPI endpoints are ``async def`` and nothing blocks the event loop.

Fails on: a FastAPI route defined with plain ``def``; a blocking call inside any
owned ``async def`` (``time.sleep``, ``requests.*``, ``urllib.request``, sync
``httpx``, ``subprocess``, a sync SQLAlchemy ``Session`` or ``.query()``, a
Django ORM call that hits the database); an async endpoint taking a sync
``Session``; an ``AsyncSession`` call that is not awaited. Calls into sync
helpers are not followed (a known limit of this first cut).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from taskbox_runner.verify.endpoints import (
    FunctionNode,
    ProjectTypes,
    call_name,
    dotted_name,
    fastapi_endpoints,
    walk_function,
)
from taskbox_runner.verify.models import CheckOutcome, Finding

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

#: Blocking calls by their imported (canonical) dotted name.
BLOCKING_CALLS = frozenset(
    {
        "time.sleep",
        "urllib.request.urlopen",
        "subprocess.run",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "os.system",
        "httpx.get",
        "httpx.post",
        "httpx.put",
        "httpx.patch",
        "httpx.delete",
        "httpx.request",
        "httpx.Client",
        "sqlalchemy.orm.Session",
        "sqlalchemy.orm.sessionmaker",
        "sqlalchemy.create_engine",
    }
)
BLOCKING_MODULES = ("requests.", "urllib.request.")
#: Django ORM methods that run a query now (their ``a``-prefixed twins are the async ones).
DJANGO_EVALUATING = frozenset(
    {
        "get", "create", "get_or_create", "update_or_create", "count", "exists", "first", "last",
        "delete", "update", "bulk_create", "in_bulk", "latest", "earliest", "aggregate",
    }
)  # fmt: skip
ASYNC_SESSION_METHODS = frozenset(
    {
        "execute",
        "scalar",
        "scalars",
        "get",
        "commit",
        "refresh",
        "flush",
        "delete",
        "merge",
        "rollback",
        "close",
        "stream",
    }
)


def _annotated_params(node: FunctionNode, types: ProjectTypes) -> dict[str, set[str]]:
    params = {}
    for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
        params[arg.arg] = (
            set(types.leaf_types(arg.annotation)) if arg.annotation is not None else set()
        )
    return params


def blocking_calls(
    rel: str, node: FunctionNode, types: ProjectTypes, imported: dict[str, str]
) -> list[Finding]:
    """Blocking calls and un-awaited AsyncSession calls inside one ``async def``."""
    findings = []
    params = _annotated_params(node, types)
    async_sessions = {name for name, kinds in params.items() if "AsyncSession" in kinds}
    awaited = {id(child.value) for child in walk_function(node) if isinstance(child, ast.Await)}
    for child in walk_function(node):
        if not isinstance(child, ast.Call):
            continue
        name = dotted_name(child.func)
        short = call_name(child)
        owner = dotted_name(child.func.value) if isinstance(child.func, ast.Attribute) else ""
        canonical = canonical_name(name, imported)
        if canonical in BLOCKING_CALLS or canonical.startswith(BLOCKING_MODULES):
            findings.append(
                Finding(
                    rel,
                    child.lineno,
                    "TB1002",
                    f"{node.name}() calls blocking {canonical}() inside async def",
                )
            )
        elif short == "query" and owner and owner not in async_sessions:
            findings.append(
                Finding(
                    rel,
                    child.lineno,
                    "TB1003",
                    f"{node.name}() runs a sync ORM {owner}.query() inside async def",
                )
            )
        elif ".objects." in f".{name}" and short in DJANGO_EVALUATING:
            findings.append(
                Finding(
                    rel,
                    child.lineno,
                    "TB1003",
                    f"{node.name}() runs sync Django ORM {name}() inside async def; use a{short}()",
                )
            )
        elif (
            owner in async_sessions and short in ASYNC_SESSION_METHODS and id(child) not in awaited
        ):
            findings.append(
                Finding(
                    rel,
                    child.lineno,
                    "TB1004",
                    f"{node.name}() calls {owner}.{short}() on an AsyncSession without await",
                )
            )
    return findings


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it was imported as (``from time import sleep`` -> sleep: time.sleep)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def canonical_name(name: str, imported: dict[str, str]) -> str:
    """The dotted name with its first part replaced by what it was imported as; '' if not imported."""
    first, _, rest = name.partition(".")
    if first not in imported:
        return ""
    return f"{imported[first]}.{rest}" if rest else imported[first]


def check_async(space: Workspace, types: ProjectTypes) -> CheckOutcome:
    """Constraint 10 over the owned, non-test code."""
    findings: list[Finding] = []
    endpoints = 0
    for rel, tree in space.trees(space.owned_source):
        imported = imported_names(tree)
        for route in fastapi_endpoints(rel, tree):
            endpoints += 1
            if isinstance(route.node, ast.FunctionDef):
                findings.append(
                    Finding(
                        rel,
                        route.node.lineno,
                        "TB1001",
                        f"endpoint {route.node.name}() is a plain def; make it async def",
                    )
                )
            else:
                for arg, kinds in _annotated_params(route.node, types).items():
                    if "Session" in kinds:
                        findings.append(
                            Finding(
                                rel,
                                route.node.lineno,
                                "TB1003",
                                f"async endpoint {route.node.name}() takes a sync Session '{arg}'; use AsyncSession",
                            )
                        )
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef):
                findings += blocking_calls(rel, node, types, imported)
    if findings:
        verdict = f"{len(findings)} async consistency problem(s)"
    elif endpoints:
        verdict = f"{endpoints} FastAPI endpoint(s) async; no blocking calls in owned async code"
    else:
        verdict = "no blocking calls in owned async code"
    return CheckOutcome(10, verdict, findings)
