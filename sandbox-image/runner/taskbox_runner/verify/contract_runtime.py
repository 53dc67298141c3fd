"""Constraint 6 at run time: requests built from the contract, answers validated against it.

The harness plans the requests from the contract alone (:func:`plan_probes`);
``openapi_dump`` sends them to the app through ASGI (Starlette's TestClient, in
the subprocess that already imports the app) and records status and body; the
harness then judges the answers (:func:`judge_answers`) with jsonschema-rs, so
code under test never runs the validator it is judged by.

Per operation the app serves, one request built from the contract (a valid body,
required query and header parameters; path parameters are ids that do not
exist), and when the contract documents 422 or 400 and a body, one request with
an invalid body. Deterministic values, no random generation: the example or
default when the schema gives one, else a value built from type, format, bounds
and pattern. Findings (``TB0607``):

* an answer with a documented status whose body does not match that status's
  schema (``200 null`` where a ``User`` is due, a ``JSONResponse`` with other
  fields: objects in the contract are closed, their properties being what the
  static comparison already demands of the app);
* a 2xx/3xx status the contract does not document;
* an invalid body accepted, or refused with a status the contract does not list;
* a made-up id answered with an undocumented 4xx where the contract documents 404.

Not judged (a warning says so): 5xx answers and requests that raise or hang (an
app may need a database or service the check does not start), and undocumented
4xx answers to valid requests (a business rule the generated values broke).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

#: How deep ``$ref``s are inlined before a schema is cut (recursive models).
MAX_DEPTH = 8
#: Characters of a body kept in evidence.
BODY_IN_EVIDENCE = 120
_PARAM = re.compile(r"\{([^}]*)\}")
_STRING_CANDIDATES = (
    "sample",
    "user@example.com",
    "a",
    "1",
    "abc123",
    "2024-01-02",
    "2024-01-02T03:04:05Z",
    "https://example.com/",
    "123e4567-e89b-42d3-a456-426614174000",
    "A",
    "ab-cd",
)
_FORMATS = {
    "email": "user@example.com",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "date": "2024-01-02",
    "date-time": "2024-01-02T03:04:05Z",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
}
_UNKNOWN_STRINGS = ("zz-unknown-987654321", "zzunknown987654321", "987654321", "ZZ-987654321")
_UNKNOWN_IDS = {
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "nobody-987654321@example.com",
}


class NoValueError(ValueError):
    """The schema asks for a value this generator cannot build (an unsatisfiable pattern...)."""


@dataclass
class Probe:
    """One request to send, and why."""

    id: int
    method: str
    url: str
    contract_path: str
    purpose: str
    """``valid``, ``unknown-id`` (a valid request whose path ids do not exist) or ``invalid-body``."""
    query: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    has_body: bool = False

    def to_json(self) -> dict[str, Any]:
        """The wire form the dump script reads."""
        return asdict(self)


@dataclass
class Judged:
    """What the answers say: findings as ``(contract path, message)`` and warnings."""

    findings: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sent: int = 0


def resolve(doc: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """``node`` with a top-level ``$ref`` followed (a few levels)."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and depth < MAX_DEPTH:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~"), {})
                if isinstance(target, dict)
                else {}
            )
        node = target
        depth += 1
    return node


# --------------------------------------------------------------------------- operations

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

#: ``(METHOD, path with parameters as {})`` -> ``(path as written, operation)``.
Operations = dict[tuple[str, str], tuple[str, dict[str, Any]]]


def operations(doc: dict[str, Any]) -> Operations:
    """Every operation of an OpenAPI document, keyed by method and parameter-blind path."""
    ops = {}
    for path, item in (doc.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            if isinstance(item.get(method), dict):
                ops[method.upper(), _PARAM.sub("{}", str(path))] = (str(path), item[method])
    return ops


def server_prefix(doc: dict[str, Any]) -> str:
    """The path of the contract's first server URL (``/api/v1``), '' when none."""
    servers = doc.get("servers") or []
    if servers and isinstance(servers[0], dict):
        path = urlparse(str(servers[0].get("url", ""))).path.rstrip("/")
        return path if path.startswith("/") else ""
    return ""


def served_key(method: str, norm: str, prefix: str, served: Operations) -> tuple[str, str] | None:
    """The served operation a contract operation matches: same path, server prefix, or slash."""
    candidates = [norm, prefix + norm] if prefix else [norm]
    candidates += [c.rstrip("/") if c.endswith("/") else c + "/" for c in list(candidates)]
    return next(((method, c) for c in candidates if (method, c) in served), None)


def match_operations(
    contract: dict[str, Any], served: dict[str, Any]
) -> list[tuple[str, str, str]]:
    """``(method, contract path, served path)`` for each contract operation the app serves."""
    c_ops, s_ops = operations(contract), operations(served)
    prefix = server_prefix(contract)
    matched = []
    for (method, norm), (path, _) in sorted(c_ops.items()):
        key = served_key(method, norm, prefix, s_ops)
        if key is not None:
            matched.append((method, path, s_ops[key][0]))
    return matched


# --------------------------------------------------------------------------- values


_NOTHING = object()


def example_for(schema: Any, doc: dict[str, Any], depth: int = 0, name: str = "") -> Any:
    """A value the schema accepts, built deterministically; raises :class:`NoValueError`."""
    schema = resolve(doc, schema)
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    given = _given(schema)
    if given is not _NOTHING:
        return given
    composed = _composed_example(schema, doc, depth)
    if composed is not _NOTHING:
        return composed
    return _typed_example(_type_of(schema), schema, doc, depth, name)


def _given(schema: dict[str, Any]) -> Any:
    for key in ("example", "default", "const"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    return _NOTHING


def _composed_example(schema: dict[str, Any], doc: dict[str, Any], depth: int) -> Any:
    for key in ("anyOf", "oneOf"):
        variants = [v for v in schema.get(key) or [] if resolve(doc, v).get("type") != "null"]
        if variants:
            return example_for(variants[0], doc, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = example_for(part, doc, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    return _NOTHING


def _typed_example(
    kind: str, schema: dict[str, Any], doc: dict[str, Any], depth: int, name: str
) -> Any:
    if kind == "array":
        return _array_example(schema, doc, depth)
    if kind == "string":
        return _string_example(schema, name)
    if kind in {"integer", "number"}:
        value = _number_example(schema, 1 if kind == "integer" else 1.5)
        return int(value) if kind == "integer" else value
    if kind in {"boolean", "null"}:
        return kind == "boolean" or None
    return _object_example(schema, doc, depth)


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
    return str(kind) if kind else "object"


def _object_example(schema: dict[str, Any], doc: dict[str, Any], depth: int) -> Any:
    properties = schema.get("properties") or {}
    return {
        str(name): example_for(properties.get(name, {}), doc, depth + 1, str(name))
        for name in schema.get("required") or []
    }


def _array_example(schema: dict[str, Any], doc: dict[str, Any], depth: int) -> Any:
    count = int(schema.get("minItems") or 0)
    return [example_for(schema.get("items", {}), doc, depth + 1) for _ in range(count)]


def _string_example(
    schema: dict[str, Any], name: str = "", candidates: tuple[str, ...] = _STRING_CANDIDATES
) -> str:
    """Format first, then a value the field's name suggests (an app may check more than the
    contract says), then plain candidates; each fitted to the length bounds and the pattern."""
    low = int(schema.get("minLength") or 0)
    high = int(schema.get("maxLength") or 10_000)
    tried = [_FORMATS[schema["format"]]] if schema.get("format") in _FORMATS else []
    tried += [value for hint, value in _FORMATS.items() if hint in name.lower()]
    tried += [*candidates, *_STRING_CANDIDATES]
    pattern = schema.get("pattern")
    for text in tried:
        fitted = (text + "x" * max(0, low - len(text)))[:high]
        if pattern is None or re.search(str(pattern), fitted):
            return fitted
    raise NoValueError(f"no value found for the pattern {pattern!r}")


def _number_example(schema: dict[str, Any], preferred: float) -> float:
    value = preferred
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low, int | float) and value < low:
        value = low
    if isinstance(ex_low, int | float) and not isinstance(ex_low, bool) and value <= ex_low:
        value = ex_low + 1
    if isinstance(high, int | float) and value > high:
        value = high
    if isinstance(ex_high, int | float) and not isinstance(ex_high, bool) and value >= ex_high:
        value = ex_high - 1
    return value


def unknown_id(schema: Any, doc: dict[str, Any]) -> Any:
    """A path parameter value that names nothing: the largest allowed integer, an unused string."""
    schema = resolve(doc, schema) if isinstance(schema, dict) else {}
    kind = _type_of(schema) if schema else "string"
    if kind in {"integer", "number"}:
        high = schema.get("maximum")
        return int(high) if isinstance(high, int | float) else 987654321
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][-1]
    if schema.get("format") in _UNKNOWN_IDS:
        return _UNKNOWN_IDS[schema["format"]]
    # Fitted to the schema's length and pattern, so the app cannot refuse it as malformed.
    return _string_example({**schema, "format": None}, candidates=_UNKNOWN_STRINGS)


# --------------------------------------------------------------------------- planning


def _parameters(
    op: dict[str, Any], item: dict[str, Any], doc: dict[str, Any]
) -> list[dict[str, Any]]:
    params = [
        resolve(doc, p) for p in [*(item.get("parameters") or []), *(op.get("parameters") or [])]
    ]
    return [p for p in params if isinstance(p, dict)]


def json_body_schema(op: dict[str, Any], doc: dict[str, Any]) -> tuple[bool, Any]:
    """``(takes a JSON body, its schema)``."""
    body = resolve(doc, op.get("requestBody"))
    if not isinstance(body, dict):
        return False, None
    for media, entry in (body.get("content") or {}).items():
        if "json" in str(media) and isinstance(entry, dict):
            return True, entry.get("schema", {})
    return False, None


def plan_probes(
    doc: dict[str, Any], operations: list[tuple[str, str, str]]
) -> tuple[list[Probe], list[str]]:
    """The requests for ``(method, contract path, served path)`` operations, and what was left out."""
    probes: list[Probe] = []
    skipped: list[str] = []
    for method, contract_path, served_path in operations:
        item = (doc.get("paths") or {}).get(contract_path) or {}
        op = item.get(method.lower()) or {}
        try:
            probes += _probes_for(
                doc,
                method=method,
                contract_path=contract_path,
                served_path=served_path,
                op=op,
                item=item,
                first_id=len(probes),
            )
        except NoValueError as exc:
            skipped.append(f"{method} {contract_path}: {exc}")
    return probes, skipped


def _probes_for(
    doc: dict[str, Any],
    *,
    method: str,
    contract_path: str,
    served_path: str,
    op: dict[str, Any],
    item: dict[str, Any],
    first_id: int,
) -> list[Probe]:
    params = _parameters(op, item, doc)
    by_name = {str(p.get("name")): p for p in params if p.get("in") == "path"}
    # Served and contract paths may name their parameters differently: fill by position.
    contract_names = _PARAM.findall(contract_path)
    values = [
        quote(str(unknown_id(by_name.get(n, {}).get("schema"), doc)), safe="")
        for n in contract_names
    ]
    slots = iter(values)
    url = _PARAM.sub(lambda _m: next(slots, "1"), served_path)
    query = {
        str(p["name"]): example_for(p.get("schema", {}), doc)
        for p in params
        if p.get("in") == "query" and p.get("required")
    }
    headers = {
        str(p["name"]): str(example_for(p.get("schema", {}), doc))
        for p in params
        if p.get("in") == "header" and p.get("required")
    }
    has_body, schema = json_body_schema(op, doc)
    body = example_for(schema, doc) if has_body else None
    purpose = "unknown-id" if contract_names else "valid"
    common = {"method": method, "url": url, "contract_path": contract_path}
    probes = [
        Probe(
            id=first_id,
            purpose=purpose,
            query=query,
            headers=headers,
            body=body,
            has_body=has_body,
            **common,
        )
    ]
    codes = {str(code) for code in (op.get("responses") or {})}
    if has_body and codes & {"422", "400"}:
        probes.append(
            Probe(
                id=first_id + 1,
                purpose="invalid-body",
                query=query,
                headers=headers,
                body=_invalid_body(schema, doc),
                has_body=True,
                **common,
            )
        )
    return probes


def _invalid_body(schema: Any, doc: dict[str, Any]) -> Any:
    schema = resolve(doc, schema)
    kind = _type_of(schema) if isinstance(schema, dict) and schema else "object"
    if kind == "object":
        return {} if (schema or {}).get("required") else [1]
    if kind == "array":
        return {"not": "an array"}
    return [{"not": kind}]


# --------------------------------------------------------------------------- judging


_OPENAPI_ONLY = frozenset(
    {"discriminator", "xml", "externalDocs", "example", "nullable", "$ref", "readOnly", "writeOnly"}
)


def to_json_schema(schema: Any, doc: dict[str, Any], depth: int = 0, *, closed: bool = True) -> Any:
    """An OpenAPI schema as JSON Schema: ``$ref``s inlined, ``nullable`` as a null variant.

    With ``closed``, an object listing properties (and not composed with allOf/anyOf/oneOf)
    accepts no others: the static comparison makes the app's properties the contract's, so
    anything else in a body bypassed the response model.
    """
    schema = resolve(doc, schema)
    if not isinstance(schema, dict):
        return schema if isinstance(schema, bool) else {}
    if depth > MAX_DEPTH:
        return {}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _OPENAPI_ONLY:
            out[key] = _converted(key, value, doc, depth, closed=closed)
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        # OpenAPI 3.0's boolean form: ``exclusiveMinimum: true`` qualifies ``minimum``.
        if isinstance(schema.get(exclusive), bool):
            out.pop(exclusive, None)
            if schema[exclusive] and bound in out:
                out[exclusive] = out.pop(bound)
    composed = any(k in schema for k in ("allOf", "anyOf", "oneOf"))
    if closed and not composed and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if schema.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _converted(key: str, value: Any, doc: dict[str, Any], depth: int, *, closed: bool) -> Any:
    if key == "properties" and isinstance(value, dict):
        return {str(n): to_json_schema(v, doc, depth + 1, closed=closed) for n, v in value.items()}
    if key in {"items", "additionalProperties", "not"} and isinstance(value, dict):
        return to_json_schema(value, doc, depth + 1, closed=closed)
    if key in {"allOf", "anyOf", "oneOf", "prefixItems"} and isinstance(value, list):
        # allOf parts are merged by the validator: closing one would refuse the others' properties.
        part_closed = closed and key != "allOf"
        return [to_json_schema(v, doc, depth + 1, closed=part_closed) for v in value]
    return value


def _documented(status: int, responses: dict[str, Any]) -> str | None:
    """The response key that documents ``status`` (exact, ``4XX`` range, or ``default``)."""
    for key in (str(status), f"{str(status)[0]}XX", f"{str(status)[0]}xx", "default"):
        if key in responses:
            return key
    return None


def _judged_body(status: int, key: str) -> bool:
    """Whether a body is validated: always for success; for errors only under their own code
    (a ``default``/``4XX`` error schema is often the API's generic one, not FastAPI's)."""
    return 200 <= status < 300 or key == str(status)  # noqa: PLR2004 - the success range


def _response_schema(response: Any, doc: dict[str, Any]) -> tuple[bool, Any]:
    response = resolve(doc, response)
    content = response.get("content") if isinstance(response, dict) else None
    if not isinstance(content, dict) or not content:
        return False, None
    for media, entry in content.items():
        if "json" in str(media) and isinstance(entry, dict):
            return True, entry.get("schema")
    return False, None


def _body_text(answer: dict[str, Any]) -> str:
    text = str(answer.get("body", ""))
    return text if len(text) <= BODY_IN_EVIDENCE else text[:BODY_IN_EVIDENCE] + "..."


def judge_answers(
    doc: dict[str, Any], probes: list[Probe], answers: list[dict[str, Any]]
) -> Judged:
    """Findings and warnings from the app's answers to ``probes``."""
    judged = Judged()
    validators: Any = None
    try:
        validators = importlib.import_module("jsonschema_rs")
    except ImportError:
        judged.warnings.append("response bodies not validated: jsonschema-rs is not installed")
    by_id = {int(a.get("id", -1)): a for a in answers if isinstance(a, dict)}
    for probe in probes:
        answer = by_id.get(probe.id)
        where = f"{probe.method} {probe.contract_path}"
        if answer is None:
            judged.warnings.append(f"{where}: the request was not answered (the run ended first)")
            continue
        judged.sent += 1
        if answer.get("error"):
            judged.warnings.append(f"{where}: not judged: the request raised {answer['error']}")
            continue
        status = int(answer.get("status", 0))
        op = ((doc.get("paths") or {}).get(probe.contract_path) or {}).get(
            probe.method.lower()
        ) or {}
        responses = {str(k): v for k, v in (op.get("responses") or {}).items()}
        message = _verdict(probe, status, responses, answer)
        if message is None:
            key = _documented(status, responses)
            if key is None or not _judged_body(status, key):
                continue
            has_json, schema = _response_schema(responses[key], doc)
            # Success bodies are closed objects; error bodies (FastAPI adds fields to its 422) are not.
            closed = 200 <= status < 300  # noqa: PLR2004 - the success range
            message = validators and _body_problem(
                validators, to_json_schema(schema, doc, closed=closed), has_json, answer, status
            )
        if message and message.startswith("warning: "):
            judged.warnings.append(f"{where}: {message.removeprefix('warning: ')}")
        elif message:
            judged.findings.append((probe.contract_path, f"{where}: {message}"))
    return judged


def _verdict(
    probe: Probe, status: int, responses: dict[str, Any], answer: dict[str, Any]
) -> str | None:
    """A status-level finding (or ``warning: ...``), else ``None`` to go on to the body."""
    documented = _documented(status, responses)
    listed = ", ".join(sorted(responses)) or "nothing"
    asked = f"({probe.purpose} request)"
    skipped = _not_judged(status, documented, asked, answer)
    if skipped:
        return skipped
    if probe.purpose == "invalid-body":
        return _invalid_body_verdict(probe, status, documented, listed)
    if documented is not None:
        return _documented_verdict(probe, status, answer)
    if status < 400:  # noqa: PLR2004 - success and redirects
        return f"answered {status} {asked}, which the contract does not document ({listed})"
    if probe.purpose == "unknown-id" and "404" in responses:
        return f"answered {status} for an id that does not exist; the contract documents 404"
    return f"warning: not judged: answered {status} {asked}, which the contract does not document"


def _not_judged(status: int, documented: str | None, asked: str, answer: dict[str, Any]) -> str:
    """Answers the check cannot blame on the app: a server error, a demand for credentials."""
    if status >= 500:  # noqa: PLR2004 - server errors
        return f"warning: not judged: answered {status} {asked}: {_body_text(answer)}"
    if status in {401, 403} and documented is None:
        return f"warning: not judged: answered {status} {asked}: the app asks for credentials"
    return ""


def _documented_verdict(probe: Probe, status: int, answer: dict[str, Any]) -> str | None:
    if probe.purpose == "valid" and status >= 400:  # noqa: PLR2004 - client errors
        return (
            f"warning: the success path was not exercised: answered {status} to a request "
            f"built from the contract: {_body_text(answer)}"
        )
    return None


def _invalid_body_verdict(
    probe: Probe, status: int, documented: str | None, listed: str
) -> str | None:
    if status < 400:  # noqa: PLR2004 - success and redirects
        return (
            f"accepted an invalid body {json.dumps(probe.body)} with {status}; "
            f"the contract documents {listed}"
        )
    if documented is None:
        return f"answered {status} to an invalid body; the contract documents {listed}"
    return None


def _body_problem(
    validator_module: Any, schema: Any, has_json: bool, answer: dict[str, Any], status: int
) -> str | None:
    if not has_json or schema in (None, {}):
        return None
    try:
        body = json.loads(str(answer.get("body", "")))
    except ValueError:
        return f"answered {status} with a body that is not JSON: {_body_text(answer)!r}"
    validator = validator_module.validator_for(schema)
    errors = list(validator.iter_errors(body))
    if not errors:
        return None
    first = errors[0]
    path = "/".join(str(p) for p in first.instance_path) or "the body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (
        f"answered {status} with a body the contract's schema refuses at {path}: "
        f"{first.message}{more}; body: {_body_text(answer)}"
    )
