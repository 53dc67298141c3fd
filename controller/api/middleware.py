"""Per-request plumbing as plain ASGI: a request id, a body-size cap, one access log line, a token gate.

Plain ASGI rather than ``BaseHTTPMiddleware`` so streaming responses (SSE)
pass through untouched.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import cookie_parser

from controller.api.auth import decode_cookie_token
from controller.api.errors import RequestTooLargeError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from controller.api.auth import TokenRegistry

logger = logging.getLogger("controller.api.access")

#: An incoming X-Request-ID is kept only when it is this tame; otherwise a new one is made.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID``), caps its body, and logs it once."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        """Wrap ``app``; bodies over ``max_body_bytes`` get 413 ``request_too_large``."""
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # what the log says if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                raw.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": raw}
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body_bytes:
                status = 413
                await _send_too_large(send, request_id, self.max_body_bytes)
                return
            await self.app(scope, self._capped(receive), send_with_id)
        finally:
            logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )

    def _capped(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTP exceptions from body reading; the handler answers 413.
                    raise RequestTooLargeError(limit)
            return message

        return receive_capped


@dataclass(frozen=True, slots=True)
class CookieAccess:
    """Where the web view's cookie stands in for the bearer header: reads of its pages, nothing else.

    A browser cannot send ``Authorization`` when it follows a link, so the web view
    signs a person in by setting an HttpOnly, SameSite=Strict cookie that holds the
    token (base64url, :func:`~controller.api.auth.encode_cookie_token`). The gate takes
    it only for GET and HEAD under ``prefix`` and checks it against the same tokens,
    in the same constant time; every other path and method still needs the header,
    so the cookie can never call the API. A browser without a valid cookie is sent
    to ``sign_in_path`` (303), and a cookie that is not valid is cleared.
    """

    prefix: str
    """Path prefix of the web view's pages, e.g. ``/ui``."""
    cookie_name: str
    """Name of the cookie that holds the token."""
    sign_in_path: str
    """Where a browser without a valid cookie is sent."""

    def covers(self, scope: Scope) -> bool:
        """True for a read of one of the web view's pages."""
        path = str(scope.get("path", ""))
        return scope.get("method") in {"GET", "HEAD"} and (
            path == self.prefix or path.startswith(self.prefix + "/")
        )

    def cookie(self, headers: dict[bytes, bytes]) -> str | None:
        """The raw value of the request's sign-in cookie, if it sent one."""
        raw = headers.get(b"cookie")
        if raw is None:
            return None
        return cookie_parser(raw.decode("latin-1")).get(self.cookie_name)


class BearerGate:
    """Refuses a request without a valid bearer token before anything reads its body.

    FastAPI parses a body before it runs dependencies, so without this gate a
    caller with no token could still learn from 400/422 answers what the API
    accepts. The route dependency authenticates again to get the caller's
    principal; the gate only says no early. With ``cookie_access``, the web
    view's pages also accept the sign-in cookie (see :class:`CookieAccess`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenRegistry,
        public_paths: frozenset[str],
        cookie_access: CookieAccess | None = None,
    ) -> None:
        """Wrap ``app``; ``public_paths`` (health probes, the sign-in page) pass without a token."""
        self.app = app
        self.tokens = tokens
        self.public_paths = public_paths
        self.cookie_access = cookie_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token and self.tokens.authenticate(token) is not None:
            await self.app(scope, receive, send)
            return
        access = self.cookie_access
        if access is not None and access.covers(scope):
            cookie = access.cookie(headers)
            cookie_token = None if cookie is None else decode_cookie_token(cookie)
            if cookie_token is not None and self.tokens.authenticate(cookie_token) is not None:
                await self.app(scope, receive, send)
                return
            await _send_to_sign_in(send, access, clear=cookie is not None)
            return
        request_id = str(scope.get("state", {}).get("request_id", ""))
        message = (
            "send 'Authorization: Bearer <token>'" if not token else "the bearer token is not valid"
        )
        await _send_error(
            send,
            status=401,
            code="unauthenticated",
            message=message,
            request_id=request_id,
            extra_headers=[(b"www-authenticate", b"Bearer")],
        )


async def _send_to_sign_in(send: Send, access: CookieAccess, *, clear: bool) -> None:
    """303 to the sign-in page, clearing a cookie that did not authenticate."""
    headers = [
        (b"location", access.sign_in_path.encode()),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
    ]
    if clear:
        headers.append(
            (
                b"set-cookie",
                f"{access.cookie_name}=; Max-Age=0; Path={access.prefix}; HttpOnly; "
                "SameSite=Strict".encode(),
            )
        )
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _send_too_large(send: Send, request_id: str, limit: int) -> None:
    await _send_error(
        send,
        status=413,
        code="request_too_large",
        message=f"the request body is over {limit} bytes",
        request_id=request_id,
        extra_headers=[(b"connection", b"close")],
    )


async def _send_error(
    send: Send,
    *,
    status: int,
    code: str,
    message: str,
    request_id: str,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Answer with the JSON error shape straight from ASGI (before FastAPI is involved)."""
    body = json.dumps(
        {"error": {"code": code, "message": message, "requestId": request_id or None}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
