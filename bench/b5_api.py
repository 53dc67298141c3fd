"""B5: the controller API under load: ``wrk -t1 -c32`` on ``/healthz`` and ``/v1/tasks``, loopback only.

``taskbox serve`` runs on 127.0.0.1 with a fresh database seeded with 50
finished tasks (so ``/v1/tasks`` returns a full page); the floor is the smallest
FastAPI app on the same uvicorn. Each wrk run is bounded (``-d``) and every
server is stopped at the end. wrk and the server share the machine's 2 cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench.harness import BenchContext, BenchError, BenchResult, Budget, Table, expect
from bench.projects import example_repo, trivial_task
from controller.settings import PROJECT_ROOT
from controller.store import NewEvent, NewTask, TaskStore
from taskbox_wire.contract import TaskResult

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger("bench.b5")

HOST = "127.0.0.1"
CONNECTIONS = 32
SEEDED_TASKS = 50
READY_SECONDS = 30
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - always http://127.0.0.1
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback only
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def _server(command: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """Start a server, wait until /healthz answers, yield its base URL, stop it (TERM, then KILL)."""
    base = f"http://{HOST}:{port}"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + READY_SECONDS
            while True:
                if proc.poll() is not None:
                    raise BenchError(
                        f"the server exited ({proc.returncode}): {log_path.read_text()[-800:]}"
                    )
                with contextlib.suppress(OSError):
                    if _get(f"{base}/healthz")[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"the server did not answer within {READY_SECONDS} s")
                time.sleep(0.2)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


#: wrk script: every request asks for another page size (limit 51..200). With 50 tasks each
#: answer is the same 50 items, but the query differs, and 150 queries cycled through the
#: controller's 128 kept pages (least recently used goes first) never find theirs: each page
#: is rebuilt, as when a task changes between every two polls.
REBUILT_SCRIPT = """
local n = 0
request = function()
  n = (n % 150) + 1
  return wrk.format("GET", "/v1/tasks?limit=" .. (50 + n))
end
"""


def _wrk(
    url: str, seconds: int, token: str | None = None, script: Path | None = None
) -> dict[str, float]:
    """One bounded wrk run; requests/s, latency percentiles (ms), errors."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    expect(done.returncode == 0, f"wrk failed: {done.stderr.strip()}")
    text = done.stdout
    result: dict[str, float] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    expect(match is not None, f"no Requests/sec in wrk's output: {text}")
    result["requests_per_second"] = float(match.group(1)) if match else 0.0
    for pct, value, unit in re.findall(
        r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE
    ):
        result[f"p{pct}_ms"] = round(float(value) * UNITS[unit], 3)
    total = re.search(r"(\d+) requests in", text)
    result["requests"] = float(total.group(1)) if total else 0.0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    result["socket_errors"] = float(sum(int(x) for x in errors.groups())) if errors else 0.0
    return result


def _seed(database: Path, repository: str) -> None:
    """Fill the index with finished tasks, as if they had run (the service claims none: all are final)."""
    store = TaskStore(database)
    try:
        task = trivial_task("SEED-1")
        wire = json.dumps(task.to_wire())
        result = TaskResult(
            task_key=task.task_key, status="succeeded", summary="seeded"
        ).model_dump_json()
        for index in range(SEEDED_TASKS):
            new = NewTask(
                id=secrets.token_hex(16),
                task_key=f"SEED-{index}",
                repository=repository,
                base_ref="HEAD",
                base_commit="0" * 40,
                task_json=wire,
                request_hash=hashlib.sha256(f"{index}".encode()).hexdigest(),
                principal="bench",
                idempotency_key=f"seed-{index}",
            )
            record, _, _ = store.create_task(new, NewEvent("submitted", "seeded", {}))
            store.finish(
                record.id,
                status="succeeded",
                result_json=result,
                reason=None,
                event=NewEvent("finished", "seeded", {}),
            )
    finally:
        store.close()


def _executor_module() -> str:
    """controller.runs once it has make_executor; until then the same TaskRunner from bench."""
    module = importlib.import_module("controller.runs")
    return "controller.runs" if hasattr(module, "make_executor") else "bench.api_executor"


def run(ctx: BenchContext) -> BenchResult:
    """Floor, then /healthz and /v1/tasks of taskbox serve, each for a bounded wrk run."""
    started_at, budget = datetime.now(UTC), Budget(120)
    if shutil.which("wrk") is None:
        return BenchResult(
            key="B5",
            title="API under load",
            started_at=started_at,
            duration_seconds=0,
            skipped="wrk is not installed (apt-get install -y wrk)",
        )
    seconds = 3 if ctx.quick else 10
    root = ctx.folder("b5")
    repo = example_repo(root / "repo")
    token = secrets.token_urlsafe(24)
    database = root / "taskbox.sqlite3"
    seeded = ""
    try:
        _seed(database, "demo")
    except Exception as exc:  # noqa: BLE001 - the store is another module's, still in progress; measure anyway
        log.warning("could not seed the task index: %s", exc)
        seeded = f"; seeding failed ({type(exc).__name__}), the index is empty"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBOX_")}
    env.update(
        {
            "TASKBOX_API_TOKENS": f"{token}=*",
            "TASKBOX_REPOSITORIES": f"demo={repo}",
            "TASKBOX_DATABASE": str(database),
            "TASKBOX_RUNS_DIR": str(root / "runs"),
            "TASKBOX_EXECUTOR_MODULE": _executor_module(),
        }
    )
    results: dict[str, dict[str, float]] = {}
    bare = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_app:app",
        "--host",
        HOST,
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    port = _free_port()
    with _server([*bare, "--port", str(port)], env, port, root / "bare.log") as base:
        results["floor: bare FastAPI GET /healthz"] = _wrk(f"{base}/healthz", seconds)
    serve = [sys.executable, "-m", "controller", "serve", "--host", HOST, "--log-format", "text"]
    port = _free_port()
    with _server([*serve, "--port", str(port)], env, port, root / "serve.log") as base:
        status, body = _get(f"{base}/v1/tasks", token)
        expect(status == 200, f"GET /v1/tasks answered {status}: {body[:300]!r}")
        listed = len(json.loads(body).get("items", []))
        results["taskbox GET /healthz"] = _wrk(f"{base}/healthz", seconds)
        if not budget.spent():
            results[f"taskbox GET /v1/tasks ({listed} items), polled: page reused"] = _wrk(
                f"{base}/v1/tasks", seconds, token
            )
        if not budget.spent():
            script = root / "rebuilt.lua"
            script.write_text(REBUILT_SCRIPT, encoding="utf-8")
            status, body = _get(f"{base}/v1/tasks?limit=200", token)
            expect(
                status == 200 and len(json.loads(body).get("items", [])) == listed,
                f"GET /v1/tasks?limit=200 answered {status}: {body[:300]!r}",
            )
            results[f"taskbox GET /v1/tasks ({listed} items), rebuilt every request"] = _wrk(
                f"{base}/v1/tasks", seconds, token, script
            )
    floor_rps = next(iter(results.values()))["requests_per_second"]
    rows = [
        [
            label,
            f"{r['requests_per_second']:.0f}",
            f"{r['requests_per_second'] / floor_rps:.2f}x",
            *(f"{r.get(p, float('nan')):.1f}" for p in ("p50_ms", "p90_ms", "p99_ms")),
            f"{r['non_2xx']:.0f}",
            f"{r['socket_errors']:.0f}",
        ]
        for label, r in results.items()
    ]
    table = Table(
        title=f"wrk -t1 -c{CONNECTIONS} -d{seconds}s on 127.0.0.1 (one uvicorn worker)",
        headers=[
            "endpoint",
            "req/s",
            "x floor",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "non-2xx",
            "socket errors",
        ],
        rows=rows,
    )
    health = results["taskbox GET /healthz"]
    notes = [
        (
            f"GET /healthz serves {health['requests_per_second']:.0f} req/s, {health['requests_per_second'] / floor_rps:.2f}x "
            f"the bare FastAPI floor (the difference is the controller's middleware: request ids, logging, metrics, size cap)."
        ),
        f"Executor module: {env['TASKBOX_EXECUTOR_MODULE']}{seeded}.",
    ]
    for label, listing in results.items():
        if "/v1/tasks" in label:
            notes.append(
                f"{label.removeprefix('taskbox ')}: {listing['requests_per_second']:.0f} req/s, "
                f"{listing['requests_per_second'] / floor_rps:.2f}x the floor "
                "(issue 15's target: at least 0.5x)."
            )
    notes.append(
        "Polled: the same query while no task changes; the controller answers with the page "
        "it built last, from the event loop. Rebuilt: every request a query the controller "
        "has not kept (wrk cycles 150 page sizes through its 128 kept pages), so each page is "
        "built by the one SQLite query in a worker thread, as when a task changes between polls."
    )
    return BenchResult(
        key="B5",
        title="API under load",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table],
        notes=notes,
        data={
            "wrk": {k: dict(v) for k, v in results.items()},
            "seconds": seconds,
            "connections": CONNECTIONS,
        },
    )
