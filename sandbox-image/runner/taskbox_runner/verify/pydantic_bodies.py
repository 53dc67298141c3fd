"""Constraint 7: request bodies are validated by pydantic v2 models (or DRF serializers).

FastAPI: every parameter FastAPI would read from the body (a non-scalar
annotation, or ``Body()``) must be a pydantic model (or a container of models),
its type resolved through aliases (``Body = dict[str, Any]``, ``X: TypeAlias``,
``type X = ...``); ``dict``/``Any``/untyped bodies fail, and so does reading the
request by hand (``request.json()``/``body()``/``form()``/``stream()``) in the
endpoint or in any owned function it reaches (:mod:`call_graph`), with the call
chain as evidence.
Django: a view that reads ``request.data``/``POST``/``body`` must go through a
DRF serializer (or a pydantic model). Flask: a view that reads ``request.json``/
``get_json()``/``form``/``data`` must validate it with a pydantic model. In every
framework, pydantic v1 APIs (``pydantic.v1``, ``validator``, ``root_validator``)
fail: the brief asks for v2.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from taskbox_runner.verify.call_graph import CallGraph, Edge, FunctionRef, chain_text
from taskbox_runner.verify.endpoints import (
    FunctionNode,
    ProjectTypes,
    call_name,
    dotted_name,
    fastapi_endpoints,
    last_name,
    walk_function,
)
from taskbox_runner.verify.models import CheckOutcome, Finding, Framework
from taskbox_runner.verify.statements import one_per_statement

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

#: FastAPI parameter sources that are not a JSON body (form and file bodies are validated too).
NON_BODY_MARKERS = frozenset(
    {"Depends", "Security", "Query", "Path", "Header", "Cookie", "Form", "File"}
)
SPECIAL_TYPES = frozenset(
    {
        "Request",
        "WebSocket",
        "Response",
        "BackgroundTasks",
        "HTTPConnection",
        "SecurityScopes",
        "UploadFile",
        "Session",
        "AsyncSession",
    }
)
SCALAR_TYPES = frozenset(
    {
        "str", "int", "float", "bool", "bytes", "UUID", "date", "datetime", "time", "timedelta",
        "Decimal", "EmailStr", "HttpUrl", "AnyUrl", "None", "Literal",
    }
)  # fmt: skip
UNVALIDATED_TYPES = frozenset(
    {"dict", "Dict", "Mapping", "MutableMapping", "Any", "object", "Json"}
)
CONTAINERS = frozenset({"list", "List", "Sequence", "set", "Set", "tuple", "Tuple", "frozenset"})
RAW_BODY_READS = frozenset({"json", "body", "form", "stream"})
REQUEST_TYPES = frozenset({"Request", "HTTPConnection", "StarletteRequest"})
V1_NAMES = frozenset({"validator", "root_validator"})


def _marker(expr: ast.expr | None) -> str:
    return call_name(expr) if isinstance(expr, ast.Call) else ""


def is_body_param(arg: ast.arg, default: ast.expr | None, types: ProjectTypes) -> bool:
    """Whether FastAPI reads this parameter from the request body."""
    annotation, metadata = types.unwrap(arg.annotation)
    markers = {_marker(m) for m in [*metadata, default]} - {""}
    leaves = set(types.leaf_types(annotation)) if annotation is not None else set()
    if markers & NON_BODY_MARKERS or leaves & SPECIAL_TYPES:
        return False
    if "Body" in markers:
        return True
    return annotation is not None and not (leaves - CONTAINERS) <= SCALAR_TYPES


def _params(node: FunctionNode) -> list[tuple[ast.arg, ast.expr | None]]:
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    positional = len(node.args.posonlyargs) + len(node.args.args)
    defaults: list[ast.expr | None] = [None] * (positional - len(node.args.defaults))
    defaults += list(node.args.defaults) + list(node.args.kw_defaults)
    return [(a, d) for a, d in zip(args, defaults, strict=True) if a.arg not in {"self", "cls"}]


def _body_problem(arg: ast.arg, default: ast.expr | None, types: ProjectTypes) -> str | None:
    """Why a parameter FastAPI would read from the JSON body is not validated by a model, if it is not."""
    annotation, metadata = types.unwrap(arg.annotation)
    markers = {_marker(m) for m in [*metadata, default]} - {""}
    leaves = set(types.leaf_types(annotation)) if annotation is not None else set()
    if markers & NON_BODY_MARKERS or leaves & SPECIAL_TYPES:
        return None
    explicit_body = "Body" in markers
    if annotation is None:
        return "has no type; annotate it with a pydantic model" if explicit_body else None
    kinds = leaves - CONTAINERS
    if kinds & UNVALIDATED_TYPES:
        written = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        resolved = ast.unparse(annotation)
        shown = resolved if written in {"", resolved} else f"{written} (resolves to {resolved})"
        return f"is {shown}, not a pydantic model"
    if not explicit_body and kinds <= SCALAR_TYPES:
        return None  # a query or path parameter
    non_models = sorted(k for k in kinds if k in types.classes and k not in types.models)
    if non_models:
        return f"uses {', '.join(non_models)}, which is not a pydantic BaseModel"
    return None


def request_names(node: FunctionNode, types: ProjectTypes) -> set[str]:
    """Parameters that hold the request object (annotated ``Request``/``HTTPConnection``)."""
    return {
        arg.arg for arg, _ in _params(node) if set(types.leaf_types(arg.annotation)) & REQUEST_TYPES
    }


def raw_reads(node: FunctionNode, names: set[str]) -> list[ast.Call]:
    """Calls ``<request>.json()``/``body()``/``form()``/``stream()`` on one of ``names``."""
    return [
        child
        for child in walk_function(node)
        if isinstance(child, ast.Call)
        and isinstance(child.func, ast.Attribute)
        and child.func.attr in RAW_BODY_READS
        and dotted_name(child.func.value) in names
    ]


def body_problems(endpoint_rel: str, node: FunctionNode, types: ProjectTypes) -> list[Finding]:
    """Body parameters of one FastAPI endpoint that are not pydantic models, and raw body reads."""
    findings = []
    for arg, default in _params(node):
        problem = _body_problem(arg, default, types)
        if problem:
            findings.append(
                Finding(
                    endpoint_rel,
                    arg.lineno,
                    "TB0701",
                    f"body parameter '{arg.arg}' of {node.name}() {problem}",
                )
            )
    findings += [
        Finding(
            endpoint_rel,
            child.lineno,
            "TB0702",
            f"{node.name}() reads request.{child.func.attr}() by hand; declare a pydantic model parameter instead",
        )
        for child in raw_reads(node, request_names(node, types))
        if isinstance(child.func, ast.Attribute)
    ]
    return findings


def _passed_request(edge: Edge, caller_names: set[str], types: ProjectTypes) -> set[str]:
    """Names the callee holds the request under: its own Request parameters, plus those it is
    handed the caller's request in (``parse(request)``, ``parse(req=request)``)."""
    callee = edge.callee.node
    names = request_names(callee, types) | {
        a.arg for a, _ in _params(callee) if a.arg in {"request", "req"} and a.annotation is None
    }
    params = [a.arg for a in callee.args.posonlyargs + callee.args.args]
    if edge.callee.cls is not None and params and params[0] in {"self", "cls"}:
        params = params[1:]
    for index, value in enumerate(edge.call.args):
        if dotted_name(value) in caller_names and index < len(params):
            names.add(params[index])
    names.update(
        k.arg for k in edge.call.keywords if k.arg and dotted_name(k.value) in caller_names
    )
    return names


def helper_reads(
    root: FunctionRef, graph: CallGraph, types: ProjectTypes, seen: frozenset[str] = frozenset()
) -> list[Finding]:
    """Raw request reads in owned functions an endpoint reaches, located at the endpoint's call.

    Dependencies (``Depends(parse)`` in a default or in ``Annotated`` metadata) are followed
    too, and theirs: FastAPI calls them for the endpoint with the same request.
    """
    findings = []
    seen = seen | {f"{root.rel}:{root.qualname}"}
    for dependency, line in dependencies(root, graph, types):
        if f"{dependency.rel}:{dependency.qualname}" in seen:
            continue
        via = f"{root.node.name}() via Depends({dependency.node.name})"
        for read in raw_reads(dependency.node, request_names(dependency.node, types)):
            what = f"request.{call_name(read)}"
            findings.append(
                Finding(
                    root.rel,
                    line,
                    "TB0702",
                    f"{via} reads {what}() by hand ({dependency.rel}:{read.lineno}); "
                    "declare a pydantic model parameter instead",
                )
            )
        findings += [
            Finding(root.rel, line, f.rule, f"{via}: {f.message}")
            for f in helper_reads(dependency, graph, types, seen)
        ]
    for function, chain in graph.reachable(root, lambda _: True):
        if not chain:
            continue
        names = request_names(root.node, types)
        for edge in chain:
            names = _passed_request(edge, names, types)
        for read in raw_reads(function.node, names):
            what = f"request.{call_name(read)}"
            findings.append(
                Finding(
                    root.rel,
                    chain[0].call.lineno,
                    "TB0702",
                    f"{root.node.name}() reads {what}() by hand through "
                    f"{chain_text(root, chain, what)} ({function.rel}:{read.lineno}); "
                    "declare a pydantic model parameter instead",
                )
            )
    return findings


def dependencies(
    root: FunctionRef, graph: CallGraph, types: ProjectTypes
) -> list[tuple[FunctionRef, int]]:
    """Owned functions named in ``Depends(...)``/``Security(...)`` of the endpoint's parameters."""
    found = []
    for arg, default in _params(root.node):
        _, metadata = types.unwrap(arg.annotation)
        for marker in [*metadata, default]:
            if (
                isinstance(marker, ast.Call)
                and call_name(marker) in {"Depends", "Security"}
                and marker.args
            ):
                probe = ast.Call(func=marker.args[0], args=[], keywords=[])
                target = graph.resolve(root, probe)
                if target is not None and target is not root:
                    found.append((target, arg.lineno))
    return found


def pydantic_v1_usage(rel: str, tree: ast.Module) -> list[Finding]:
    """Imports of pydantic v1 APIs."""
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pydantic"):
            if node.module.startswith("pydantic.v1"):
                findings.append(
                    Finding(
                        rel, node.lineno, "TB0703", "imports pydantic.v1; use pydantic v2 models"
                    )
                )
            elif node.module == "pydantic":
                old = sorted(a.name for a in node.names if a.name in V1_NAMES)
                if old:
                    findings.append(
                        Finding(
                            rel,
                            node.lineno,
                            "TB0703",
                            f"imports pydantic v1 {', '.join(old)}; use field_validator/model_validator",
                        )
                    )
        elif isinstance(node, ast.Import) and any(
            a.name.startswith("pydantic.v1") for a in node.names
        ):
            findings.append(
                Finding(rel, node.lineno, "TB0703", "imports pydantic.v1; use pydantic v2 models")
            )
    return findings


def _reads_body(
    node: FunctionNode, attributes: frozenset[str], calls: frozenset[str]
) -> int | None:
    for child in walk_function(node):
        if isinstance(child, ast.Attribute) and child.attr in attributes:
            owner = dotted_name(child.value)
            if owner in {"request", "self.request"}:
                return child.lineno
        if isinstance(child, ast.Call) and call_name(child) in calls:
            owner = dotted_name(child.func.value) if isinstance(child.func, ast.Attribute) else ""
            if owner in {"request", "self.request"}:
                return child.lineno
    return None


def _validates(node: FunctionNode, types: ProjectTypes) -> bool:
    for decorator in node.decorator_list:
        if (
            last_name(decorator.func if isinstance(decorator, ast.Call) else decorator)
            == "validate"
        ):
            return True  # flask-pydantic
    for child in walk_function(node):
        if isinstance(child, ast.Call):
            name = call_name(child)
            if name.endswith("Serializer") or name in {
                "get_serializer",
                "model_validate",
                "model_validate_json",
                "validate_python",
            }:
                return True
            if name in types.models:
                return True
    return False


def web_view_problems(
    rel: str, tree: ast.Module, framework: Framework, types: ProjectTypes
) -> list[Finding]:
    """Django or Flask views that read the body without a serializer or pydantic model."""
    if framework == "django":
        attributes, calls, how = (
            frozenset({"data", "POST", "body"}),
            frozenset[str](),
            "a DRF serializer",
        )
    else:
        attributes, calls, how = (
            frozenset({"json", "form", "data", "values"}),
            frozenset({"get_json"}),
            "a pydantic model",
        )
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            line = _reads_body(node, attributes, calls)
            if line is not None and not _validates(node, types):
                findings.append(
                    Finding(
                        rel, line, "TB0704", f"{node.name}() reads the request body without {how}"
                    )
                )
    return findings


def check_request_validation(
    space: Workspace, framework: Framework, types: ProjectTypes
) -> CheckOutcome:
    """Constraint 7 over the owned, non-test code."""
    findings: list[Finding] = []
    endpoints = 0
    bodies = 0
    files = space.owned_source
    graph = CallGraph.build(space, files)
    for rel, tree in space.trees(files):
        findings += pydantic_v1_usage(rel, tree)
        routes = fastapi_endpoints(rel, tree)
        endpoints += len(routes)
        for route in routes:
            bodies += sum(is_body_param(a, d, types) for a, d in _params(route.node))
            findings += body_problems(rel, route.node, types)
            findings += helper_reads(graph.function(rel, route.node), graph, types)
        if framework in ("django", "flask"):
            findings += web_view_problems(rel, tree, framework, types)
    findings = one_per_statement(space, findings)
    if findings:
        verdict = f"{len(findings)} request bod(ies) not validated by pydantic v2 / DRF"
    elif framework in ("django", "flask"):
        verdict = f"every {framework} view that reads a body validates it"
    elif not endpoints:
        verdict = f"no FastAPI endpoint in {len(files)} owned source file(s); no pydantic v1 API"
    elif not bodies:
        verdict = (
            f"no endpoint takes a body ({endpoints} FastAPI endpoint(s) checked); none reads the "
            "request by hand, owned helpers followed"
        )
    else:
        verdict = (
            f"{bodies} body parameter(s) of {endpoints} FastAPI endpoint(s) are pydantic models; "
            "none reads the request by hand, owned helpers followed"
        )
    return CheckOutcome(7, verdict, findings)
