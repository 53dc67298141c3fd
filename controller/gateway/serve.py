"""Serving the gateway on a run's Unix socket (and TCP port): in the caller's event loop, or a thread.

The socket file is made mode 0o666 after bind: the sandbox's uid must be able
to connect, and the per-run token, not the file mode, is what authenticates.
Only the run's folder holds the socket, and the folder is mounted into one
sandbox only.

A sandbox that cannot mount the socket (a Kubernetes Pod) reaches the same
server on a TCP listener the caller binds with :func:`bind_tcp` and hands over:
one server, one app and one connection guard for both, so the caps below count
connections on either. On TCP the per-run token is the only authentication
(each run's NetworkPolicy lets its Pod reach this run's port only), and proxy
headers are never trusted: a client cannot claim another address or scheme.

The HTTP protocol is uvicorn's h11 one with the run's connection bounds
(invariant 12): at most ``model.max_connections`` open connections (one more
is answered 429 and closed at once, before it is read), a connection that
sends nothing for ``model.idle_timeout_seconds`` while the gateway waits for
its request or body is closed, and every line logged per connection or per
request draws on the gateway's rate-limited log budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import threading
from typing import TYPE_CHECKING, Any, Self

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from controller.errors import GatewayError
from controller.gateway.limits import LogBucket, RateLimitedLogger
from controller.gateway.wire import ApiError, new_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path
    from types import TracebackType

    from uvicorn.server import ServerState

    from controller.gateway.app import ModelGateway
    from controller.gateway.metering import GatewayUsage

logger = logging.getLogger(__name__)

#: Longest path a Unix socket address can hold on Linux (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
SOCKET_MODE = 0o666
#: Seconds open streams get to finish when the gateway stops; then they are cut.
GRACEFUL_SHUTDOWN_SECONDS = 5


class ConnectionGuard:
    """One gateway's connection bounds and what they did; read ``refused`` and ``timed_out`` for tests."""

    def __init__(self, max_connections: int, idle_timeout: float, bucket: LogBucket) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.log = RateLimitedLogger(logger, bucket)
        self.uvicorn_log = RateLimitedLogger(logging.getLogger("uvicorn.error"), bucket)
        self.open = 0
        """Connections open now."""
        self.refused = 0
        """Connections refused because ``max_connections`` were open."""
        self.timed_out = 0
        """Connections closed for sending nothing for ``idle_timeout`` seconds."""

    def refusal(self) -> bytes:
        """The whole HTTP answer to a connection over the cap: 429, retryable, then close."""
        request_id = new_id("req_")
        error = ApiError(
            429,
            "rate_limit_error",
            f"too many open connections to this run's gateway (at most {self.max_connections}, "
            "policy model.max_connections)",
            should_retry=True,
            retry_after=1,
        )
        body = json.dumps(error.body(request_id)).encode()
        headers = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "connection": "close",
            "request-id": request_id,
            **error.headers(),
        }
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"HTTP/1.1 429 Too Many Requests\r\n{head}\r\n".encode() + body


class _GatewayConfig(uvicorn.Config):
    """uvicorn's config plus the gateway's connection guard, which each connection's protocol reads."""

    def __init__(self, guard: ConnectionGuard, **options: Any) -> None:
        super().__init__(**options)
        self.guard = guard


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a cap on open connections and an idle timeout."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, _GatewayConfig):
            raise GatewayError("the gateway protocol needs the gateway's config")
        self._guard = config.guard
        self.logger = self._guard.uvicorn_log
        self._refused = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows it too
        guard = self._guard
        if guard.open >= guard.max_connections:
            self._refused = True
            guard.refused += 1
            guard.log.warning(
                "refused a connection to the gateway: %d are open (policy model.max_connections)",
                guard.open,
            )
            transport.write(guard.refusal())
            transport.close()
            return
        guard.open += 1
        super().connection_made(transport)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._guard.open -= 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._arm_idle()
        super().data_received(data)

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self._guard.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self.transport.is_closing():
            return
        # IDLE: no request (or only part of its head) yet; SEND_BODY: its body is still coming.
        # Otherwise the gateway is answering, which may take the model minutes: not idle.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._guard.timed_out += 1
            self._guard.log.warning(
                "closed a gateway connection that sent nothing for %s s "
                "(policy model.idle_timeout_seconds)",
                self._guard.idle_timeout,
            )
            self.transport.close()
        else:
            self._arm_idle()


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the process embedding it (the controller or CLI)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind_address(sock: socket.socket, socket_path: Path) -> None:
    """Bind ``sock`` at ``socket_path``, even when the path is longer than sun_path allows.

    Run folders can be deep; binding through ``/proc/self/fd/<dir fd>/<name>`` keeps
    the address short while the socket is made in the real folder (Linux only).
    """
    if len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH:
        sock.bind(os.fspath(socket_path))
        return
    dir_fd = os.open(socket_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        short = f"/proc/self/fd/{dir_fd}/{socket_path.name}"
        if len(os.fsencode(short)) > MAX_SOCKET_PATH:
            raise GatewayError(f"socket name is too long: {socket_path.name}")
        sock.bind(short)
    finally:
        os.close(dir_fd)


def _bind(socket_path: Path) -> socket.socket:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists() or socket_path.is_symlink():
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            raise GatewayError(f"{socket_path} exists and is not a socket; refusing to replace it")
        socket_path.unlink()  # a stale socket of a crashed gateway
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind_address(sock, socket_path)
        socket_path.chmod(SOCKET_MODE)
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot bind the gateway socket {socket_path}: {exc.strerror}") from exc
    except GatewayError:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int = 0) -> socket.socket:
    """A listening TCP socket at ``host:port`` for one run's gateway (port 0: a free one).

    Read the bound port with ``getsockname()``, then hand the socket to
    :func:`serve_gateway` or :class:`GatewayThread`, which close it when they stop.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise GatewayError(f"cannot resolve the gateway's TCP host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot bind the gateway to {host}:{port}: {exc.strerror}") from exc
    return sock


def _release(sock: socket.socket, socket_path: Path, tcp: socket.socket | None) -> None:
    sock.close()
    socket_path.unlink(missing_ok=True)
    if tcp is not None:
        tcp.close()


@contextlib.asynccontextmanager
async def serve_gateway(
    gateway: ModelGateway, socket_path: Path, *, tcp: socket.socket | None = None
) -> AsyncIterator[Path]:
    """Serve ``gateway`` on ``socket_path`` (and ``tcp``) in the running event loop until the block ends.

    On exit the server stops (open streams get a few seconds), the socket file
    is removed, ``tcp`` is closed and the gateway's upstream is closed;
    ``gateway.usage`` stays readable.
    """
    try:
        sock = _bind(socket_path)
    except GatewayError:
        if tcp is not None:
            tcp.close()
        raise
    budget = gateway.budget
    guard = ConnectionGuard(budget.max_connections, budget.idle_timeout_seconds, gateway.log_bucket)
    gateway.connections = guard
    config = _GatewayConfig(
        guard,
        app=gateway.app,
        http=_GuardedH11Protocol,
        ws="none",
        lifespan="off",
        log_config=None,  # the controller owns logging; uvicorn must not reconfigure it
        access_log=False,
        proxy_headers=False,  # no proxy stands before the gateway: X-Forwarded-* are the client's words
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _EmbeddedServer(config)
    sockets = [sock] if tcp is None else [sock, tcp]
    where = str(socket_path) if tcp is None else f"{socket_path} and {_tcp_name(tcp)}"
    task = asyncio.create_task(server.serve(sockets=sockets), name=f"gateway {socket_path}")
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped the server
                raise GatewayError(f"the gateway on {socket_path} stopped while starting")
            await asyncio.sleep(0.01)
        logger.info("model gateway (%s) listening on %s", gateway.upstream.name, where)
        yield socket_path
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            _release(sock, socket_path, tcp)
            await gateway.aclose()
            gateway.log_bucket.drain()
            logger.info(
                "model gateway on %s stopped: %s; connections refused %d, closed idle %d; "
                "log lines dropped by the rate limit %d",
                socket_path,
                gateway.usage,
                guard.refused,
                guard.timed_out,
                gateway.log_bucket.dropped,
            )


def _tcp_name(tcp: socket.socket) -> str:
    host, port = tcp.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GatewayThread:
    """``serve_gateway`` in a thread with its own event loop, for synchronous callers (the CLI).

    Use as a context manager, or call ``start()`` and ``stop()``. With ``tcp`` (from
    :func:`bind_tcp`) the gateway answers there as well, and closes it when it stops.
    """

    def __init__(
        self, gateway: ModelGateway, socket_path: Path, *, tcp: socket.socket | None = None
    ) -> None:
        self.gateway = gateway
        self.socket_path = socket_path
        self.tcp = tcp
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def usage(self) -> GatewayUsage:
        """What the run has used so far."""
        return self.gateway.usage

    def start(self, timeout: float = 10.0) -> Path:
        """Start serving; return the socket path once it accepts connections."""
        if self._thread is not None:
            raise GatewayError("this gateway thread was already started")
        self._thread = threading.Thread(
            target=self._run, name=f"gateway {self.socket_path.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise GatewayError(f"the gateway on {self.socket_path} did not start in {timeout} s")
        if self._error is not None:
            self._thread.join()
            if isinstance(self._error, GatewayError):
                raise self._error
            raise GatewayError(
                f"the gateway on {self.socket_path} failed to start"
            ) from self._error
        return self.socket_path

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            logger.error("the gateway thread on %s did not stop in %s s", self.socket_path, timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() or logged: the thread must always end
            self._error = exc
            if self._ready.is_set():
                logger.exception("the gateway thread on %s failed", self.socket_path)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_gateway(self.gateway, self.socket_path, tcp=self.tcp):
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
