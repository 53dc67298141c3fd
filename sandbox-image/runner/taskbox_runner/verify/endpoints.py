"""Static facts about a project's code shared by several checks: routes, models, type aliases.

All of it reads source with ``ast``; nothing here imports the project.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from taskbox_runner.verify.workspace import Workspace

HTTP_DECORATORS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "trace", "api_route"}
)
#: Bases that make a class a pydantic model (pydantic v2, and SQLModel which builds on it).
MODEL_ROOTS = frozenset({"BaseModel", "RootModel", "SQLModel", "GenericModel"})

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_TYPE_ALIAS: type[ast.stmt] | None = getattr(ast, "TypeAlias", None)
#: Aliases and ``Annotated`` layers unwrapped before giving up (guards alias cycles).
MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class Endpoint:
    """A function decorated as a FastAPI route."""

    rel: str
    node: FunctionNode
    method: str


def imports_module(tree: ast.Module, name: str) -> bool:
    """Whether the module imports ``name`` or something under it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name == name or a.name.startswith(f"{name}.") for a in node.names
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (node.module == name or node.module.startswith(f"{name}."))
        ):
            return True
    return False


def fastapi_endpoints(rel: str, tree: ast.Module) -> list[Endpoint]:
    """Route functions (``@app.get(...)``, ``@router.post(...)``) in a module importing fastapi."""
    if not imports_module(tree, "fastapi"):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr in HTTP_DECORATORS
            ):
                found.append(Endpoint(rel, node, decorator.func.attr.upper()))
                break
    return found


def dotted_name(node: ast.expr) -> str:
    """``a.b.c`` for a Name/Attribute chain; '' for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def last_name(node: ast.expr) -> str:
    """The last part of a dotted name (``pydantic.BaseModel`` -> ``BaseModel``)."""
    return dotted_name(node).rsplit(".", 1)[-1]


@dataclass
class ProjectTypes:
    """Class names that are pydantic models, every class name, and module-level type aliases."""

    models: set[str]
    classes: set[str]
    aliases: dict[str, ast.expr]

    @classmethod
    def scan(cls, space: Workspace) -> ProjectTypes:
        """Read every non-test module of the repository once."""
        bases: dict[str, set[str]] = {}
        aliases: dict[str, ast.expr] = {}
        for _, tree in space.trees(space.source_python):
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    bases.setdefault(node.name, set()).update(last_name(b) for b in node.bases)
                else:
                    aliases.update(_alias(node))
        models: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, parents in bases.items():
                if name not in models and parents & (MODEL_ROOTS | models):
                    models.add(name)
                    changed = True
        return cls(models, set(bases), aliases)

    def unwrap(
        self, annotation: ast.expr | None, depth: int = 0
    ) -> tuple[ast.expr | None, list[ast.expr]]:
        """Strip ``Annotated[...]`` and aliases: ``(the type, the metadata expressions)``."""
        metadata: list[ast.expr] = []
        while annotation is not None and depth < MAX_ALIAS_DEPTH:
            depth += 1
            if isinstance(annotation, ast.Name) and annotation.id in self.aliases:
                annotation = self.aliases[annotation.id]
                continue
            if (
                isinstance(annotation, ast.Subscript)
                and last_name(annotation.value) == "Annotated"
                and isinstance(annotation.slice, ast.Tuple)
                and annotation.slice.elts
            ):
                metadata += annotation.slice.elts[1:]
                annotation = annotation.slice.elts[0]
                continue
            break
        return annotation, metadata

    def leaf_types(self, annotation: ast.expr | None) -> Iterator[str]:
        """Names of the types inside unions, Optional and containers (``list[A] | None`` -> A, list)."""
        annotation, _ = self.unwrap(annotation)
        if annotation is None:
            return
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            yield from self.leaf_types(annotation.left)
            yield from self.leaf_types(annotation.right)
        elif isinstance(annotation, ast.Subscript):
            outer = last_name(annotation.value)
            inner = annotation.slice
            items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            if outer not in {"Optional", "Union"}:
                yield outer
            for item in items:
                yield from self.leaf_types(item)
        elif isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                parsed = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return
            yield from self.leaf_types(parsed)
        elif isinstance(annotation, ast.Constant) and annotation.value is None:
            yield "None"
        else:
            yield last_name(annotation)


def _alias(node: ast.stmt) -> dict[str, ast.expr]:
    """``X = Annotated[...]``, ``X: TypeAlias = ...`` or ``type X = ...`` as ``{X: value}``."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        if isinstance(target, ast.Name) and _looks_like_type(node.value):
            return {target.id: node.value}
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        if last_name(node.annotation) == "TypeAlias" and node.value is not None:
            return {node.target.id: node.value}
    elif _TYPE_ALIAS is not None and isinstance(node, _TYPE_ALIAS):
        # ``type X = ...`` (3.12+); absent from the 3.11 ast module.
        name, value = getattr(node, "name", None), getattr(node, "value", None)
        if isinstance(name, ast.Name) and isinstance(value, ast.expr):
            return {name.id: value}
    return {}


#: Generic types whose subscription at module level makes a type alias (``Body = dict[str, Any]``).
TYPE_CONSTRUCTORS = frozenset(
    {
        "Annotated", "Optional", "Union", "Literal", "dict", "Dict", "list", "List", "Mapping",
        "MutableMapping", "Sequence", "MutableSequence", "Iterable", "set", "Set", "frozenset",
        "FrozenSet", "tuple", "Tuple", "DefaultDict", "OrderedDict", "type", "Type",
    }
)  # fmt: skip
#: Bare names that are already a type an alias can stand for (``Payload = dict``).
BARE_TYPES = frozenset({"dict", "Dict", "Any", "object", "Mapping", "MutableMapping", "Json"})


def _looks_like_type(value: ast.expr) -> bool:
    if isinstance(value, ast.Subscript):
        return last_name(value.value) in TYPE_CONSTRUCTORS
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr):
        sides = (value.left, value.right)
        return any(_looks_like_type(s) for s in sides) and all(
            _looks_like_type(s) or isinstance(s, ast.Name | ast.Attribute | ast.Constant)
            for s in sides
        )
    if isinstance(value, ast.Name | ast.Attribute):
        return last_name(value) in BARE_TYPES
    return False


def call_name(node: ast.Call) -> str:
    """The called name's last part (``db.session.execute(...)`` -> ``execute``)."""
    return last_name(node.func)


def walk_function(node: FunctionNode) -> Iterator[ast.AST]:
    """Nodes in a function body, not descending into nested functions or classes."""
    stack: list[ast.AST] = list(node.body)
    while stack:
        current = stack.pop()
        yield current
        stack.extend(
            child
            for child in ast.iter_child_nodes(current)
            if not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
            )
        )
