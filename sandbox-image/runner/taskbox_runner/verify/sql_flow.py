"""Intra-module data flow for constraint 1: is this expression text built from run-time values?

Every expression is judged one of three ways: *constant* (only literals and
module constants went into it), *value* (something known only at run time,
such as a parameter or a call result), or *built* (text assembled from a value:
an f-string, ``%``, ``.format()``, ``+``, ``str.join`` with a run-time part).
Names are followed to all their assignments in the function, then in the module
(flow-insensitive: one built assignment makes the name built); calls to
functions of the same module are followed to their ``return`` values; a name
imported from another module of the project is judged there (a shared
constant column list stays constant), and so is the return value of a function
imported from one; a
comprehension or a subscript over constants is constant (``", ".join("?" for _ in
ids)`` and ``SORTS[key]`` with a constant ``SORTS`` build no SQL from the value).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from taskbox_runner.verify.endpoints import FunctionNode, dotted_name, walk_function

if TYPE_CHECKING:
    from collections.abc import Callable

Kind = Literal["constant", "value", "built"]
#: How deep names, calls and operands are followed before an expression counts as a value
#: (a migration table of tuples of f-strings over a Literal's values is about 15 deep).
MAX_DEPTH = 40
#: ``str`` methods whose result is constant when the string and the arguments are.
STR_METHODS = frozenset(
    {
        "strip", "lstrip", "rstrip", "upper", "lower", "replace", "removeprefix", "removesuffix",
        "title", "casefold", "capitalize", "encode", "decode", "ljust", "rjust", "center",
        "zfill", "expandtabs", "format_map",
    }
)  # fmt: skip
PASS_THROUGH = frozenset({"str", "dedent", "cleandoc", "textwrap.dedent", "inspect.cleandoc"})
#: Calls whose result is constant when every argument is (``tuple(COLUMNS)``, ``get_args(State)``).
PURE_CALLS = frozenset(
    {
        "tuple", "list", "set", "frozenset", "sorted", "reversed", "len", "int", "float", "repr",
        "min", "max", "range", "dict", "get_args", "typing.get_args",
    }
)  # fmt: skip
#: Subscripted type constructors: ``Literal["a", "b"]`` is as constant as its arguments.
TYPE_FORMS = frozenset({"Literal", "typing.Literal"})


@dataclass(frozen=True)
class Judgement:
    """An expression's kind; for built text, how it was built."""

    kind: Kind
    how: str = ""

    @property
    def built(self) -> bool:
        """Text assembled from a run-time value."""
        return self.kind == "built"


CONSTANT = Judgement("constant")
VALUE = Judgement("value")


def _worst(judgements: list[Judgement]) -> Judgement:
    for kind in ("built", "value"):
        for judgement in judgements:
            if judgement.kind == kind:
                return judgement
    return CONSTANT


@dataclass
class Scope:
    """Names visible while judging an expression: a function's (or the module's) bindings."""

    assigned: dict[str, list[ast.expr]]
    params: set[str]
    cls: str | None = None
    parent: Scope | None = None
    constants: dict[str, Judgement] = field(default_factory=dict)
    """Comprehension and loop variables already judged."""


def bindings(body: list[ast.stmt] | FunctionNode) -> dict[str, list[ast.expr]]:  # noqa: C901 - one branch per binding statement
    """Values bound to simple names: ``x = ...``, ``x += ...``, ``for x in ...``, ``with ... as x``.

    A loop variable is bound to ``<iterable>[0]`` so it is constant exactly when the iterable is.
    """
    nodes = walk_function(body) if not isinstance(body, list) else _walk_module(body)
    assigned: dict[str, list[ast.expr]] = {}

    def bind(target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            assigned.setdefault(target.id, []).append(value)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                bind(element, ast.Subscript(value=value, slice=ast.Constant(0), ctx=ast.Load()))

    for node in nodes:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            bind(node.target, node.value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            name = ast.Name(id=node.target.id, ctx=ast.Load())
            bind(node.target, ast.BinOp(left=name, op=node.op, right=node.value))
        elif isinstance(node, ast.For | ast.AsyncFor):
            bind(node.target, ast.Subscript(value=node.iter, slice=ast.Constant(0), ctx=ast.Load()))
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                if item.optional_vars is not None:
                    bind(item.optional_vars, ast.Name(id="<context>", ctx=ast.Load()))
        elif isinstance(node, ast.NamedExpr):
            bind(node.target, node.value)
    return assigned


def _walk_module(body: list[ast.stmt]) -> list[ast.AST]:
    """Module-level statements, into ``if``/``try``/``with`` blocks but not into defs or classes."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        found.append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def params_of(node: FunctionNode) -> list[str]:
    """Parameter names in order (positional first)."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args]
    if args.vararg:
        names.append(args.vararg.arg)
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append(args.kwarg.arg)
    return names


class ModuleFlow:
    """The data-flow facts of one module."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.module = Scope(bindings(tree.body), set())
        self.functions: dict[str, FunctionNode] = {}
        self.methods: dict[tuple[str, str], FunctionNode] = {}
        self.class_constants: dict[str, dict[str, list[ast.expr]]] = {}
        self.owner_class: dict[int, str] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.class_constants[node.name] = bindings(node.body)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        self.methods[(node.name, item.name)] = item
                        self.owner_class[id(item)] = node.name
        self._returns: dict[int, Judgement] = {}
        self._busy: set[int] = set()
        self._module_names: dict[str, Judgement] = {}
        self._scopes: dict[int, Scope] = {}
        self.external: Callable[[str], Judgement | None] | None = None
        """Judges a name imported from another module of the project (constants there count)."""
        self.external_returns: Callable[[str], Judgement | None] | None = None
        """What a function imported from another module of the project returns."""

    def scope_of(self, node: FunctionNode) -> Scope:
        """The scope of one function of this module (built once per function)."""
        key = id(node)
        if key not in self._scopes:
            self._scopes[key] = Scope(
                bindings(node), set(params_of(node)), self.owner_class.get(key), self.module
            )
        return self._scopes[key]

    def judge(self, expr: ast.expr, scope: Scope, depth: int = 0) -> Judgement:  # noqa: C901, PLR0911, PLR0912 - one branch per kind of expression
        """Constant, value, or text built from a value (and how)."""
        if depth > MAX_DEPTH:
            return VALUE
        deeper = depth + 1
        if isinstance(expr, ast.Constant):
            return CONSTANT
        if isinstance(expr, ast.JoinedStr):
            parts = [
                self.judge(v.value, scope, deeper)
                for v in expr.values
                if isinstance(v, ast.FormattedValue)
            ]
            worst = _worst(parts)
            return (
                worst
                if worst.built
                else (CONSTANT if worst.kind == "constant" else Judgement("built", "an f-string"))
            )
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, scope, deeper)
        if isinstance(expr, ast.Name):
            return self._name(expr.id, scope, deeper)
        if isinstance(expr, ast.Call):
            return self._call(expr, scope, deeper)
        if isinstance(expr, ast.List | ast.Tuple | ast.Set):
            return _worst([self.judge(e, scope, deeper) for e in expr.elts])
        if isinstance(expr, ast.Dict):
            return _worst([self.judge(v, scope, deeper) for v in expr.values])
        if isinstance(expr, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            inner = Scope({}, set(), scope.cls, scope)
            for generator in expr.generators:
                source = self.judge(generator.iter, inner, deeper)
                for name in ast.walk(generator.target):
                    if isinstance(name, ast.Name):
                        inner.constants[name.id] = CONSTANT if source.kind == "constant" else VALUE
            return self.judge(expr.elt, inner, deeper)
        if isinstance(expr, ast.Subscript):
            if dotted_name(expr.value) in TYPE_FORMS:
                return self.judge(expr.slice, scope, deeper)
            # Indexing a constant table gives one of its constants, whatever the index.
            return self.judge(expr.value, scope, deeper)
        if isinstance(expr, ast.IfExp):
            return _worst(
                [self.judge(expr.body, scope, deeper), self.judge(expr.orelse, scope, deeper)]
            )
        if isinstance(expr, ast.NamedExpr):
            return self.judge(expr.value, scope, deeper)
        if isinstance(expr, ast.Attribute):
            return self._attribute(expr, scope, deeper)
        if isinstance(expr, ast.UnaryOp):
            return self.judge(expr.operand, scope, deeper)
        return VALUE

    def is_text(self, expr: ast.expr, scope: Scope, depth: int = 0) -> bool:  # noqa: PLR0911 - one return per kind of expression
        """Whether ``expr`` is a string (a literal, an f-string, or a name or sum of them)."""
        if depth > MAX_DEPTH:
            return False
        if isinstance(expr, ast.Constant):
            return isinstance(expr.value, str | bytes)
        if isinstance(expr, ast.JoinedStr):
            return True
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add | ast.Mod | ast.Mult):
            return self.is_text(expr.left, scope, depth + 1) or (
                isinstance(expr.op, ast.Add) and self.is_text(expr.right, scope, depth + 1)
            )
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            return expr.func.attr in {"format", "join", *STR_METHODS}
        if isinstance(expr, ast.Name):
            values = self._values(expr.id, scope)
            return bool(values) and all(
                self.is_text(v, scope, depth + 1) for v in values if not _refers_to(v, expr.id)
            )
        return False

    def _values(self, name: str, scope: Scope) -> list[ast.expr]:
        current: Scope | None = scope
        while current is not None:
            if name in current.params:
                return []
            if name in current.assigned:
                return current.assigned[name]
            if name in current.constants:
                return []
            current = current.parent
        return []

    def _name(self, name: str, scope: Scope, depth: int) -> Judgement:
        current: Scope | None = scope
        while current is not None:
            if name in current.constants:
                return current.constants[name]
            if name in current.params:
                return VALUE
            if name in current.assigned:
                cacheable = current is self.module and not current.constants
                if cacheable and name in self._module_names:
                    return self._module_names[name]
                # Judge each assignment; a self-reference (``q += x``) counts as constant for
                # its own part, so the other operand decides.
                current.constants[name] = CONSTANT
                try:
                    verdicts = [self.judge(v, current, depth) for v in current.assigned[name]]
                finally:
                    del current.constants[name]
                verdict = _worst(verdicts)
                if cacheable and depth <= 1:
                    self._module_names[name] = verdict
                return verdict
            current = current.parent
        if name in {"True", "False", "None"}:
            return CONSTANT
        judged = self.external(name) if self.external is not None else None
        return judged or VALUE

    def _attribute(self, expr: ast.Attribute, scope: Scope, depth: int) -> Judgement:
        owner = dotted_name(expr.value)
        cls = scope.cls if owner in {"self", "cls"} else owner
        table = self.class_constants.get(cls or "")
        if table is None or expr.attr not in table:
            return VALUE
        if owner == "self" and self._assigned_on_self(cls or "", expr.attr):
            return VALUE
        class_scope = Scope(table, set(), cls, self.module)
        return _worst([self.judge(v, class_scope, depth) for v in table[expr.attr]])

    def _assigned_on_self(self, cls: str, attr: str) -> bool:
        for (owner, _), method in self.methods.items():
            if owner != cls:
                continue
            for node in walk_function(method):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and node.attr == attr
                ):
                    return True
        return False

    def _binop(self, expr: ast.BinOp, scope: Scope, depth: int) -> Judgement:  # noqa: PLR0911 - one return per operator case
        left = self.judge(expr.left, scope, depth)
        right = self.judge(expr.right, scope, depth)
        if isinstance(expr.op, ast.Mult) and "constant" in (left.kind, right.kind):
            # "?, " * n and ["?"] * len(ids): repeats a constant, whatever the count.
            other = right if left.kind == "constant" else left
            return other if other.built else CONSTANT
        if left.built:
            return left
        if isinstance(expr.op, ast.Mod):
            if right.built:
                return right
            if right.kind == "value" and self.is_text(expr.left, scope, depth):
                return Judgement("built", "% formatting")
            return _worst([left, right])
        if right.built:
            return right
        if (
            isinstance(expr.op, ast.Add)
            and "value" in (left.kind, right.kind)
            and (self.is_text(expr.left, scope, depth) or self.is_text(expr.right, scope, depth))
        ):
            return Judgement("built", "string concatenation")
        return _worst([left, right])

    def _call(  # noqa: C901, PLR0911 - one return per way a call builds text
        self, call: ast.Call, scope: Scope, depth: int
    ) -> Judgement:
        arguments = [*call.args, *(k.value for k in call.keywords)]
        judged = [self.judge(a, scope, depth) for a in arguments]
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in {"format", "join", *STR_METHODS}:
            receiver = self.judge(func.value, scope, depth)
            if receiver.built:
                return receiver
            if receiver.kind != "constant":
                return VALUE
            worst = _worst(judged)
            if worst.kind == "constant":
                return CONSTANT
            if worst.built:
                return worst
            if func.attr in {"format", "format_map"}:
                template = dotted_name(func.value)
                of = f" of the template {template}" if template else ""
                return Judgement("built", f".{func.attr}(){of}")
            if func.attr == "join":
                return Judgement("built", "str.join()")
            return VALUE
        name = dotted_name(func)
        if name in PURE_CALLS:
            worst = _worst(judged)
            return worst if worst.kind != "value" else VALUE
        if name in PASS_THROUGH or name.rsplit(".", 1)[-1] in {"dedent", "cleandoc"}:
            return _worst(judged) if judged else CONSTANT
        target = self._function(func, scope)
        returned = self.returns(target) if target is not None else None
        if returned is None and isinstance(func, ast.Name) and self.external_returns is not None:
            returned = self.external_returns(func.id)
        if returned is None:
            return VALUE
        if returned.built:
            return Judgement(
                "built", f"{returned.how} in the return value of {dotted_name(func)}()"
            )
        return returned

    def _function(self, func: ast.expr, scope: Scope) -> FunctionNode | None:
        if isinstance(func, ast.Name):
            return self.functions.get(func.id)
        if isinstance(func, ast.Attribute):
            owner = dotted_name(func.value)
            cls = scope.cls if owner in {"self", "cls"} else owner
            return self.methods.get((cls or "", func.attr))
        return None

    def returns(self, node: FunctionNode) -> Judgement:
        """What a function of this module returns (value while it is being judged: recursion)."""
        key = id(node)
        if key in self._returns:
            return self._returns[key]
        if key in self._busy:
            return VALUE
        self._busy.add(key)
        scope = self.scope_of(node)
        values = [
            child.value
            for child in walk_function(node)
            if isinstance(child, ast.Return) and child.value is not None
        ]
        verdict = _worst([self.judge(v, scope) for v in values]) if values else CONSTANT
        self._busy.discard(key)
        self._returns[key] = verdict
        return verdict


def _refers_to(expr: ast.expr, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(expr))
