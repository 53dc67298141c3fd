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

import yaml

from taskbox_runner.verify import openapi_dump
from taskbox_runner.verify.contract_runtime import (
    judge_answers,
    match_operations,
    operations,
    plan_probes,
    served_key,
    server_prefix,
)
from taskbox_runner.verify.endpoints import imports_module, last_name
from taskbox_runner.verify.models import CheckOutcome, Finding, Framework
from taskbox_runner.verify.process import harness_env, run_bounded

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskbox_runner.verify.workspace import Workspace

logger = logging.getLogger(__name__)

MAX_SCHEMA_DEPTH = 6
RULE_RUNTIME = "TB0607"
RULE_HIDDEN = "TB0606"
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
    space: Workspace,
    app: AppLocation,
    scratch_dir: Path,
    kind: str = "fastapi",
    contract: dict[str, Any] | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """Import the app in a subprocess; ``(the dump, '')`` or ``(None, why not)``.

    With ``contract`` (FastAPI), the subprocess then sends the probes planned from it and the
    dump gains ``answers`` (one per probe that was answered before the process ended).
    """
    output = scratch_dir / "served-openapi.json"
    answers = scratch_dir / "probe-answers.jsonl"
    contract_json = scratch_dir / "contract.json"
    for stale in (output, answers, contract_json):
        stale.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-P",
        str(Path(openapi_dump.__file__)),
        str(space.workdir),
        app.target,
        str(output),
        kind,
    ]
    if contract is not None and kind == "fastapi":
        contract_json.write_text(json.dumps(contract, default=str), encoding="utf-8")
        argv += [str(contract_json), str(answers)]
    done = run_bounded(
        argv,
        cwd=space.workdir,
        env=harness_env(),
        timeout=DUMP_TIMEOUT_SECONDS,
        output_dir=scratch_dir,
        label="openapi-dump",
    )
    if done.timed_out and not output.is_file():
        return None, f"importing {app.target} took longer than {DUMP_TIMEOUT_SECONDS:.0f} s"
    if done.returncode != 0 and not done.timed_out:
        return None, f"importing {app.target} failed: {done.last_line()}"
    try:
        data = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"importing {app.target} produced no OpenAPI document"
    if not isinstance(data, dict):
        return None, f"importing {app.target} produced no OpenAPI document"
    data["answers"] = _read_answers(answers)
    return data, ""


def _read_answers(path: Path) -> list[dict[str, Any]]:
    answers = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            answer = json.loads(line)
        except ValueError:
            continue  # a line cut by the deadline
        if isinstance(answer, dict):
            answers.append(answer)
    return answers


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
    elif contract.get("properties") and "object" in served.get("type", ()):
        out.append(
            f"{where}: a free-form object in the app (any keys), properties "
            f"{sorted(contract['properties'])} in the contract"
        )
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
    c_ops, s_ops = operations(contract), operations(served)
    prefix = server_prefix(contract)
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
        key = served_key(method, norm, prefix, s_ops)
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


def _inside(file: str, workdir: Path) -> bool:
    try:
        return bool(file) and Path(file).resolve().is_relative_to(workdir)
    except OSError:
        return False


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
    dump, problem = dump_openapi(space, app, scratch_dir, kind, contract)
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
    findings = _hidden_routes(
        contract,
        routes=routes,
        findings=findings,
        contract_text=contract_text,
        contract_rel=openapi_path,
        space=space,
        foreign=foreign,
    )
    warnings: list[str] = []
    ran = ""
    if kind == "fastapi":
        runtime, warnings, ran = _runtime(contract, served, dump, contract_text, openapi_path)
        findings += runtime
    count = len(operations(contract))
    verdict = (
        f"{app.target} serves the {count} operation(s) of {openapi_path} as specified"
        if not findings
        else f"{app.target} differs from {openapi_path} in {len(findings)} statement(s)"
    )
    verdict += ran
    if foreign:
        verdict += f"; {len(foreign)} other served operation(s) outside the owned paths not checked"
    if kind == "flask":
        verdict += " (Flask: methods and paths only)"
    return CheckOutcome(6, verdict, findings, warnings=[f"contract: {w}" for w in warnings])


def _runtime(
    contract: dict[str, Any],
    served: dict[str, Any],
    dump: dict[str, Any],
    contract_text: str,
    contract_rel: str,
) -> tuple[list[Finding], list[str], str]:
    """Findings, warnings and a verdict suffix from the probes' answers."""
    probes, skipped = plan_probes(contract, match_operations(contract, served))
    if not probes:
        return [], [f"no request could be built: {s}" for s in skipped], ""
    judged = judge_answers(contract, probes, list(dump.get("answers") or []))
    lines = _contract_lines(contract_text)
    findings = [
        Finding(contract_rel, lines.get(path, 1), RULE_RUNTIME, message)
        for path, message in judged.findings
    ]
    warnings = judged.warnings + [f"no request could be built: {s}" for s in skipped]
    suffix = f"; {judged.sent} of {len(probes)} request(s) built from the contract answered"
    return findings, warnings, suffix


def _hidden_routes(
    contract: dict[str, Any],
    *,
    routes: list[dict[str, Any]],
    findings: list[Finding],
    contract_text: str,
    contract_rel: str,
    space: Workspace,
    foreign: list[str],
) -> list[Finding]:
    """Routes in ``app.routes`` hidden from the OpenAPI document (``include_in_schema=False``).

    One the contract lists replaces its "not served" finding; one it does not list is an extra
    operation, like any other served route.
    """
    # The framework's own hidden routes (/docs, /openapi.json) are defined outside the repository.
    hidden = [
        r for r in routes if r.get("hidden") and _inside(str(r.get("file", "")), space.workdir)
    ]
    if not hidden:
        return findings
    doc: dict[str, Any] = {"paths": {}}
    for route in hidden:
        doc["paths"].setdefault(str(route["path"]), {})[str(route["method"]).lower()] = {}
    listed = {(m, p) for m, p, _ in match_operations(contract, doc)}
    lines = _contract_lines(contract_text)
    out = [
        f
        for f in findings
        if not (f.rule == "TB0601" and any(f.message.startswith(f"{m} {p} ") for m, p in listed))
    ]
    out += [
        Finding(
            contract_rel,
            lines.get(p, 1),
            "TB0603",
            f"{m} {p}: the app serves it hidden "
            "from its OpenAPI document (include_in_schema=False)",
        )
        for m, p in sorted(listed)
    ]
    served_listed = {(m, s) for m, _, s in match_operations(contract, doc)}
    for route in hidden:
        key = (str(route["method"]), str(route["path"]))
        if key in served_listed:
            continue
        rel = _relative(route.get("file", ""), space.workdir)
        line = int(route.get("line", 1))
        message = (
            f"{key[0]} {key[1]} is served by the app, hidden from its OpenAPI document "
            "(include_in_schema=False), and not in the contract"
        )
        if space.is_owned(rel):
            out.append(Finding(rel, line, "TB0602", message))
        else:
            foreign.append(f"{rel}:{line}: {message}")
    return out


def static_contract(space: Workspace, openapi_path: str | None) -> CheckOutcome:
    """What reading the files says of constraint 6: the contract parses, no route is hidden from it.

    A route, router or included router with ``include_in_schema=False`` in owned code is a
    finding unless its literal path ends one of the contract's paths (a prefix comes from the
    router): a hidden route escapes the comparison with ``app.openapi()``.
    """
    if not openapi_path:
        return CheckOutcome(6, "no contract")
    contract_file = space.workdir / openapi_path
    try:
        contract = load_contract(contract_file)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return CheckOutcome(
            6, "the contract could not be read", [Finding(openapi_path, 1, "TB0605", str(exc))]
        )
    contract_paths = {norm for _, norm in operations(contract)}
    findings = []
    for rel, tree in space.trees(space.owned_source):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not _hides(node):
                continue
            literal = _literal_path(node)
            if literal is not None and any(
                c.endswith(_PARAM.sub("{}", literal).rstrip("/") or "/") for c in contract_paths
            ):
                continue
            what = f"the route {literal}" if literal is not None else f"{last_name(node.func)}(...)"
            findings.append(
                Finding(
                    rel,
                    node.lineno,
                    RULE_HIDDEN,
                    f"{what} is hidden from the OpenAPI document (include_in_schema=False) "
                    f"and not in {openapi_path}",
                )
            )
    verdict = (
        f"statically: {len(findings)} route(s) hidden from the OpenAPI document and not in the contract"
        if findings
        else f"statically: {len(contract_paths)} contract path(s) read; no route hidden from the "
        "OpenAPI document outside the contract"
    )
    return CheckOutcome(6, verdict, findings)


def _hides(node: ast.Call) -> bool:
    return any(
        k.arg == "include_in_schema"
        and isinstance(k.value, ast.Constant)
        and k.value.value is False
        for k in node.keywords
    )


def _literal_path(node: ast.Call) -> str | None:
    if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    for keyword in node.keywords:
        if keyword.arg == "path" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    return None


def _document_from_routes(routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A bare OpenAPI ``paths`` object from route rows, for apps that publish no OpenAPI (Flask)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(str(route["path"]), {})[str(route["method"]).lower()] = {}
    return {"paths": paths}
