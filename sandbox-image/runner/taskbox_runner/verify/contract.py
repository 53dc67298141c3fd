"""Constraint 6: the FastAPI app serves what the task's OpenAPI contract says.

The app is found statically (a module-level ``FastAPI(...)``), imported in a
subprocess that writes ``app.openapi()`` to a file, and compared operation by
operation with the contract: operations missing from the app or extra in it,
then per operation the success status codes, the query parameters, and the
JSON request and response schemas (types, properties, required, items, enums;
$refs resolved; a few levels deep). Path parameter names do not matter, the
server URL's path may prefix the contract's paths, and FastAPI's automatic 422
is not a difference.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from taskbox_runner.verify import openapi_dump
from taskbox_runner.verify.endpoints import imports_module, last_name
from taskbox_runner.verify.models import CheckOutcome, Finding, Framework
from taskbox_runner.verify.process import harness_env, run_bounded

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskbox_runner.verify.workspace import Workspace

logger = logging.getLogger(__name__)

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_SCHEMA_DEPTH = 6
DUMP_TIMEOUT_SECONDS = 120.0
_PARAM = re.compile(r"\{[^}]*\}")

Shape = dict[str, Any]


@dataclass(frozen=True)
class AppLocation:
    """Where the FastAPI instance is defined."""

    rel: str
    line: int
    attr: str

    @property
    def target(self) -> str:
        """``module:attr`` for the dump script (``src/`` layouts import without the prefix)."""
        module = self.rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        return f"{module.removeprefix('src.')}:{self.attr}"


def find_fastapi_app(space: Workspace) -> AppLocation | None:
    """The module-level FastAPI instance, preferring ``app`` in ``app/main.py``-like modules."""
    ranked: list[tuple[tuple[object, ...], AppLocation]] = []
    for rel, tree in space.trees(space.source_python):
        for node in tree.body:
            target, value = _single_assignment(node)
            if target is None or not isinstance(value, ast.Call):
                continue
            direct = last_name(value.func) == "FastAPI"
            factory = (
                target == "app"
                and imports_module(tree, "fastapi")
                and Path(rel).name in {"main.py", "app.py", "asgi.py", "__init__.py"}
            )
            if direct or factory:
                key = (
                    not direct,
                    target != "app",
                    Path(rel).name != "main.py",
                    not space.is_owned(rel),
                    rel.count("/"),
                    rel,
                )
                ranked.append((key, AppLocation(rel, node.lineno, target)))
    return min(ranked, key=lambda item: item[0])[1] if ranked else None


def find_flask_app(space: Workspace) -> AppLocation | None:
    """A module-level ``Flask(...)`` instance, else a ``create_app`` factory (called as ``create_app()``)."""
    ranked: list[tuple[tuple[object, ...], AppLocation]] = []
    for rel, tree in space.trees(space.source_python):
        if not imports_module(tree, "flask"):
            continue
        for node in tree.body:
            target, value = _single_assignment(node)
            if (
                target is not None
                and isinstance(value, ast.Call)
                and last_name(value.func) == "Flask"
            ):
                ranked.append(
                    ((0, not space.is_owned(rel), rel), AppLocation(rel, node.lineno, target))
                )
            elif isinstance(node, ast.FunctionDef) and node.name in {"create_app", "make_app"}:
                ranked.append(
                    (
                        (1, not space.is_owned(rel), rel),
                        AppLocation(rel, node.lineno, f"{node.name}()"),
                    )
                )
    return min(ranked, key=lambda item: item[0])[1] if ranked else None


def _single_assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def dump_openapi(
    space: Workspace, app: AppLocation, scratch_dir: Path, kind: str = "fastapi"
) -> tuple[dict[str, Any] | None, str]:
    """Import the app in a subprocess; ``(the dump, '')`` or ``(None, why not)``."""
    output = scratch_dir / "served-openapi.json"
    output.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-P",
        str(Path(openapi_dump.__file__)),
        str(space.workdir),
        app.target,
        str(output),
        kind,
    ]
    done = run_bounded(
        argv,
        cwd=space.workdir,
        env=harness_env(),
        timeout=DUMP_TIMEOUT_SECONDS,
        output_dir=scratch_dir,
        label="openapi-dump",
    )
    if done.timed_out:
        return None, f"importing {app.target} took longer than {DUMP_TIMEOUT_SECONDS:.0f} s"
    if done.returncode != 0:
        return None, f"importing {app.target} failed: {done.last_line()}"
    try:
        data = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"importing {app.target} produced no OpenAPI document"
    return data, ""


def load_contract(path: Path) -> dict[str, Any]:
    """The contract as data: JSON, else YAML. Raises ``ValueError`` when it is neither."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"the contract is neither JSON nor YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("paths", {}), dict):
        # A malformed file, not a wrong argument: ValueError, as for any other unreadable contract.
        raise ValueError(  # noqa: TRY004
            "the contract is not an OpenAPI document (no 'paths' object)"
        )
    return data


# --------------------------------------------------------------------------- schema shapes


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def schema_shape(schema: Any, doc: dict[str, Any], depth: int = 0) -> Shape:
    """What two schemas must agree on: types (null dropped), properties, required, items, enum."""
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return {}
    if isinstance(schema.get("$ref"), str):
        return schema_shape(_resolve(doc, schema["$ref"]), doc, depth + 1)
    union = _union_shape(schema, doc, depth)
    if union is not None:
        return union
    if schema.get("allOf"):
        schema = _merge_all_of(schema, doc)
    shape: Shape = {}
    types = schema.get("type")
    type_set = {types} if isinstance(types, str) else set(types or [])
    type_set.discard("null")
    if "properties" in schema and not type_set:
        type_set = {"object"}
    if type_set:
        shape["type"] = tuple(sorted(type_set))
    if isinstance(schema.get("properties"), dict):
        shape["properties"] = {
            str(name): schema_shape(value, doc, depth + 1)
            for name, value in schema["properties"].items()
        }
        shape["required"] = tuple(sorted(str(r) for r in schema.get("required", [])))
    if "items" in schema:
        shape["items"] = schema_shape(schema["items"], doc, depth + 1)
    if isinstance(schema.get("enum"), list):
        shape["enum"] = tuple(sorted(str(v) for v in schema["enum"]))
    return shape


def _union_shape(schema: dict[str, Any], doc: dict[str, Any], depth: int) -> Shape | None:
    """``anyOf``/``oneOf``: one non-null variant is that variant (optional fields); more stay a union."""
    for key in ("anyOf", "oneOf"):
        variants = [v for v in schema.get(key, []) if not _is_null(v)]
        if len(variants) == 1:
            return schema_shape(variants[0], doc, depth + 1)
        if variants:
            return {"variants": sorted(_summary(schema_shape(v, doc, depth + 1)) for v in variants)}
    return None


def _merge_all_of(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` parts folded into one object schema (properties and required unioned)."""
    merged: dict[str, Any] = {"properties": {}, "required": []}
    for part in schema["allOf"]:
        resolved = (
            _resolve(doc, part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
        )
        if isinstance(resolved, dict):
            merged["properties"].update(resolved.get("properties", {}))
            merged["required"] += resolved.get("required", [])
            if resolved.get("type"):
                merged.setdefault("type", resolved["type"])
    return {**merged, **{k: v for k, v in schema.items() if k != "allOf"}}


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _summary(shape: Shape) -> str:
    if "variants" in shape:
        return " | ".join(shape["variants"])
    kind = "/".join(shape.get("type", ())) or "any"
    if kind == "array" and "items" in shape:
        return f"array of {_summary(shape['items'])}"
    return kind


def shape_differences(contract: Shape, served: Shape, where: str) -> list[str]:
    """Human-readable differences between a contract schema shape and the app's."""
    if not contract:
        return []
    if not served:
        return [f"{where}: the app declares no schema (contract: {_summary(contract)})"]
    if "variants" in contract or "variants" in served:
        if _summary(contract) == _summary(served):
            return []
        return [f"{where}: {_summary(served)} in the app, {_summary(contract)} in the contract"]
    if contract.get("type") and served.get("type") and contract["type"] != served["type"]:
        return [
            f"{where}: type {_summary(served)} in the app, {_summary(contract)} in the contract"
        ]
    out = []
    if "properties" in contract and "properties" in served:
        out += _property_differences(contract, served, where)
    if "items" in contract and "items" in served:
        out += shape_differences(contract["items"], served["items"], f"{where}[]")
    if "enum" in contract and "enum" in served and contract["enum"] != served["enum"]:
        out.append(
            f"{where}: enum {list(served['enum'])} in the app, {list(contract['enum'])} in the contract"
        )
    return out


def _property_differences(contract: Shape, served: Shape, where: str) -> list[str]:
    c_props, s_props = contract["properties"], served["properties"]
    out = [
        f"{where}: property '{n}' is missing in the app"
        for n in sorted(set(c_props) - set(s_props))
    ]
    out += [
        f"{where}: property '{n}' is not in the contract"
        for n in sorted(set(s_props) - set(c_props))
    ]
    for name in sorted(set(c_props) & set(s_props)):
        out += shape_differences(c_props[name], s_props[name], f"{where}.{name}")
    if contract["required"] != served["required"]:
        out.append(
            f"{where}: required {list(served['required'])} in the app, {list(contract['required'])} in the contract"
        )
    return out


# --------------------------------------------------------------------------- operations


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    ops = {}
    for path, item in (doc.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            if isinstance(item.get(method), dict):
                ops[method.upper(), _PARAM.sub("{}", str(path))] = (str(path), item[method])
    return ops


def _server_prefix(doc: dict[str, Any]) -> str:
    servers = doc.get("servers") or []
    if servers and isinstance(servers[0], dict):
        path = urlparse(str(servers[0].get("url", ""))).path.rstrip("/")
        return path if path.startswith("/") else ""
    return ""


def _success_codes(op: dict[str, Any]) -> list[str]:
    return sorted(str(code) for code in (op.get("responses") or {}) if str(code).startswith("2"))


def _json_schema(content: Any) -> Any:
    if not isinstance(content, dict):
        return None
    for media, body in content.items():
        if "json" in media and isinstance(body, dict):
            return body.get("schema")
    return None


def _query_params(op: dict[str, Any], doc: dict[str, Any]) -> dict[str, bool]:
    params = {}
    for param in op.get("parameters") or []:
        resolved = (
            _resolve(doc, param["$ref"]) if isinstance(param, dict) and "$ref" in param else param
        )
        if isinstance(resolved, dict) and resolved.get("in") == "query":
            params[str(resolved.get("name"))] = bool(resolved.get("required", False))
    return params


def operation_differences(
    c_op: dict[str, Any], contract: dict[str, Any], s_op: dict[str, Any], served: dict[str, Any]
) -> list[str]:
    """How one served operation differs from the contract's."""
    out = []
    c_codes, s_codes = _success_codes(c_op), _success_codes(s_op)
    if c_codes and c_codes != s_codes:
        out.append(
            f"success status {', '.join(s_codes) or 'none'} in the app, {', '.join(c_codes)} in the contract"
        )
    c_query, s_query = _query_params(c_op, contract), _query_params(s_op, served)
    out += [
        f"query parameter '{n}' is missing in the app" for n in sorted(set(c_query) - set(s_query))
    ]
    out += [
        f"query parameter '{n}' is not in the contract" for n in sorted(set(s_query) - set(c_query))
    ]
    out += [
        f"query parameter '{n}' is {'required' if s_query[n] else 'optional'} in the app, "
        f"{'required' if c_query[n] else 'optional'} in the contract"
        for n in sorted(set(c_query) & set(s_query))
        if c_query[n] != s_query[n]
    ]
    c_body, s_body = c_op.get("requestBody"), s_op.get("requestBody")
    if isinstance(c_body, dict) and "$ref" in c_body:
        c_body = _resolve(contract, c_body["$ref"])
    if c_body and not s_body:
        out.append("the app takes no request body; the contract defines one")
    elif s_body and not c_body:
        out.append("the app takes a request body the contract does not define")
    elif isinstance(c_body, dict) and isinstance(s_body, dict):
        out += shape_differences(
            schema_shape(_json_schema(c_body.get("content")), contract),
            schema_shape(_json_schema(s_body.get("content")), served),
            "request body",
        )
    for code in sorted(set(c_codes) & set(s_codes)):
        c_resp = c_op["responses"][code]
        if isinstance(c_resp, dict) and "$ref" in c_resp:
            c_resp = _resolve(contract, c_resp["$ref"])
        s_resp = s_op["responses"][code]
        out += shape_differences(
            schema_shape(_json_schema((c_resp or {}).get("content")), contract),
            schema_shape(_json_schema((s_resp or {}).get("content")), served),
            f"response {code}",
        )
    return out


def _contract_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip().split(":", 1)[0].strip().strip("'\"") if ":" in line else ""
        if key.startswith("/") and key not in lines:
            lines[key] = number
    return lines


def compare_contract(
    contract: dict[str, Any],
    served: dict[str, Any],
    routes: list[dict[str, Any]],
    *,
    contract_rel: str,
    contract_text: str,
    workdir: Path,
    app_location: AppLocation,
    is_owned: Callable[[str], bool],
    foreign: list[str],
    details: bool = True,
) -> list[Finding]:
    """Missing, extra and mismatched operations, each located in the contract or the app source.

    Extra operations served from files outside the owned paths go to ``foreign`` instead.
    """
    c_ops, s_ops = _operations(contract), _operations(served)
    prefix = _server_prefix(contract)
    lines = _contract_lines(contract_text)
    sources = {
        (r["method"], _PARAM.sub("{}", r["path"])): (
            _relative(r.get("file", ""), workdir),
            int(r.get("line", 1)),
        )
        for r in routes
    }
    findings: list[Finding] = []
    matched: set[tuple[str, str]] = set()
    for (method, norm), (path, c_op) in sorted(c_ops.items()):
        line = lines.get(path, 1)
        candidates = [norm, prefix + norm] if prefix else [norm]
        candidates += [c.rstrip("/") if c.endswith("/") else c + "/" for c in list(candidates)]
        key = next(((method, c) for c in candidates if (method, c) in s_ops), None)
        if key is None:
            findings.append(
                Finding(
                    contract_rel,
                    line,
                    "TB0601",
                    f"{method} {path} is in the contract but the app does not serve it",
                )
            )
            continue
        matched.add(key)
        s_path, s_op = s_ops[key]
        differences = operation_differences(c_op, contract, s_op, served) if details else []
        if key[1] not in (norm, prefix + norm):
            differences.insert(0, f"the app serves it as {s_path}")
        findings += [
            Finding(contract_rel, line, "TB0603", f"{method} {path}: {d}") for d in differences
        ]
    for key, (s_path, _) in sorted(s_ops.items()):
        if key not in matched:
            rel, line = sources.get(key, (app_location.rel, app_location.line))
            message = f"{key[0]} {s_path} is served by the app but not in the contract"
            # Routes in files the task does not own are not the task's to remove: noted, not failed.
            if is_owned(rel):
                findings.append(Finding(rel, line, "TB0602", message))
            else:
                foreign.append(f"{rel}:{line}: {message}")
    return findings


def _relative(file: str, workdir: Path) -> str:
    try:
        return Path(file).resolve().relative_to(workdir).as_posix()
    except (ValueError, OSError):
        return Path(file).name or "."


def check_contract(
    space: Workspace, framework: Framework, openapi_path: str | None, scratch_dir: Path
) -> CheckOutcome:
    """Constraint 6; not applicable (passed) when the task has no contract."""
    if not openapi_path:
        return CheckOutcome(6, "no contract")
    contract_file = space.workdir / openapi_path
    try:
        contract_text = contract_file.read_text(encoding="utf-8")
        contract = load_contract(contract_file)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return CheckOutcome(
            6,
            "the contract could not be read",
            [Finding(openapi_path, 1, "TB0605", str(exc))],
        )
    if framework == "django":
        return CheckOutcome(
            6, "not checked: comparing a Django app with the contract is not supported yet"
        )
    finders = [("fastapi", find_fastapi_app), ("flask", find_flask_app)]
    if framework == "flask":
        finders.reverse()
    found = [(kind, app) for kind, finder in finders if (app := finder(space)) is not None]
    if not found:
        hint = "define the app as a module-level `app = FastAPI(...)` (e.g. in app/main.py)"
        return CheckOutcome(
            6,
            "no app found to compare with the contract",
            [Finding(openapi_path, 1, "TB0604", hint)],
        )
    kind, app = found[0]
    dump, problem = dump_openapi(space, app, scratch_dir, kind)
    if dump is None:
        return CheckOutcome(
            6,
            f"the app {app.target} could not be imported",
            [Finding(app.rel, app.line, "TB0604", problem)],
        )
    routes = dump.get("routes", [])
    served = dump.get("openapi") or _document_from_routes(routes)
    foreign: list[str] = []
    findings = compare_contract(
        contract,
        served,
        routes,
        contract_rel=openapi_path,
        contract_text=contract_text,
        workdir=space.workdir,
        app_location=app,
        is_owned=space.is_owned,
        foreign=foreign,
        details=kind == "fastapi",
    )
    count = len(_operations(contract))
    verdict = (
        f"{app.target} serves the {count} operation(s) of {openapi_path} as specified"
        if not findings
        else f"{app.target} differs from {openapi_path} in {len(findings)} place(s)"
    )
    if foreign:
        verdict += f"; {len(foreign)} other served operation(s) outside the owned paths not checked"
    if kind == "flask":
        verdict += " (Flask: methods and paths only)"
    return CheckOutcome(6, verdict, findings)


def _document_from_routes(routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A bare OpenAPI ``paths`` object from route rows, for apps that publish no OpenAPI (Flask)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(str(route["path"]), {})[str(route["method"]).lower()] = {}
    return {"paths": paths}
