"""Run as a script in a subprocess: import a web app, write its OpenAPI and route sources as JSON.

Usage: ``python -P openapi_dump.py WORKDIR MODULE:ATTR OUTPUT.json [fastapi|flask [CONTRACT.json ANSWERS.jsonl]]``;
``ATTR`` ending in ``()`` is an app factory to call. FastAPI apps give their
OpenAPI document and every route of ``app.routes`` (those hidden from the
document marked ``hidden``); Flask apps give their URL rules only. With a
contract, the requests ``contract_runtime`` plans from it are then sent to the FastAPI
app through ASGI (Starlette's TestClient, lifespan run) and each answer is
appended to ANSWERS.jsonl as it comes, so a hung request loses only the rest.
Importing the app runs the project's code, so this never happens in the harness
process; the answers are judged there.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

#: Seconds one probe request may take before it is abandoned.
PROBE_SECONDS = 10.0
#: Characters of a response body kept.
BODY_LIMIT = 65_536


def _flat_routes(app: Any) -> list[tuple[str, Any, bool]]:
    """``(full path, route, in schema)`` for every route, included routers flattened.

    Newer FastAPI keeps included routers as lazy wrappers and offers
    ``fastapi.routing.iter_route_contexts``; older ones list every route with its full path.
    """
    routes = getattr(app, "routes", [])
    try:
        from fastapi.routing import iter_route_contexts  # noqa: PLC0415 - newer FastAPI only
    except ImportError:
        return [
            (r.path, r, bool(getattr(r, "include_in_schema", True)))
            for r in routes
            if hasattr(r, "path")
        ]
    flat = []
    for context in iter_route_contexts(routes):
        route = context.original_route
        path = getattr(context, "path_format", None) or getattr(context, "path", None) or ""
        effective = getattr(context, "_effective_route", route)
        flat.append((path, route, bool(getattr(effective, "include_in_schema", True))))
    return flat


def route_sources(app: Any) -> list[dict[str, Any]]:
    """Method, path, the endpoint's source file and line, and ``hidden`` for each route."""
    found = []
    for path, route, in_schema in _flat_routes(app):
        endpoint = getattr(route, "endpoint", None)
        methods = getattr(route, "methods", None)
        if endpoint is None or not methods:
            continue
        try:
            source = inspect.getsourcefile(endpoint) or ""
            line = inspect.getsourcelines(endpoint)[1]
        except (OSError, TypeError):
            source, line = "", 1
        found += [
            {"method": m, "path": path, "file": source, "line": line, "hidden": not in_schema}
            for m in sorted(methods)
            if m != "HEAD"
        ]
    return found


_FLASK_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def flask_routes(app: Any) -> list[dict[str, Any]]:
    """Method, OpenAPI-style path and view source for each Flask URL rule (static files left out)."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions.get(rule.endpoint)
        try:
            source = inspect.getsourcefile(view) or "" if view else ""
            line = inspect.getsourcelines(view)[1] if view else 1
        except (OSError, TypeError):
            source, line = "", 1
        path = _FLASK_PARAM.sub(r"{\1}", rule.rule)
        found += [
            {"method": m, "path": path, "file": source, "line": line}
            for m in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"})
        ]
    return found


def _load_beside(name: str) -> Any:
    """A module of this folder by file: importing it by name would import the whole verifier
    package first (half a second this subprocess does not need)."""
    spec = importlib.util.spec_from_file_location(
        f"_taskbox_{name}", Path(__file__).with_name(f"{name}.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class ProbeTimeoutError(Exception):
    """A probe request took longer than :data:`PROBE_SECONDS`."""


def _alarm(_signum: int, _frame: object) -> None:
    raise ProbeTimeoutError(f"no answer within {PROBE_SECONDS:.0f} s")


def send_probes(client_class: Any, app: Any, probes: list[dict[str, Any]], answers: Path) -> None:
    """Send each probe to the app and append its answer (status and body, or the error) as a line."""
    signal.signal(signal.SIGALRM, _alarm)
    with answers.open("w", encoding="utf-8") as out:
        try:
            client = client_class(app, raise_server_exceptions=False)
            client.__enter__()  # the lifespan; never left, the process ends with os._exit
        except Exception as exc:  # noqa: BLE001 - any startup failure is reported, not raised
            for probe in probes:
                out.write(
                    json.dumps({"id": probe["id"], "error": f"startup: {_error(exc)}"}) + "\n"
                )
            return
        for probe in probes:
            answer: dict[str, Any] = {"id": probe["id"]}
            signal.setitimer(signal.ITIMER_REAL, PROBE_SECONDS)
            try:
                extra = {"json": probe["body"]} if probe["has_body"] else {}
                response = client.request(
                    probe["method"],
                    probe["url"],
                    params=probe["query"],
                    headers=probe["headers"],
                    **extra,
                )
                answer |= {"status": response.status_code, "body": response.text[:BODY_LIMIT]}
            except Exception as exc:  # noqa: BLE001 - the app's failure is the answer
                answer["error"] = _error(exc)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            out.write(json.dumps(answer) + "\n")
            out.flush()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def main(argv: list[str]) -> int:
    """Import ``MODULE:ATTR`` from ``WORKDIR``, write ``{"openapi", "routes"}``, then send the probes."""
    workdir, target, output = Path(argv[1]), argv[2], Path(argv[3])
    kind = argv[4] if len(argv) > 4 else "fastapi"  # noqa: PLR2004 - the optional fifth argument
    contract_in = Path(argv[5]) if len(argv) > 6 else None  # noqa: PLR2004 - optional probe files
    client_class = runtime = None
    if contract_in is not None:
        # Imported before the repository is on sys.path: modules of its own cannot stand in.
        client_class = importlib.import_module("starlette.testclient").TestClient
        runtime = _load_beside("contract_runtime")
    sys.path[:0] = [str(workdir), str(workdir / "src")]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, (attr or "app").removesuffix("()"))
    if attr.endswith("()"):
        app = app()
    if kind == "flask":
        data = {"openapi": None, "routes": flask_routes(app)}
    else:
        data = {"openapi": app.openapi(), "routes": route_sources(app)}
    output.write_text(json.dumps(data), encoding="utf-8")
    if contract_in is not None and runtime is not None and kind != "flask":
        contract = json.loads(contract_in.read_text(encoding="utf-8"))
        planned, _ = runtime.plan_probes(
            contract, runtime.match_operations(contract, data["openapi"])
        )
        send_probes(client_class, app, [p.to_json() for p in planned], Path(argv[6]))
        # The app's threads (a hung request, its lifespan) must not keep the process alive.
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
