"""Who calls whom inside the owned code: the call graph constraints 7 and 10 follow.

Read with ``ast`` only. A call is resolved when it names a function of the
owned code: a function of the same module, ``self.method()``/``cls.method()``
inside its class, a function imported from another owned module
(``from app.db import load``, ``from .db import load``, ``import app.db as db;
db.load()``), or a method of an owned class called on a name that holds an
instance of it (``repo = Repo()``, a module-level ``repo``, a parameter
annotated ``Repo`` or ``Annotated[Repo, Depends(...)]``). Anything else (a library, a value passed around) is not followed.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskbox_runner.verify.endpoints import FunctionNode, dotted_name, walk_function
from taskbox_runner.verify.workspace import module_name, resolve_relative

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from taskbox_runner.verify.workspace import Workspace

#: Calls followed from one root before giving up (guards deep or generated code).
MAX_CHAIN = 8


@dataclass(frozen=True)
class FunctionRef:
    """One function or method of the owned code."""

    rel: str
    qualname: str
    """``name`` for a module-level function, ``Class.name`` for a method."""
    node: FunctionNode = field(compare=False, hash=False)
    cls: str | None = None

    @property
    def is_async(self) -> bool:
        """Whether it is an ``async def``."""
        return isinstance(self.node, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Edge:
    """A call site in ``caller`` that runs ``callee``."""

    caller: FunctionRef
    call: ast.Call = field(compare=False, hash=False)
    callee: FunctionRef


def chain_text(root: FunctionRef, chain: list[Edge], last: str) -> str:
    """``endpoint -> helper -> time.sleep``."""
    return " -> ".join([root.node.name, *(e.callee.node.name for e in chain), last])


@dataclass
class CallGraph:
    """The functions of some files and how their calls resolve."""

    functions: dict[tuple[str, str], FunctionRef] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    """Dotted module name -> repository-relative file."""
    imports: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per file: local name -> the absolute dotted name it was imported as."""
    by_node: dict[int, FunctionRef] = field(default_factory=dict)
    classes: dict[tuple[str, str], str] = field(default_factory=dict)
    """``(file, class name)`` of every owned class -> the file it is defined in (itself)."""
    instances: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per file: module-level name -> ``file:Class`` of the owned class it is an instance of."""
    _locals: dict[int, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def build(cls, space: Workspace, files: Iterable[str]) -> CallGraph:
        """Index the functions and imports of ``files`` (the owned source)."""
        graph = cls()
        for rel, tree in space.trees(files):
            name = module_name(rel)
            graph.modules[name] = rel
            if name.startswith("src."):
                graph.modules[name.removeprefix("src.")] = rel
            graph.imports[rel] = import_map(rel, tree)
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    ref = FunctionRef(rel, node.name, node)
                    graph.functions[(rel, node.name)] = ref
                    graph.by_node[id(node)] = ref
                elif isinstance(node, ast.ClassDef):
                    graph.classes[(rel, node.name)] = rel
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                            qual = f"{node.name}.{item.name}"
                            ref = FunctionRef(rel, qual, item, node.name)
                            graph.functions[(rel, qual)] = ref
                            graph.by_node[id(item)] = ref
        for rel, tree in space.trees(files):
            graph.instances[rel] = graph._instances(rel, tree.body, {})
        graph._imported_instances()
        return graph

    def _imported_instances(self) -> None:
        """``from app.repo import repo`` brings the instance along."""
        for rel, names in self.imports.items():
            for local, target in names.items():
                module, _, name = target.rpartition(".")
                source = self.modules.get(module)
                instance = self.instances.get(source or "", {}).get(name)
                if instance is not None:
                    self.instances[rel].setdefault(local, instance)

    def owned_class(self, rel: str, expr: ast.expr | None) -> str | None:  # noqa: PLR0911 - one return per way to name a class
        """``file:Class`` when ``expr`` names an owned class (``Repo``, ``repo.Repo``,
        ``Annotated[Repo, ...]``, ``Repo | None``)."""
        if expr is None:
            return None
        if isinstance(expr, ast.Subscript) and dotted_name(expr.value).endswith("Annotated"):
            inner = expr.slice.elts[0] if isinstance(expr.slice, ast.Tuple) else expr.slice
            return self.owned_class(rel, inner)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
            return self.owned_class(rel, expr.left) or self.owned_class(rel, expr.right)
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            try:
                return self.owned_class(rel, ast.parse(expr.value, mode="eval").body)
            except SyntaxError:
                return None
        name = dotted_name(expr)
        if not name:
            return None
        if (rel, name) in self.classes:
            return f"{rel}:{name}"
        first, _, rest = name.partition(".")
        target = self.imports.get(rel, {}).get(first)
        if target is None:
            return None
        module, _, cls = (f"{target}.{rest}" if rest else target).rpartition(".")
        source = self.modules.get(module)
        return f"{source}:{cls}" if source is not None and (source, cls) in self.classes else None

    def _instances(
        self, rel: str, body: list[ast.stmt] | FunctionNode, known: dict[str, str]
    ) -> dict[str, str]:
        """Names bound to instances of owned classes: ``repo = Repo()``, ``repo: Repo``."""
        found = dict(known)
        nodes = walk_function(body) if not isinstance(body, list) else iter(body)
        if not isinstance(body, list):
            for arg in body.args.posonlyargs + body.args.args + body.args.kwonlyargs:
                cls = self.owned_class(rel, arg.annotation)
                if cls is not None:
                    found[arg.arg] = cls
        for node in nodes:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                cls = self.owned_class(rel, value.func) if isinstance(value, ast.Call) else None
                if cls is None and isinstance(node, ast.AnnAssign):
                    cls = self.owned_class(rel, node.annotation)
                for target in targets:
                    if isinstance(target, ast.Name) and cls is not None:
                        found[target.id] = cls
        return found

    def _method(self, caller: FunctionRef, owner: str, attr: str) -> FunctionRef | None:
        """``owner.attr()`` where ``owner`` holds an instance of an owned class."""
        key = id(caller.node)
        if key not in self._locals:
            self._locals[key] = self._instances(
                caller.rel, caller.node, self.instances.get(caller.rel, {})
            )
        cls = self._locals[key].get(owner)
        if cls is None:
            return None
        source, _, name = cls.partition(":")
        return self.functions.get((source, f"{name}.{attr}"))

    def function(self, rel: str, node: FunctionNode) -> FunctionRef:
        """The reference of a function node of ``rel`` (indexed or not)."""
        return self.by_node.get(id(node)) or FunctionRef(rel, node.name, node)

    def resolve(self, caller: FunctionRef, call: ast.Call) -> FunctionRef | None:
        """The owned function a call runs, if the call names one."""
        func = call.func
        rel = caller.rel
        if isinstance(func, ast.Name):
            local = self.functions.get((rel, func.id))
            if local is not None:
                return local
            return self._imported(self.imports.get(rel, {}).get(func.id, ""))
        if isinstance(func, ast.Attribute):
            owner = dotted_name(func.value)
            if owner in {"self", "cls"} and caller.cls is not None:
                return self.functions.get((rel, f"{caller.cls}.{func.attr}"))
            method = self._method(caller, owner, func.attr) if owner else None
            if method is not None:
                return method
            if owner:
                first, _, rest = owner.partition(".")
                target = self.imports.get(rel, {}).get(first)
                if target is not None:
                    module = f"{target}.{rest}" if rest else target
                    return self._imported(f"{module}.{func.attr}")
        return None

    def _imported(self, dotted: str) -> FunctionRef | None:
        module, _, name = dotted.rpartition(".")
        rel = self.modules.get(module)
        return self.functions.get((rel, name)) if rel is not None else None

    def reachable(
        self, root: FunctionRef, follow: Callable[[FunctionRef], bool]
    ) -> Iterator[tuple[FunctionRef, list[Edge]]]:
        """``root`` and every function it reaches through callees ``follow`` accepts, each once,
        with the shortest chain of calls that gets there."""
        queue: deque[tuple[FunctionRef, list[Edge]]] = deque([(root, [])])
        seen = {root}
        while queue:
            current, chain = queue.popleft()
            yield current, chain
            if len(chain) >= MAX_CHAIN:
                continue
            for child in walk_function(current.node):
                if not isinstance(child, ast.Call):
                    continue
                callee = self.resolve(current, child)
                if callee is None or callee in seen or not follow(callee):
                    continue
                seen.add(callee)
                queue.append((callee, [*chain, Edge(current, child, callee)]))


def import_map(rel: str, tree: ast.Module) -> dict[str, str]:
    """Local name -> absolute dotted name, for every import in the module."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    first = alias.name.split(".")[0]
                    names[first] = first
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(rel, node.module, node.level)
            if base is None:
                continue
            for alias in node.names:
                if alias.name != "*":
                    names[alias.asname or alias.name] = (
                        f"{base}.{alias.name}" if base else alias.name
                    )
    return names
