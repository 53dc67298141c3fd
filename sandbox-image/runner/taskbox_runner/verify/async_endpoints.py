"""Constraint 10: FastAPI endpoints are ``async def`` and nothing blocks the event loop.

Fails on: a FastAPI route defined with plain ``def``; a blocking call reached
from any owned ``async def``, directly or through sync helpers of the owned
code (same module or another owned module, see :mod:`call_graph`), with the
call chain as evidence (``list_items -> load_rows -> sqlite3.connect``).
Blocking means: ``time.sleep``; ``requests``, ``urllib.request``,
``http.client``, sync ``httpx``; ``subprocess``/``os.system``; file I/O
(``open()``, ``Path.read_text()`` and friends, not awaited); sync database
drivers (``sqlite3``, ``psycopg2``/``psycopg``, ``pymysql``, ``MySQLdb``,
``mysql.connector``, sync ``redis``) and every call on a handle they return;
sync SQLAlchemy engines, connections and sessions (``create_engine``,
``engine.begin()``, ``conn.execute()``, ``Session(...)``, a ``sessionmaker``
product, ``.query()``); the Django ORM's query-running methods. Also: an async
endpoint taking a sync ``Session``; an ``AsyncSession`` call that is not
awaited. Handing a sync function to ``asyncio.to_thread`` or
``run_in_threadpool`` passes it without calling it, so it is not followed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskbox_runner.verify.call_graph import CallGraph, FunctionRef, chain_text
from taskbox_runner.verify.endpoints import (
    FunctionNode,
    ProjectTypes,
    call_name,
    dotted_name,
    fastapi_endpoints,
    walk_function,
)
from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.statements import one_per_statement

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

#: Blocking calls by their imported (canonical) dotted name.
BLOCKING_CALLS = frozenset(
    {
        "time.sleep",
        "urllib.request.urlopen",
        "os.system",
        "os.popen",
        "os.wait",
        "os.waitpid",
        "httpx.get",
        "httpx.post",
        "httpx.put",
        "httpx.patch",
        "httpx.delete",
        "httpx.head",
        "httpx.options",
        "httpx.request",
        "httpx.stream",
        "httpx.Client",
        "socket.create_connection",
        "shutil.copy",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.move",
        "shutil.rmtree",
        "json.load",
        "json.dump",
        "input",
        "open",
        "io.open",
    }
)
BLOCKING_MODULES = ("requests.", "urllib.request.", "urllib3.", "http.client.", "subprocess.")
#: File methods of ``pathlib.Path`` (and look-alikes) that do I/O unless awaited (anyio, aiopath).
FILE_METHODS = frozenset(
    {"read_text", "read_bytes", "write_text", "write_bytes", "open", "readlines", "readline"}
)
#: Calls that open a sync database handle; every un-awaited call on what they return blocks too.
DB_FACTORIES = frozenset(
    {
        "sqlite3.connect",
        "psycopg2.connect",
        "psycopg.connect",
        "pymysql.connect",
        "MySQLdb.connect",
        "mysql.connector.connect",
        "redis.Redis",
        "redis.StrictRedis",
        "redis.from_url",
        "sqlalchemy.create_engine",
        "sqlalchemy.engine.create_engine",
        "sqlalchemy.engine_from_config",
        "sqlalchemy.orm.Session",
        "sqlalchemy.orm.sessionmaker",
        "sqlalchemy.orm.scoped_session",
        "sqlmodel.create_engine",
        "sqlmodel.Session",
    }
)
DB_MODULES = ("sqlite3.", "psycopg2.", "psycopg.", "pymysql.", "MySQLdb.", "mysql.connector.")
#: Parameter types that are sync database handles (async ones are told apart by being awaited).
DB_HANDLE_TYPES = frozenset(
    {"Session", "Connection", "Engine", "Cursor", "scoped_session", "Redis"}
)
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


@dataclass(frozen=True)
class Site:
    """A blocking call inside one function."""

    call: ast.Call
    rule: str
    what: str
    """What blocks, as the evidence names it (``time.sleep``, ``engine.begin``)."""
    hint: str = ""
    """What to use instead, when there is a direct async twin."""


@dataclass
class ModuleFacts:
    """Per owned module: canonical import names and names bound to sync database handles."""

    imported: dict[str, str] = field(default_factory=dict)
    handles: set[str] = field(default_factory=set)


def _root(expr: ast.expr) -> str:
    return dotted_name(expr).partition(".")[0]


def _canonical(call: ast.Call, imported: dict[str, str], local: set[str]) -> str:
    name = dotted_name(call.func)
    if name in {"open", "input"} and name not in imported and name not in local:
        return name  # the builtins
    return canonical_name(name, imported)


def _opens_handle(value: ast.expr, facts: ModuleFacts, handles: set[str]) -> bool:
    """Whether ``value`` evaluates to a sync database handle (engine, connection, session, cursor)."""
    if isinstance(value, ast.Call):
        canonical = canonical_name(dotted_name(value.func), facts.imported)
        if canonical in DB_FACTORIES or canonical.startswith(DB_MODULES):
            return True
        return _root(value.func) in handles
    if isinstance(value, ast.Attribute | ast.Name):
        return _root(value) in handles
    return False


def function_handles(node: FunctionNode, types: ProjectTypes, facts: ModuleFacts) -> set[str]:
    """Names inside one function that hold a sync database handle."""
    handles = set(facts.handles)
    for name, kinds in _annotated_params(node, types).items():
        if kinds & DB_HANDLE_TYPES and not any(k.startswith("Async") for k in kinds):
            handles.add(name)
        else:
            handles.discard(name)  # a parameter shadows a module-level handle
    bindings: list[tuple[ast.expr, ast.expr]] = []
    for child in walk_function(node):
        if isinstance(child, ast.Assign):
            bindings += [(t, child.value) for t in child.targets]
        elif isinstance(child, ast.AnnAssign) and child.value is not None:
            bindings.append((child.target, child.value))
        elif isinstance(child, ast.With):
            bindings += [(i.optional_vars, i.context_expr) for i in child.items if i.optional_vars]
    for _ in range(3):  # engine -> connection -> cursor
        for target, value in bindings:
            if isinstance(target, ast.Name) and _opens_handle(value, facts, handles):
                handles.add(target.id)
    return handles


def blocking_sites(node: FunctionNode, types: ProjectTypes, facts: ModuleFacts) -> list[Site]:
    """Calls in one function body that block the event loop if it runs inside async code."""
    handles = function_handles(node, types, facts)
    local = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
    awaited = {id(c.value) for c in walk_function(node) if isinstance(c, ast.Await)}
    awaited |= {
        id(item.context_expr)
        for c in walk_function(node)
        if isinstance(c, ast.AsyncWith)
        for item in c.items
    }
    sites = []
    for child in walk_function(node):
        if not isinstance(child, ast.Call) or id(child) in awaited:
            continue
        name = dotted_name(child.func)
        # The attribute itself, also when the receiver is a call (``Path(p).read_text()``).
        short = child.func.attr if isinstance(child.func, ast.Attribute) else call_name(child)
        owner = dotted_name(child.func.value) if isinstance(child.func, ast.Attribute) else ""
        canonical = _canonical(child, facts.imported, local)
        if canonical in DB_FACTORIES or canonical.startswith(DB_MODULES):
            sites.append(Site(child, "TB1003", canonical))
        elif canonical in BLOCKING_CALLS or canonical.startswith(BLOCKING_MODULES):
            sites.append(Site(child, "TB1002", canonical))
        elif short == "query" and owner:
            sites.append(Site(child, "TB1003", f"{owner}.query"))
        elif name and _root(child.func) in handles:
            sites.append(Site(child, "TB1003", name))
        elif short in DJANGO_EVALUATING and ".objects." in f".{ast.unparse(child.func)}":
            what = name or ast.unparse(child.func)
            sites.append(Site(child, "TB1003", what, f"use a{short}()"))
        elif isinstance(child.func, ast.Attribute) and short in FILE_METHODS:
            sites.append(Site(child, "TB1002", ast.unparse(child.func)))
    return sites


def _direct_message(fn: str, site: Site) -> str:
    hint = f"; {site.hint}" if site.hint else ""
    if site.what.endswith(".query"):
        return f"{fn}() runs a sync ORM {site.what}() inside async def"
    if site.rule == "TB1003":
        return f"{fn}() runs sync database call {site.what}() inside async def{hint}"
    return f"{fn}() calls blocking {site.what}() inside async def"


def async_session_problems(
    rel: str, node: ast.AsyncFunctionDef, types: ProjectTypes
) -> list[Finding]:
    """``AsyncSession`` calls inside one ``async def`` that are not awaited."""
    params = _annotated_params(node, types)
    async_sessions = {name for name, kinds in params.items() if "AsyncSession" in kinds}
    awaited = {id(child.value) for child in walk_function(node) if isinstance(child, ast.Await)}
    findings = []
    for child in walk_function(node):
        if not isinstance(child, ast.Call) or not isinstance(child.func, ast.Attribute):
            continue
        owner = dotted_name(child.func.value)
        short = child.func.attr
        if owner in async_sessions and short in ASYNC_SESSION_METHODS and id(child) not in awaited:
            findings.append(
                Finding(
                    rel,
                    child.lineno,
                    "TB1004",
                    f"{node.name}() calls {owner}.{short}() on an AsyncSession without await",
                )
            )
    return findings


def module_facts(space: Workspace, files: list[str], graph: CallGraph) -> dict[str, ModuleFacts]:
    """Import maps and module-level sync database handles of the owned modules."""
    facts = {}
    for rel, tree in space.trees(files):
        fact = ModuleFacts(imported_names(tree) | graph.imports.get(rel, {}))
        facts[rel] = fact
        for _ in range(2):  # engine = create_engine(...); SessionLocal = sessionmaker(bind=engine)
            for node in tree.body:
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if _opens_handle(node.value, fact, fact.handles):
                        fact.handles.update(t.id for t in targets if isinstance(t, ast.Name))
    # ``from app.db import SessionLocal`` carries the handle into the importing module.
    for fact in facts.values():
        for local, target in fact.imported.items():
            module, _, name = target.rpartition(".")
            source = graph.modules.get(module)
            if source is not None and name in facts.get(source, ModuleFacts()).handles:
                fact.handles.add(local)
    return facts


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
    files = space.owned_source
    graph = CallGraph.build(space, files)
    facts = module_facts(space, files, graph)
    roots = 0
    for rel, tree in space.trees(files):
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
                roots += 1
                findings += async_session_problems(rel, node, types)
                findings += _blocking_from(graph.function(rel, node), graph, facts, types)
    findings = one_per_statement(space, findings)
    if findings:
        verdict = f"{len(findings)} async consistency problem(s)"
    elif endpoints:
        verdict = (
            f"{endpoints} FastAPI endpoint(s) async; no blocking call reached from {roots} owned "
            "async function(s), sync helpers followed"
        )
    else:
        verdict = (
            f"no FastAPI endpoint; no blocking call reached from {roots} owned async function(s), "
            "sync helpers followed"
        )
    return CheckOutcome(10, verdict, findings)


def _blocking_from(
    root: FunctionRef, graph: CallGraph, facts: dict[str, ModuleFacts], types: ProjectTypes
) -> list[Finding]:
    """Blocking calls in ``root`` and in the sync helpers it reaches, located in ``root``."""
    findings = []
    for function, chain in graph.reachable(root, lambda f: not f.is_async):
        for site in blocking_sites(function.node, types, facts.get(function.rel, ModuleFacts())):
            if not chain:
                findings.append(
                    Finding(
                        root.rel, site.call.lineno, site.rule, _direct_message(root.node.name, site)
                    )
                )
                continue
            findings.append(
                Finding(
                    root.rel,
                    chain[0].call.lineno,
                    site.rule,
                    f"{root.node.name}() reaches blocking {site.what}() through sync code: "
                    f"{chain_text(root, chain, site.what)} ({function.rel}:{site.call.lineno})",
                )
            )
    return findings
