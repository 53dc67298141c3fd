"""The controller's HTTP API for orchestrators: FastAPI routes over the task service.

Layers: ``routes`` (HTTP only) → :mod:`controller.service` (decisions) →
:mod:`controller.store` (SQLite). ``deps`` holds the ``Annotated`` dependency
aliases, ``errors`` the one JSON error shape and its stable codes.
"""

from controller.api.app import create_app, openapi_document, render_openapi

__all__ = ["create_app", "openapi_document", "render_openapi"]
