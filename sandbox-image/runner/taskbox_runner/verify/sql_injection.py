"""Constraint 1, no SQL injection: ruff's S608 plus a data-flow pass over SQL sinks.

The data-flow pass (:mod:`sql_flow`) flags SQL text built from run-time values
(an f-string, ``%``, ``.format()`` including a module-level template filled at
the call, ``+``, ``str.join``, or a same-module helper returning such text)
that reaches a call that runs or wraps SQL: ``execute``/``executemany``/
``executescript``/``exec_driver_sql``/``mogrify``, asyncpg/``databases``
``fetch*``, SQLAlchemy ``text``/``literal_column``, pandas ``read_sql``, Django ``raw``/``extra``/``RawSQL``, or a function of the same
module that passes its parameter on to one of those (``run(sql)`` wrapping
``cursor.execute(sql)``). Interpolating only module constants (a fixed column
list, a constant lookup table) is not a finding. Findings on one statement are
reported once (ruff's and the pass's); ruff's S608 counts only where the data
flow finds text built from a run-time value on its line.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from taskbox_runner.verify.call_graph import import_map
from taskbox_runner.verify.endpoints import FunctionNode, call_name, dotted_name, walk_function
from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.ruff_run import HARNESS_RULES, RuffRun
from taskbox_runner.verify.sql_flow import Judgement, ModuleFlow, Scope, params_of
from taskbox_runner.verify.statements import one_per_statement
from taskbox_runner.verify.workspace import module_name

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

SINKS = frozenset(
    {
        "execute",
        "executemany",
        "executescript",
        "exec_driver_sql",
        "mogrify",
        "text",
        "raw",
        "extra",
        "RawSQL",
        "read_sql",
        "read_sql_query",
        "literal_column",
        # asyncpg and the ``databases`` package
        "fetch",
        "fetchrow",
        "fetchval",
        "fetch_all",
        "fetch_one",
        "fetch_val",
        "execute_many",
    }
)
#: Keyword arguments that carry SQL text, besides the first positional one.
SQL_KEYWORDS = frozenset(
    {"sql", "statement", "query", "raw_query", "where", "select", "tables", "order_by"}
)
RULE = "TB0101"
#: Rounds of "a function passing its parameter to a sink is a sink" (wrappers of wrappers).
WRAPPER_ROUNDS = 3


def _sql_arguments(call: ast.Call, positions: dict[int | str, str] | None) -> list[ast.expr]:
    """The arguments of a sink call that carry SQL text."""
    if positions is None:
        return call.args[:1] + [k.value for k in call.keywords if k.arg in SQL_KEYWORDS]
    chosen = [a for i, a in enumerate(call.args) if i in positions]
    return chosen + [k.value for k in call.keywords if k.arg in positions]


def _is_sqlalchemy_text(call: ast.Call, imported: dict[str, str]) -> bool:
    """``text(...)`` counts only when it is SQLAlchemy's (``text`` is a common name)."""
    name = dotted_name(call.func)
    first = name.partition(".")[0]
    origin = imported.get(first, "")
    return origin.startswith(("sqlalchemy", "sqlmodel")) or (not origin and name != "text")


class SqlPass:
    """Sinks and wrappers of one module, and the calls whose SQL is built at run time."""

    def __init__(self, rel: str, tree: ast.Module, flow: ModuleFlow | None = None) -> None:
        self.rel = rel
        self.flow = flow or ModuleFlow(tree)
        self.imported = _imports(tree)
        self.wrappers: dict[str, dict[int | str, str]] = {}
        self._calls: dict[int, list[ast.Call]] = {}
        self._scopes: list[tuple[list[ast.AST], Scope]] | None = None
        self._find_wrappers()

    def calls(self, node: FunctionNode) -> list[ast.Call]:
        """The calls in one function body (computed once)."""
        if id(node) not in self._calls:
            self._calls[id(node)] = _calls(node)
        return self._calls[id(node)]

    def _sink(self, call: ast.Call, scope: Scope) -> tuple[str, dict[int | str, str] | None] | None:
        name = call_name(call)
        if name in SINKS and (name != "text" or _is_sqlalchemy_text(call, self.imported)):
            return name, None
        target = self.flow._function(call.func, scope)  # noqa: SLF001 - same package
        if target is not None and target.name in self.wrappers:
            positions = dict(self.wrappers[target.name])
            # ``self.run(sql)``: the bound method's first parameter is not in the call.
            if isinstance(call.func, ast.Attribute) and params_of(target)[:1] in (
                ["self"],
                ["cls"],
            ):
                positions = {(k - 1 if isinstance(k, int) else k): v for k, v in positions.items()}
            return f"{target.name}() -> {next(iter(positions.values()))}", positions
        return None

    def _find_wrappers(self) -> None:
        functions = list(self.flow.functions.values()) + list(self.flow.methods.values())
        for _ in range(WRAPPER_ROUNDS):
            for node in functions:
                if node.name in self.wrappers:
                    continue
                params = params_of(node)
                scope = self.flow.scope_of(node)
                found: dict[int | str, str] = {}
                for call in self.calls(node):
                    sink = self._sink(call, scope)
                    if sink is None:
                        continue
                    for argument in _sql_arguments(call, sink[1]):
                        param = _parameter(argument, scope)
                        if param in params:
                            found[params.index(param)] = sink[0].split(" -> ")[-1]
                            found[param] = sink[0].split(" -> ")[-1]
                if found:
                    self.wrappers[node.name] = found

    def findings(self) -> list[Finding]:
        """Every sink call whose SQL argument is built from run-time values."""
        results = []
        scopes: list[tuple[list[ast.Call], Scope]] = []
        module_calls = [n for n in _module_level(self.flow.tree) if isinstance(n, ast.Call)]
        scopes.append((module_calls, self.flow.module))
        scopes += [
            (self.calls(node), self.flow.scope_of(node))
            for node in ast.walk(self.flow.tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for calls, scope in scopes:
            for call in calls:
                sink = self._sink(call, scope)
                if sink is None:
                    continue
                for argument in _sql_arguments(call, sink[1]):
                    judged = self.flow.judge(argument, scope)
                    if judged.built:
                        results.append(
                            Finding(
                                self.rel,
                                call.lineno,
                                RULE,
                                f"SQL built with {judged.how} reaches {sink[0]}(); "
                                "pass values as bound parameters or use the ORM",
                            )
                        )
                        break
        return results

    def built_on_line(self, line: int) -> bool:
        """Whether text built from a run-time value is written on ``line`` (to judge ruff's S608)."""
        if self._scopes is None:
            self._scopes = [(_module_level(self.flow.tree), self.flow.module)]
            self._scopes += [
                (list(walk_function(node)), self.flow.scope_of(node))
                for node in ast.walk(self.flow.tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
        for nodes, scope in self._scopes:
            for node in nodes:
                if (
                    isinstance(node, ast.JoinedStr | ast.BinOp | ast.Call)
                    and node.lineno <= line <= (node.end_lineno or node.lineno)
                    and self.flow.judge(node, scope).built
                ):
                    return True
        return False


def _calls(node: FunctionNode) -> list[ast.Call]:
    return [c for c in walk_function(node) if isinstance(c, ast.Call)]


def _module_level(tree: ast.Module) -> list[ast.AST]:
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return found


def _parameter(argument: ast.expr, scope: Scope) -> str:
    """The parameter an argument is, directly or through plain renames (``sql = query``)."""
    seen: set[str] = set()
    while isinstance(argument, ast.Name) and argument.id not in seen:
        seen.add(argument.id)
        if argument.id in scope.params:
            return argument.id
        values = scope.assigned.get(argument.id, [])
        if len(values) != 1:
            return ""
        argument = values[0]
    return ""


def _imports(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


class ProjectFlows:
    """One :class:`ModuleFlow` per module of the repository, resolving imported constants."""

    def __init__(self, space: Workspace) -> None:
        self.space = space
        self.by_module: dict[str, str] = {}
        for rel in space.source_python:
            name = module_name(rel)
            self.by_module[name] = rel
            self.by_module.setdefault(name.removeprefix("src."), rel)
        self.flows: dict[str, ModuleFlow] = {}
        self.imports: dict[str, dict[str, str]] = {}
        self.busy: set[tuple[str, str]] = set()

    def flow(self, rel: str) -> ModuleFlow | None:
        """The module's flow (``None`` when it does not parse)."""
        if rel not in self.flows:
            tree = self.space.tree(rel)
            if tree is None:
                return None
            flow = ModuleFlow(tree)
            flow.external = lambda name: self.lookup(rel, name)
            flow.external_returns = lambda name: self.returns(rel, name)
            self.flows[rel] = flow
            self.imports[rel] = import_map(rel, tree)
        return self.flows[rel]

    def lookup(self, rel: str, name: str) -> Judgement | None:
        """How a name ``rel`` imports from another project module is judged in that module."""
        module, _, attr = self.imports.get(rel, {}).get(name, "").rpartition(".")
        source = self.by_module.get(module)
        key = (rel, name)
        if source is None or key in self.busy:
            return None
        other = self.flow(source)
        if other is None or attr not in other.module.assigned:
            return None
        self.busy.add(key)
        try:
            return other.judge(ast.Name(id=attr, ctx=ast.Load()), other.module)
        finally:
            self.busy.discard(key)

    def returns(self, rel: str, name: str) -> Judgement | None:
        """What a function ``rel`` imports from another project module returns."""
        module, _, attr = self.imports.get(rel, {}).get(name, "").rpartition(".")
        source = self.by_module.get(module)
        key = (rel, f"{name}()")
        if source is None or key in self.busy:
            return None
        other = self.flow(source)
        function = other.functions.get(attr) if other is not None else None
        if other is None or function is None:
            return None
        self.busy.add(key)
        try:
            return other.returns(function)
        finally:
            self.busy.discard(key)


def find_sql_building(rel: str, tree: ast.Module) -> list[Finding]:
    """Every SQL sink in the module whose SQL argument is built at run time."""
    return SqlPass(rel, tree).findings()


def check_sql_injection(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 1 over the owned, non-test code."""
    files = space.owned_source
    modules = ProjectFlows(space)
    passes = {rel: SqlPass(rel, tree, modules.flow(rel)) for rel, tree in space.trees(files)}
    # ruff's S608 is kept where the data flow agrees the text is built from a run-time value:
    # an f-string of module constants (a fixed column list) is not an injection vector.
    findings = [
        Finding(d.path, d.line, d.code, d.message)
        for d in ruff.for_rules(HARNESS_RULES[1], set(files))
        if d.path not in passes or passes[d.path].built_on_line(d.line)
    ]
    for sql_pass in passes.values():
        findings += sql_pass.findings()
    # One statement, one report: ruff and the data-flow pass often agree on the same one.
    kept = one_per_statement(space, findings)
    if ruff.error:
        kept.append(Finding(files[0] if files else ".", 1, "TB0102", ruff.error))
    verdict = (
        f"no SQL built from run-time strings in {len(files)} owned source files "
        "(ruff S608 + data flow)"
        if not kept
        else f"{len(kept)} statement(s) build SQL from run-time strings"
    )
    return CheckOutcome(1, verdict, kept)
