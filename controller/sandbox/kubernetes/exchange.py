"""The controller's file exchange for Pods: each run's ``in.tar`` fetched once, its ``out.tar`` uploaded once.

A Pod gets no host bind mount (taskbox_wire/pod.py). The backend registers a run
with the staged tree packed as one tar and gets two single-use tokens back: the
init container fetches ``GET /exchange/<run>/in.tar`` with the first (it is in the
Pod spec), the main container's wrapper sends ``PUT /exchange/<run>/out.tar`` with
the second (it travels inside ``in.tar``, never in the spec). Tokens come from
``secrets``, are compared in constant time and are never logged. Answers:

- 401 without a bearer token, 403 with a wrong one, 404 for an unknown run,
  410 for a file already fetched or uploaded (one try each, even a failed one);
- ``in.tar`` is held back until the backend releases the run (``start``): a fetch
  that comes earlier waits (at most :data:`HOLD_SECONDS`, then 503);
- ``out.tar`` is read as a stream with a hard byte cap: past it the upload is
  cut, answered 413, and remembered as oversized.

The server is a small Starlette app that uvicorn serves from a thread of its own
(:class:`ExchangeServer`); the registry (:class:`Exchange`) is what the backend talks
to, from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Self

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from controller.errors import SandboxError
from taskbox_wire.pod import EXCHANGE_IN, EXCHANGE_OUT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from starlette.requests import Request

log = logging.getLogger(__name__)

#: How long a fetch of ``in.tar`` that comes before ``start`` may wait for it.
HOLD_SECONDS = 60.0
#: Chunk size when ``in.tar`` is sent.
CHUNK_BYTES = 1 << 16
#: What of a tar is kept in memory before it spills to a private temporary file.
SPOOL_BYTES = 8 << 20
#: Run ids the exchange accepts in a path (the controller's own ids; anything else is 404).
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class UploadState(StrEnum):
    """What became of a run's ``out.tar``."""

    NONE = "none"
    """Nothing was uploaded (yet)."""
    RECEIVED = "received"
    """Uploaded whole, within the cap."""
    OVERSIZED = "oversized"
    """Cut at the cap and refused (413)."""
    INCOMPLETE = "incomplete"
    """The upload broke off before its end."""


@dataclass
class _Run:
    in_token: bytes
    out_token: bytes
    in_tar: IO[bytes]
    out_cap: int
    released: threading.Event = field(default_factory=threading.Event)
    fetched: bool = False
    out_started: bool = False
    out_state: UploadState = UploadState.NONE
    out_tar: IO[bytes] | None = None
    out_size: int = 0


@dataclass(frozen=True)
class Tokens:
    """The two single-use tokens of one run: one per direction."""

    fetch_in: str
    """Fetches ``in.tar`` (the init container's, in the Pod spec)."""
    upload_out: str
    """Uploads ``out.tar`` (the main container's, inside ``in.tar``)."""

    def __repr__(self) -> str:  # a token must never reach a log through a repr
        return "Tokens(<redacted>)"


@dataclass(frozen=True)
class Upload:
    """A run's ``out.tar`` as the exchange holds it; ``data`` only when ``state`` is RECEIVED."""

    state: UploadState
    size: int
    data: bytes | None = None


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)


class Exchange:
    """The registry of runs the exchange serves; thread-safe, in memory, one entry per live sandbox."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def register(self, run_id: str, *, out_cap: int) -> Tokens:
        """Make ``run_id`` known, with two fresh tokens; SandboxError if it is registered already.

        Its ``in.tar`` comes next (:meth:`put_in`): the upload token travels inside it.
        """
        if not _RUN_ID.match(run_id):
            raise SandboxError(f"cannot register {run_id!r} with the exchange: not a run id")
        tokens = Tokens(fetch_in=secrets.token_urlsafe(32), upload_out=secrets.token_urlsafe(32))
        with self._lock:
            if run_id in self._runs:
                raise SandboxError(f"the run {run_id} is already registered with the exchange")
            self._runs[run_id] = _Run(
                in_token=tokens.fetch_in.encode(),
                out_token=tokens.upload_out.encode(),
                in_tar=_spool(),
                out_cap=out_cap,
            )
        return tokens

    def put_in(self, run_id: str, in_tar: bytes) -> None:
        """Hold ``in_tar`` as the run's staged tree (before it is released)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise SandboxError(f"the run {run_id} is not registered with the exchange")
            if run.released.is_set():
                raise SandboxError(f"the run {run_id} was released: its in.tar is fixed")
            run.in_tar.seek(0)
            run.in_tar.truncate()
            run.in_tar.write(in_tar)
            run.in_tar.seek(0)

    def release(self, run_id: str) -> None:
        """Let the run's ``in.tar`` be fetched (the backend's ``start``); SandboxError if unknown."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise SandboxError(f"the run {run_id} is not registered with the exchange")
        run.released.set()

    def fetched(self, run_id: str) -> bool:
        """Whether the run's ``in.tar`` was handed out."""
        with self._lock:
            run = self._runs.get(run_id)
            return run is not None and run.fetched

    def upload(self, run_id: str) -> Upload:
        """The run's ``out.tar``: its state and, once received whole, its bytes (untrusted)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise SandboxError(f"the run {run_id} is not registered with the exchange")
            state, size, spool = run.out_state, run.out_size, run.out_tar
        if state is not UploadState.RECEIVED or spool is None:
            return Upload(state=state, size=size)
        spool.seek(0)
        return Upload(state=state, size=size, data=spool.read(size + 1)[:size])

    def remove(self, run_id: str) -> None:
        """Forget the run and drop its tars; an unknown run is fine."""
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None:
            return
        run.released.set()  # a held fetch wakes up and finds the run gone
        run.in_tar.close()
        if run.out_tar is not None:
            run.out_tar.close()

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._runs

    @property
    def runs(self) -> list[str]:
        """The registered run ids."""
        with self._lock:
            return sorted(self._runs)

    def close(self) -> None:
        """Forget every run."""
        for run_id in self.runs:
            self.remove(run_id)

    # ------------------------------------------------------------------ the HTTP side

    def _authorize(self, request: Request, name: str) -> tuple[str, _Run] | Response:
        run_id = request.path_params["run"]
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return PlainTextResponse(
                "a bearer token is required\n", 401, headers={"WWW-Authenticate": "Bearer"}
            )
        with self._lock:
            run = self._runs.get(run_id) if _RUN_ID.match(run_id) else None
        if run is None:
            return PlainTextResponse("no such run\n", 404)
        wanted = run.in_token if name == EXCHANGE_IN else run.out_token
        if not hmac.compare_digest(presented.strip().encode(), wanted):
            log.warning("exchange: a wrong token for %s of run %s", name, run_id)
            return PlainTextResponse("wrong token\n", 403)
        return run_id, run

    async def _get_in(self, request: Request) -> Response:
        checked = self._authorize(request, EXCHANGE_IN)
        if isinstance(checked, Response):
            return checked
        run_id, run = checked
        deadline = time.monotonic() + HOLD_SECONDS
        while not run.released.is_set():  # created, not started: the fetch waits for start
            if time.monotonic() > deadline:
                return PlainTextResponse("the run has not started\n", 503)
            await asyncio.sleep(0.02)
        with self._lock:
            if self._runs.get(run_id) is not run:
                return PlainTextResponse("no such run\n", 404)
            if run.fetched:
                return PlainTextResponse("in.tar was already fetched\n", 410)
            run.fetched = True  # one try: a second fetch is refused even if this one breaks off
            data = run.in_tar.read()
            run.in_tar.seek(0)
        log.info("exchange: run %s fetched in.tar (%d bytes)", run_id, len(data))

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), CHUNK_BYTES):
                yield data[start : start + CHUNK_BYTES]

        return StreamingResponse(
            chunks(),
            media_type="application/x-tar",
            headers={"Content-Length": str(len(data)), "Cache-Control": "no-store"},
        )

    async def _put_out(self, request: Request) -> Response:
        checked = self._authorize(request, EXCHANGE_OUT)
        if isinstance(checked, Response):
            return checked
        run_id, run = checked
        with self._lock:
            if run.out_started:
                return PlainTextResponse("out.tar was already uploaded\n", 410)
            run.out_started = True
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > run.out_cap):
            self._finish_upload(run, UploadState.OVERSIZED, None, 0)
            log.warning("exchange: run %s announced an out.tar over the cap", run_id)
            return PlainTextResponse(f"out.tar is over the cap of {run.out_cap} bytes\n", 413)
        spool = _spool()
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > run.out_cap:
                    spool.close()
                    self._finish_upload(run, UploadState.OVERSIZED, None, size)
                    log.warning("exchange: run %s sent an out.tar over the cap", run_id)
                    return PlainTextResponse(
                        f"out.tar is over the cap of {run.out_cap} bytes\n", 413
                    )
                spool.write(chunk)
        except Exception:  # the upload broke off (a disconnect): remembered, not retried
            spool.close()
            self._finish_upload(run, UploadState.INCOMPLETE, None, size)
            log.warning("exchange: the out.tar upload of run %s broke off", run_id)
            raise
        self._finish_upload(run, UploadState.RECEIVED, spool, size)
        log.info("exchange: run %s uploaded out.tar (%d bytes)", run_id, size)
        return Response(status_code=204)

    def _finish_upload(
        self, run: _Run, state: UploadState, spool: IO[bytes] | None, size: int
    ) -> None:
        with self._lock:
            run.out_state, run.out_tar, run.out_size = state, spool, size

    @property
    def app(self) -> Starlette:
        """The ASGI app: the two routes and nothing else."""
        return Starlette(
            routes=[
                Route(f"/exchange/{{run}}/{EXCHANGE_IN}", self._get_in, methods=["GET"]),
                Route(f"/exchange/{{run}}/{EXCHANGE_OUT}", self._put_out, methods=["PUT"]),
            ]
        )


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the process embedding it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ExchangeServer:
    """Serves an :class:`Exchange` on ``host:port`` with uvicorn, in a thread of its own.

    ``port`` 0 picks a free port (tests); :attr:`port` tells which. Use as a context
    manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, exchange: Exchange, host: str, port: int) -> None:
        self.exchange = exchange
        self.host = host
        self._port = port
        self._server: _EmbeddedServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._start_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port it listens on (the bound one when 0 was asked)."""
        return self._port

    def start(self, timeout: float = 10.0) -> Self:
        """Bind and serve; SandboxError when the address cannot be bound or the server does not start."""
        if self._thread is not None:
            raise SandboxError("the exchange server was already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
        except OSError as exc:
            sock.close()
            raise SandboxError(
                f"cannot bind the exchange on {self.host}:{self._port}: {exc.strerror}"
            ) from exc
        self._sock = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.exchange.app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # the controller owns logging
            access_log=False,  # a token is in a header, never in a URL, but keep the log quiet
            timeout_graceful_shutdown=5,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="taskbox-exchange", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SandboxError(f"the exchange on {self.host}:{self._port} did not start")
            time.sleep(0.01)
        log.info("file exchange for Pods listening on %s:%d", self.host, self._port)
        return self

    def ensure_started(self) -> None:
        """Start serving unless it already does (the backend calls it before its first Pod)."""
        with self._start_lock:
            if self._thread is None:
                self.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; safe to call twice."""
        server, thread, sock = self._server, self._thread, self._sock
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
        if sock is not None:
            sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
