"""Run as a script in a subprocess: import a web app, write its OpenAPI and route sources as JSON.

Usage: ``python -P openapi_dump.py WORKDIR MODULE:ATTR OUTPUT.json [fastapi|flask]``;
``ATTR`` ending in ``()`` is an app factory to call. FastAPI apps give their
OpenAPI document; Flask apps give their URL rules only. Importing the app runs
the project's code, so this never happens in the harness process.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any


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
    """Method, path and the endpoint's source file and line for each schema route."""
    found = []
    for path, route, in_schema in _flat_routes(app):
        endpoint = getattr(route, "endpoint", None)
        methods = getattr(route, "methods", None)
        if endpoint is None or not methods or not in_schema:
            continue
        try:
            source = inspect.getsourcefile(endpoint) or ""
            line = inspect.getsourcelines(endpoint)[1]
        except (OSError, TypeError):
            source, line = "", 1
        found += [
            {"method": m, "path": path, "file": source, "line": line} for m in sorted(methods)
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


def main(argv: list[str]) -> int:
    """Import ``MODULE:ATTR`` from ``WORKDIR`` and write ``{"openapi", "routes"}`` to OUTPUT."""
    workdir, target, output = Path(argv[1]), argv[2], Path(argv[3])
    kind = argv[4] if len(argv) > 4 else "fastapi"  # noqa: PLR2004 - the optional fifth argument
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
