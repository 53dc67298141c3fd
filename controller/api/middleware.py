"""Per-request plumbing as plain ASGI: a request id, a body-size cap, one access log line, a token gate.

Plain ASGI rather than ``BaseHTTPMiddleware`` so streaming responses (SSE)
pass through untouched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
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


class RequestIds:
    """New request ids, each the hex of a random version-4 UUID (what ``uuid.uuid4().hex`` gives).

    The random bytes come from ``os.urandom`` a block at a time: one system call per
    256 ids rather than one per request. On a busy server a system call on the event
    loop gives up the GIL, and getting it back from a worker thread costs more than
    the call (issue 15). A forked child starts a block of its own, so no two
    processes hand out the same ids.
    """

    BLOCK_BYTES = 4096

    def __init__(self) -> None:
        """Start empty: the first id reads the first block."""
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0

    def new(self) -> str:
        """The next id: 32 lower-case hex digits, a valid UUID4."""
        with self._lock:
            if self._at + 16 > len(self._block):
                self._block = os.urandom(self.BLOCK_BYTES)
                self._at = 0
            raw = bytearray(self._block[self._at : self._at + 16])
            self._at += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return raw.hex()


_request_ids = RequestIds()


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
        # One pass over the headers (the server lower-cases names; the last one wins, as in a dict).
        incoming = declared_length = b""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                incoming = value
            elif name == b"content-length":
                declared_length = value
        text_id = incoming.decode("latin-1")
        request_id = text_id if _REQUEST_ID.match(text_id) else _request_ids.new()
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = 500  # what the log says if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                raw.append(id_header)
                message = {**message, "headers": raw}
            await send(message)

        try:
            declared = int(declared_length or 0)
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body_bytes:
                status = 413
                await _send_too_large(send, request_id, self.max_body_bytes)
                return
            await self.app(scope, self._capped(receive), send_with_id)
        finally:
            # The record (and its extra dict) is built only when someone will read it.
            if logger.isEnabledFor(logging.INFO):
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

    def cookie(self, raw: bytes | None) -> str | None:
        """The raw value of the sign-in cookie in the request's ``Cookie`` header, if it sent one."""
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
        # One pass over the headers (the last one of a name wins, as in a dict).
        authorization = b""
        cookie_header: bytes | None = None
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                authorization = value
            elif name == b"cookie":
                cookie_header = value
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token and self.tokens.authenticate(token) is not None:
            await self.app(scope, receive, send)
            return
        access = self.cookie_access
        if access is not None and access.covers(scope):
            cookie = access.cookie(cookie_header)
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
