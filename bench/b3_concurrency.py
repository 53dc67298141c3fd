"""B3/B7: N trivial tasks at once through the API: throughput, task time, memory per running task, errors, the knee.

Per level N (1, 2, 4, 8, 16), ``taskbox serve`` runs on 127.0.0.1 with
``TASKBOX_MAX_CONCURRENT_TASKS=N``, a fresh task index and the scripted model.
N clients each submit a trivial task (bench.projects, both phases) over HTTP,
follow its event stream to the end, read its view, and submit the next, for a
fixed number of rounds: N tasks run at once the whole level. Per level: tasks
per minute (succeeded tasks / makespan), p50/p95 task time as the client sees it
(submit → final), the run time the controller records, errors (a refused
submission, a task that did not succeed, a server that died), the host's CPU
use (/proc/stat), and memory sampled every half second while tasks run: the
memory cgroup usage of each running sandbox and the controller's RSS. Then the
knee (:func:`scaling`): the smallest N within 10 % of the best throughput, and
whether every level past it stays within 15 % of the best with no error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx2
from docker.errors import DockerException
from pydantic import BaseModel, ConfigDict

from bench.b6_memory import MIB, cgroup_usage
from bench.harness import (
    BENCH_LABEL,
    THIS_RUN,
    BenchContext,
    BenchError,
    BenchResult,
    Budget,
    Table,
    percentile,
    to_json,
)
from bench.projects import example_repo, trivial_script, trivial_task
from controller.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import docker

log = logging.getLogger("bench.b3")

HOST = "127.0.0.1"
LEVELS = (1, 2, 4, 8, 16)
QUICK_LEVELS = (1, 2)
#: Tasks each client runs one after the other: 2 rounds of N, so a level is more than one burst.
ROUNDS = 2
QUICK_ROUNDS = 1
BUDGET_SECONDS = 720
#: A trivial task takes 5-15 s alone; 16 at once on 2 cores, a few minutes.
TASK_TIMEOUT_SECONDS = 600
READY_SECONDS = 30
SAMPLE_SECONDS = 0.5
#: The knee: the smallest level within this fraction of the best throughput.
KNEE_WITHIN = 0.10
#: Flat past the knee: every later level within this fraction of the best throughput.
FLAT_WITHIN = 0.15
#: ``TASKBOX_BENCH_B3_LEVELS=1,2,4,8,12,16`` and ``TASKBOX_BENCH_B3_ROUNDS=3`` change the run.
LEVELS_ENV = "TASKBOX_BENCH_B3_LEVELS"
ROUNDS_ENV = "TASKBOX_BENCH_B3_ROUNDS"
#: Task keys start ``B3-``, so each task's containers are named ``taskbox-B3-...`` (spec.py).
TASK_CONTAINER_PREFIX = "taskbox-B3-"
FINAL = frozenset({"succeeded", "failed", "timeout", "cancelled", "error"})


# --- the knee (pure) -----------------------------------------------------------------------


class Scaling(BaseModel):
    """Where throughput stops rising, and what happens past it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    best_level: int
    best_tasks_per_minute: float
    knee: int
    """The smallest level whose throughput is within ``KNEE_WITHIN`` of the best."""
    knee_tasks_per_minute: float
    levels_past_knee: list[int]
    lowest_past_ratio: float | None
    """The lowest throughput past the knee as a fraction of the best; None with no level past it."""
    errors_from_knee: int
    """Errors at the knee and every level past it."""
    flat: bool | None
    """Every level past the knee within ``FLAT_WITHIN`` of the best and no error from the knee
    on; None when the knee is the largest level measured (no plateau seen yet)."""

    def summary(self) -> str:
        """One sentence for the notes and the README."""
        head = (
            f"Throughput stops rising at {self.knee} at once "
            f"({self.knee_tasks_per_minute:.1f} tasks/min; best {self.best_tasks_per_minute:.1f} "
            f"at {self.best_level})"
        )
        if self.flat is None:
            return head + ": the largest level measured, so no plateau was seen past it."
        past = ", ".join(str(level) for level in self.levels_past_knee)
        ratio = self.lowest_past_ratio or 0.0
        if self.flat:
            return (
                head + f"; past it ({past} at once) throughput stays at ≥ {ratio:.0%} of the best "
                f"with {self.errors_from_knee} errors: flat, no collapse."
            )
        return (
            head + f"; past it ({past} at once) it falls to {ratio:.0%} of the best with "
            f"{self.errors_from_knee} errors: NOT flat."
        )


def scaling(
    levels: Sequence[tuple[int, float, int]],
    *,
    knee_within: float = KNEE_WITHIN,
    flat_within: float = FLAT_WITHIN,
) -> Scaling | None:
    """The knee of ``(tasks at once, tasks per minute, errors)`` levels; None without a throughput.

    A level with errors still counts with the throughput of its succeeded tasks
    (errors make it lower, and they are counted against flatness separately).
    """
    ordered = sorted((int(n), float(tpm), int(errors)) for n, tpm, errors in levels)
    ordered = [item for item in ordered if math.isfinite(item[1])]
    if not ordered or max(tpm for _, tpm, _ in ordered) <= 0:
        return None
    best_level, best, _ = max(ordered, key=lambda item: (item[1], -item[0]))
    knee, knee_tpm, _ = next(item for item in ordered if item[1] >= (1 - knee_within) * best)
    past = [item for item in ordered if item[0] > knee]
    errors = sum(e for n, _, e in ordered if n >= knee)
    lowest = min((tpm for _, tpm, _ in past), default=None)
    ratio = None if lowest is None else round(lowest / best, 3)
    flat = None if not past else bool(ratio is not None and ratio >= 1 - flat_within and not errors)
    return Scaling(
        best_level=best_level,
        best_tasks_per_minute=round(best, 2),
        knee=knee,
        knee_tasks_per_minute=round(knee_tpm, 2),
        levels_past_knee=[n for n, _, _ in past],
        lowest_past_ratio=ratio,
        errors_from_knee=errors,
        flat=flat,
    )


def memory_per_running_task(
    samples: Sequence[tuple[int, int, int]], controller_idle_bytes: int
) -> float:
    """Median over samples with tasks running of (sandboxes' memory + the controller's growth) / running.

    ``samples``: (running sandboxes, their summed cgroup usage, the controller's
    RSS), all in bytes. A task has one container at a time (agent, then the
    judge's two), so running sandboxes are running tasks. NaN without a sample.
    """
    per_task = [
        (usage + max(0, rss - controller_idle_bytes)) / running
        for running, usage, rss in samples
        if running > 0
    ]
    return statistics.median(per_task) if per_task else math.nan


def parse_levels(text: str | None, default: Sequence[int]) -> tuple[int, ...]:
    """``"1,2,4"`` as levels (sorted, unique, 1..64); ``default`` when unset or blank."""
    if text is None or not text.strip():
        return tuple(default)
    levels = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    if not levels or levels[0] < 1 or levels[-1] > 64:
        raise BenchError(f"{LEVELS_ENV} must list numbers from 1 to 64, got {text!r}")
    return tuple(levels)


# --- the server and its memory -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size, or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Server:
    """A running ``taskbox serve``: its base URL, its process, its token."""

    base: str
    process: subprocess.Popen[bytes]
    token: str

    def client(self, timeout: float = 30) -> httpx2.Client:
        """An HTTP client for it, with the token."""
        return httpx2.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )


@contextlib.contextmanager
def serve(env: dict[str, str], log_path: Path) -> Iterator[Server]:
    """``taskbox serve`` on a free loopback port until /readyz answers; stopped (TERM, then KILL) after."""
    port = _free_port()
    token = env["TASKBOX_API_TOKENS"].split("=", 1)[0]
    command = [sys.executable, "-m", "controller", "serve", "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--log-format", "text"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://{HOST}:{port}", process, token)
        try:
            deadline = time.monotonic() + READY_SECONDS
            with server.client(timeout=5) as client:
                while True:
                    if process.poll() is not None:
                        raise BenchError(
                            f"taskbox serve exited ({process.returncode}): "
                            f"{log_path.read_text()[-800:]}"
                        )
                    with contextlib.suppress(httpx2.HTTPError):
                        if client.get("/readyz").status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise BenchError(f"taskbox serve was not ready within {READY_SECONDS} s")
                    time.sleep(0.2)
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


class Sampler:
    """Every half second until stopped: the running bench sandboxes' cgroup usage and the controller's RSS."""

    def __init__(self, client: docker.DockerClient, pid: int) -> None:
        self._client = client
        self._pid = pid
        self._stop = threading.Event()
        self.per_sandbox: list[int] = []
        #: (running sandboxes, their summed usage, controller RSS) per sample.
        self.samples: list[tuple[int, int, int]] = []
        self._thread = threading.Thread(target=self._loop, name="b3-memory", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                # Only this benchmark's tasks: another bench's sandbox (or one a killed suite
                # left running) must not count as a running task.
                items = self._client.api.containers(
                    filters={
                        "label": [f"{BENCH_LABEL}={THIS_RUN.run_id}"],
                        "name": TASK_CONTAINER_PREFIX,
                    }
                )
            except DockerException:  # a missed sample, not a failed benchmark
                log.debug("could not list the running sandboxes", exc_info=True)
                continue
            usages = [u for u in (cgroup_usage(item["Id"]) for item in items) if u is not None]
            self.per_sandbox += usages
            self.samples.append((len(usages), sum(usages), rss_bytes(self._pid) or 0))


# --- one level -----------------------------------------------------------------------------


@dataclass
class TaskSample:
    """One task as a client saw it."""

    key: str
    seconds: float | None = None
    """Submit → final state seen; None when it never ended."""
    run_seconds: float | None = None
    """``finishedAt - startedAt`` as the controller records them."""
    error: str | None = None


@dataclass
class Level:
    """What one level measured."""

    count: int
    rounds: int
    samples: list[TaskSample] = field(default_factory=list)
    makespan: float = 0.0
    cpu_percent: float = math.nan
    controller_idle_bytes: int = 0
    memory: list[tuple[int, int, int]] = field(default_factory=list)
    per_sandbox: list[int] = field(default_factory=list)
    load: tuple[float, float] = (math.nan, math.nan)
    """The host's 1-minute load average when the level started and ended (others' work included)."""

    @property
    def errors(self) -> list[str]:
        """Each failed task's error."""
        return [f"{s.key}: {s.error}" for s in self.samples if s.error]

    @property
    def succeeded(self) -> int:
        """Tasks that succeeded."""
        return sum(1 for s in self.samples if s.error is None)

    def summary(self) -> dict[str, float]:
        """The level's numbers, for the table and the JSON file."""
        seconds = [s.seconds for s in self.samples if s.seconds is not None and s.error is None]
        runs = [s.run_seconds for s in self.samples if s.run_seconds is not None]
        rss = [rss for _, _, rss in self.memory if rss]
        return {
            "tasks_at_once": self.count,
            "rounds": self.rounds,
            "tasks": len(self.samples),
            "succeeded": self.succeeded,
            "errors": len(self.errors),
            "makespan_s": round(self.makespan, 2),
            "tasks_per_minute": round(self.succeeded / self.makespan * 60, 2)
            if self.makespan
            else math.nan,
            "p50_s": round(percentile(seconds, 50), 2),
            "p95_s": round(percentile(seconds, 95), 2),
            "run_p50_s": round(percentile(runs, 50), 2),
            "cpu_percent": round(self.cpu_percent, 1),
            "load_start": round(self.load[0], 1),
            "load_end": round(self.load[1], 1),
            "peak_running_sandboxes": max((n for n, _, _ in self.memory), default=0),
            "memory_per_sandbox_median_mib": round(statistics.median(self.per_sandbox) / MIB, 1)
            if self.per_sandbox
            else math.nan,
            "memory_peak_sandboxes_mib": round(
                max((u for _, u, _ in self.memory), default=0) / MIB, 1
            ),
            "controller_rss_idle_mib": round(self.controller_idle_bytes / MIB, 1),
            "controller_rss_peak_mib": round(max(rss, default=0) / MIB, 1),
            "memory_per_running_task_mib": round(
                memory_per_running_task(self.memory, self.controller_idle_bytes) / MIB, 1
            ),
        }


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _submission(key: str) -> dict[str, Any]:
    return {"task": trivial_task(key).to_wire(), "repository": "demo", "baseRef": "HEAD"}


def run_task(client: httpx2.Client, key: str) -> TaskSample:
    """Submit one task, follow its events to the end, read its final view."""
    sample = TaskSample(key)
    started = time.perf_counter()
    deadline = time.monotonic() + TASK_TIMEOUT_SECONDS
    try:
        reply = client.post("/v1/tasks", json=_submission(key), headers={"Idempotency-Key": key})
        if reply.status_code != 202:
            sample.error = f"submit answered {reply.status_code}: {reply.text[:200]}"
            return sample
        task_id = reply.json()["id"]
        # The stream ends after the `finished` event; a dropped stream falls back to polling.
        with (
            contextlib.suppress(httpx2.HTTPError),
            client.stream(
                "GET", f"/v1/tasks/{task_id}/events", timeout=TASK_TIMEOUT_SECONDS
            ) as response,
        ):
            for _ in response.iter_lines():
                pass
        while True:
            view = client.get(f"/v1/tasks/{task_id}").json()
            if view["status"] in FINAL or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        sample.seconds = time.perf_counter() - started
    except httpx2.HTTPError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
        return sample
    if view["status"] != "succeeded":
        sample.error = f"{view['status']}: {view.get('reason')}"
    if view.get("startedAt") and view.get("finishedAt"):
        sample.run_seconds = (
            datetime.fromisoformat(view["finishedAt"]) - datetime.fromisoformat(view["startedAt"])
        ).total_seconds()
    return sample


def run_level(
    ctx: BenchContext, base_env: dict[str, str], root: Path, count: int, rounds: int
) -> Level:
    """``count`` clients, each running ``rounds`` tasks in turn, against a server of ``count`` workers."""
    level = Level(count, rounds)
    folder = root / f"level-{count}"
    folder.mkdir()
    env = {
        **base_env,
        "TASKBOX_DATABASE": str(folder / "taskbox.sqlite3"),
        "TASKBOX_RUNS_DIR": str(folder / "runs"),
        "TASKBOX_MAX_CONCURRENT_TASKS": str(count),
    }
    with serve(env, folder / "serve.log") as server:
        level.controller_idle_bytes = rss_bytes(server.process.pid) or 0

        def client_loop(worker: int) -> list[TaskSample]:
            with server.client() as client:
                return [run_task(client, f"B3-{count}x{worker}-{turn}") for turn in range(rounds)]

        busy0, total0 = cpu_times()
        load_start = os.getloadavg()[0]
        began = time.perf_counter()
        pool = ThreadPoolExecutor(count, thread_name_prefix="b3-client")
        try:
            with Sampler(ctx.client, server.process.pid) as sampler:
                for samples in pool.map(client_loop, range(count)):
                    level.samples += samples
        finally:
            # Interrupted (SIGTERM, Ctrl-C): do not wait here for clients that follow event
            # streams; stopping the server (serve's finally) ends them.
            pool.shutdown(wait=False, cancel_futures=True)
        level.makespan = time.perf_counter() - began
        busy1, total1 = cpu_times()
        level.load = (load_start, os.getloadavg()[0])
        level.cpu_percent = (busy1 - busy0) / max(1, total1 - total0) * 100
        level.memory, level.per_sandbox = sampler.samples, sampler.per_sandbox
        if server.process.poll() is not None:
            level.samples.append(
                TaskSample("server", error=f"taskbox serve exited ({server.process.returncode})")
            )
    if level.errors:
        log.warning(
            "B3 %d at once: %d errors: %s", count, len(level.errors), "; ".join(level.errors[:3])
        )
    return level


# --- the benchmark -------------------------------------------------------------------------


def _row(summary: dict[str, float]) -> list[str]:
    def num(key: str, digits: int = 0) -> str:
        value = summary[key]
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    return [
        str(int(summary["tasks_at_once"])),
        str(int(summary["tasks"])),
        num("makespan_s", 1),
        num("tasks_per_minute", 1),
        num("p50_s", 1),
        num("p95_s", 1),
        num("run_p50_s", 1),
        str(int(summary["errors"])),
        f"{num('cpu_percent')}%",
        f"{num('load_start', 1)} → {num('load_end', 1)}",
        str(int(summary["peak_running_sandboxes"])),
        num("memory_per_sandbox_median_mib"),
        num("memory_per_running_task_mib"),
        f"{num('controller_rss_idle_mib')} → {num('controller_rss_peak_mib')}",
        num("memory_peak_sandboxes_mib"),
    ]


def run(ctx: BenchContext) -> BenchResult:
    """Each level in turn, while the budget lasts; then the knee."""
    started_at, budget = datetime.now(UTC), Budget(BUDGET_SECONDS)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request drowns the progress
    levels_wanted = parse_levels(os.environ.get(LEVELS_ENV), QUICK_LEVELS if ctx.quick else LEVELS)
    rounds_wanted = int(os.environ.get(ROUNDS_ENV) or (QUICK_ROUNDS if ctx.quick else ROUNDS))
    root = ctx.folder("b3")
    repo = example_repo(root / "repo")
    script = trivial_script(root / "script.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBOX_")}
    env.update(
        {
            "TASKBOX_API_TOKENS": f"{secrets.token_urlsafe(24)}=*",
            "TASKBOX_REPOSITORIES": f"demo={repo}",
            "TASKBOX_EXECUTOR_MODULE": "bench.api_executor",
            "TASKBOX_MODEL_UPSTREAM": f"scripted:{script}",
            "TASKBOX_IMAGE": ctx.image,
            "TASKBOX_SHUTDOWN_GRACE_SECONDS": "5",
        }
    )
    cores = os.cpu_count() or 1
    summaries: list[dict[str, float]] = []
    errors: list[str] = []
    notes: list[str] = []
    for index, count in enumerate(levels_wanted):
        rounds = rounds_wanted
        best = max((s["tasks_per_minute"] for s in summaries), default=math.nan)
        left = BUDGET_SECONDS - budget.elapsed()
        if budget.spent():
            notes.append(
                f"Budget of {BUDGET_SECONDS} s spent before {count} at once: not measured."
            )
            break
        # The levels still to come at the best rate so far: when they do not fit, one round
        # each, so the largest level is measured rather than left out.
        estimate = sum(levels_wanted[index:]) * rounds / best * 60 if best > 0 else 0.0
        if rounds > 1 and math.isfinite(estimate) and estimate > left:
            rounds = 1
            notes.append(f"{count} at once ran 1 round instead of {rounds_wanted} (budget).")
        log.info("B3: %d at once, %d rounds (load average %.1f)", count, rounds, os.getloadavg()[0])
        level = run_level(ctx, env, root, count, rounds)
        summaries.append(level.summary())
        errors += [f"{count} at once: {error}" for error in level.errors]
    found = scaling(
        [(int(s["tasks_at_once"]), s["tasks_per_minute"], int(s["errors"])) for s in summaries]
    )
    table = Table(
        title=(
            f"N trivial tasks at once through the API (taskbox serve, N workers, {rounds_wanted} "
            "rounds of N), both phases"
        ),
        headers=[
            "tasks at once",
            "tasks",
            "makespan s",
            "tasks/min",
            "p50 s",
            "p95 s",
            "run p50 s",
            "errors",
            "host CPU busy",
            "load avg",
            "peak sandboxes",
            "MiB per sandbox",
            "MiB per running task",
            "controller RSS MiB idle → peak",
            "peak MiB, sandboxes",
        ],
        rows=[_row(s) for s in summaries],
    )
    if found is not None:
        per_core = found.knee_tasks_per_minute / cores
        notes.insert(
            0,
            found.summary() + f" Per core ({cores} cores): {found.knee / cores:g} at once, "
            f"{per_core:.1f} tasks/min.",
        )
    notes.append(
        "Task time is the client's (submit → final state seen, over HTTP); run p50 is the "
        "controller's startedAt → finishedAt. MiB per running task: median over samples of "
        "(the running sandboxes' cgroup usage + the controller's RSS above idle) / running sandboxes."
    )
    notes += [f"Error: {error}" for error in errors[:5]]
    return BenchResult(
        key="B3",
        title="concurrent tasks through the API: throughput and scaling",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table],
        notes=notes,
        data={
            "levels": to_json(summaries),
            "scaling": to_json(found.model_dump() if found else None),
            "cores": cores,
            "errors": to_json(errors),
            "knee_within": KNEE_WITHIN,
            "flat_within": FLAT_WITHIN,
        },
    )
