"""Constraint 7: request bodies are validated by pydantic v2 models (or DRF serializers).

FastAPI: every parameter FastAPI would read from the body (a non-scalar
annotation, or ``Body()``) must be a pydantic model (or a container of models);
``dict``/``Any``/untyped bodies and reading ``await request.json()`` by hand fail.
Django: a view that reads ``request.data``/``POST``/``body`` must go through a
DRF serializer (or a pydantic model). Flask: a view that reads ``request.json``/
``get_json()``/``form``/``data`` must validate it with a pydantic model. In every
framework, pydantic v1 APIs (``pydantic.v1``, ``validator``, ``root_validator``)
fail: the brief asks for v2.
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
    last_name,
    walk_function,
)
from taskbox_runner.verify.models import CheckOutcome, Finding, Framework

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
V1_NAMES = frozenset({"validator", "root_validator"})


def _marker(expr: ast.expr | None) -> str:
    return call_name(expr) if isinstance(expr, ast.Call) else ""


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
        return f"is {ast.unparse(annotation)}, not a pydantic model"
    if not explicit_body and kinds <= SCALAR_TYPES:
        return None  # a query or path parameter
    non_models = sorted(k for k in kinds if k in types.classes and k not in types.models)
    if non_models:
        return f"uses {', '.join(non_models)}, which is not a pydantic BaseModel"
    return None


def body_problems(endpoint_rel: str, node: FunctionNode, types: ProjectTypes) -> list[Finding]:
    """Body parameters of one FastAPI endpoint that are not pydantic models, and raw body reads."""
    findings = []
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    positional = len(node.args.posonlyargs) + len(node.args.args)
    defaults: list[ast.expr | None] = [None] * (positional - len(node.args.defaults))
    defaults += list(node.args.defaults) + list(node.args.kw_defaults)
    request_names = set()
    for arg, default in zip(args, defaults, strict=True):
        if arg.arg in {"self", "cls"}:
            continue
        if set(types.leaf_types(arg.annotation)) & {"Request", "HTTPConnection"}:
            request_names.add(arg.arg)
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
        for child in walk_function(node)
        if isinstance(child, ast.Call)
        and isinstance(child.func, ast.Attribute)
        and child.func.attr in RAW_BODY_READS
        and dotted_name(child.func.value) in request_names
    ]
    return findings


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
    for rel, tree in space.trees(space.owned_source):
        findings += pydantic_v1_usage(rel, tree)
        routes = fastapi_endpoints(rel, tree)
        endpoints += len(routes)
        for route in routes:
            findings += body_problems(rel, route.node, types)
        if framework in ("django", "flask"):
            findings += web_view_problems(rel, tree, framework, types)
    if findings:
        verdict = f"{len(findings)} request bod(ies) not validated by pydantic v2 / DRF"
    elif framework in ("django", "flask"):
        verdict = f"every {framework} view that reads a body validates it"
    else:
        verdict = f"every body of {endpoints} FastAPI endpoint(s) is a pydantic model"
    return CheckOutcome(7, verdict, findings)
