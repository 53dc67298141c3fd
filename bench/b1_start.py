"""B1: start-to-exit latency of one sandbox running ``python3 -c 'print(1)'``, floor to Taskbox to peers.

Every variant runs the same image (by content id) and must print ``1``. A
sample is the whole life of one container: create, start, wait for the exit,
read the output, remove. The in-process variants run round-robin so the
machine's drift falls on all of them alike; peers run in their own venv.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.harness import (
    BENCH_LABELS,
    CONTROLLER_ID,
    PEER_IMAGE_TAG,
    PEER_VENV,
    BenchBackend,
    BenchContext,
    BenchResult,
    Budget,
    Marks,
    Stats,
    Table,
    expect,
    fmt_ms,
    percentile,
    round_robin,
    timing_table,
)
from bench.specs import HardenedSpecs
from controller.sandbox.docker import create_kwargs
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.task_sandbox import run_in_task_sandbox
from controller.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import docker

log = logging.getLogger("bench.b1")

COMMAND = ["python3", "-c", "print(1)"]
PEERS = ("epicbox2", "llm-sandbox")
PEER_TIMEOUT_SECONDS = 60

CLI = "a. docker run --rm --network none (CLI)"
FLOOR = "b. docker-py, no options (floor)"
NET_NONE = "c1. docker-py + network_mode=none"
NET_DISABLED = "c2. docker-py + network_disabled"
HARDENED = "d0. docker-py + Taskbox's hardened create_kwargs"
BACKEND = "d. Taskbox DockerBackend.run (hardened spec)"
TASK_SANDBOX = "d+. Taskbox plan + stage + DockerBackend.run + unstage"

NOTES = {
    CLI: "includes the CLI process (Go) start",
    FLOOR: "create, start, wait, logs, remove; default bridge network",
    NET_NONE: "network sandbox with only lo",
    NET_DISABLED: "no network sandbox at all",
    HARDENED: "read-only root, cap-drop ALL, uid 10001, limits, tmpfs, bind mounts, init",
    BACKEND: "+ inspect record, log pump thread, OOM check, deadline",
    TASK_SANDBOX: "taskbox sandbox run: git plan + staging per run",
}
PHASES = ("create", "inspect", "start", "wait", "logs", "remove")
#: docker-py's calls in order (its ``containers.create`` inspects the new container itself).
DOCKER_PY_PHASES = ("create", "start", "wait", "logs", "remove")


def _docker_py_variant(
    client: docker.DockerClient,
    kwargs_for: Callable[[], dict[str, Any]],
    phases: dict[str, list[float]],
) -> Callable[[], float]:
    """One container through docker-py's high-level API; phase times go to ``phases``."""

    def once() -> float:
        kwargs = kwargs_for()
        marks = [time.perf_counter()]
        container = client.containers.create(**kwargs)
        marks.append(time.perf_counter())
        try:
            container.start()
            marks.append(time.perf_counter())
            status = container.wait(timeout=60)
            marks.append(time.perf_counter())
            output = container.logs(stdout=True, stderr=True)
            marks.append(time.perf_counter())
        finally:
            container.remove(force=True)
        marks.append(time.perf_counter())
        expect(
            status.get("StatusCode") == 0 and output.strip() == b"1",
            f"docker-py gave {status} {output!r}",
        )
        for name, begin, end in zip(DOCKER_PY_PHASES, marks, marks[1:], strict=False):
            phases.setdefault(name, []).append(end - begin)
        return marks[-1] - marks[0]

    return once


def _cli_variant(image: str) -> Callable[[], float]:
    def once() -> float:
        started = time.perf_counter()
        done = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                *(f"--label={key}={value}" for key, value in BENCH_LABELS.items()),
                image,
                *COMMAND,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        elapsed = time.perf_counter() - started
        expect(done.returncode == 0 and done.stdout.strip() == b"1", f"docker run gave {done!r}")
        return elapsed

    return once


def _backend_variant(
    backend: BenchBackend, specs: HardenedSpecs, phases: dict[str, list[float]]
) -> Callable[[], float]:
    def once() -> float:
        spec = specs.spec()
        marks = backend.marks = Marks()
        started = time.perf_counter()
        try:
            run = run_sandbox(backend, spec)
        finally:
            backend.marks = None
        elapsed = time.perf_counter() - started
        outcome = run.outcome
        expect(
            outcome.exit_code == 0 and outcome.log_tail.strip() == "1", f"backend gave {outcome!r}"
        )
        spans = {
            "create": ("create:begin", "create:end"),
            "inspect": ("create:end", "start:begin"),
            "start": ("start:begin", "start:end"),
            "wait": ("wait:begin", "wait:end"),
            "remove": ("remove:begin", "remove:end"),
        }
        for name, (begin, end) in spans.items():
            t0, t1 = marks.first(begin), marks.last(end)
            if t0 is not None and t1 is not None:
                phases.setdefault(name, []).append(t1 - t0)
        return elapsed

    return once


def _task_sandbox_variant(
    ctx: BenchContext, backend: BenchBackend, specs: HardenedSpecs
) -> Callable[[], float]:
    def once() -> float:
        started = time.perf_counter()
        done = run_in_task_sandbox(
            specs.task,
            repo=specs.repo,
            command=COMMAND,
            backend=backend,
            policies_dir=ctx.settings.policies_dir,
            runs_dir=specs.runs_dir,
            controller_id=CONTROLLER_ID,
        )
        elapsed = time.perf_counter() - started
        outcome = done.run.outcome
        expect(
            outcome.exit_code == 0 and outcome.log_tail.strip() == "1",
            f"task sandbox gave {outcome!r}",
        )
        return elapsed

    return once


def _run_peer(
    ctx: BenchContext, peer: str, repetitions: int, warmup: int, out: Path
) -> tuple[list[float], str]:
    """Samples and version of one peer, or ([], why) when it cannot run here."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        return (
            [],
            f"no {PEER_VENV} (scripts/bench makes it: pip install epicbox2 llm-sandbox[docker])",
        )
    repository, tag = PEER_IMAGE_TAG.split(":")
    ctx.client.api.tag(ctx.image_id, repository, tag)
    script = PROJECT_ROOT / "bench" / "peers.py"
    try:
        done = subprocess.run(
            [
                str(python),
                str(script),
                peer,
                PEER_IMAGE_TAG,
                str(repetitions),
                str(warmup),
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=PEER_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [], f"did not finish within {PEER_TIMEOUT_SECONDS} s"
    if done.returncode != 0 or not out.exists():
        return [], f"failed: {(done.stderr or done.stdout).strip()[-300:]}"
    answer = json.loads(out.read_text())
    return [float(s) for s in answer["samples"]], str(answer["version"])


def _paired(series: dict[str, list[float]], first: str, second: str) -> str:
    """``first`` minus ``second``, sample by sample of the same round: median and IQR, as text."""
    diffs = [(a - b) * 1000 for a, b in zip(series[first], series[second], strict=False)]
    if not diffs:
        return "n/a"
    low, mid, high = (percentile(diffs, q) for q in (25, 50, 75))
    return f"{mid:+.0f} ms (IQR {low:+.0f} … {high:+.0f})"


def _median(series: dict[str, list[float]], label: str) -> float:
    return Stats.of_seconds(series.get(label, [])).median_ms


def run(ctx: BenchContext) -> BenchResult:
    """B1 over all variants; returns the latency table, docker-py's phase split and conclusions."""
    started_at, budget = datetime.now(UTC), Budget(150)
    repetitions, warmup = ctx.reps(30, 5), ctx.reps(3, 1)
    client, image = ctx.client, ctx.image_id
    specs = HardenedSpecs(ctx, "b1", COMMAND)
    backend = BenchBackend(client)
    phases: dict[str, dict[str, list[float]]] = {
        label: {} for label in (FLOOR, NET_NONE, NET_DISABLED, HARDENED, BACKEND)
    }

    def plain(**options: Any) -> Callable[[], dict[str, Any]]:
        return lambda: {"image": image, "command": COMMAND, "labels": BENCH_LABELS, **options}

    variants: dict[str, Callable[[], float]] = {
        CLI: _cli_variant(image),
        FLOOR: _docker_py_variant(client, plain(), phases[FLOOR]),
        NET_NONE: _docker_py_variant(client, plain(network_mode="none"), phases[NET_NONE]),
        NET_DISABLED: _docker_py_variant(
            client, plain(network_disabled=True), phases[NET_DISABLED]
        ),
        HARDENED: _docker_py_variant(client, lambda: create_kwargs(specs.spec()), phases[HARDENED]),
        BACKEND: _backend_variant(backend, specs, phases[BACKEND]),
        TASK_SANDBOX: _task_sandbox_variant(ctx, backend, specs),
    }
    series = round_robin(variants, repetitions=repetitions, warmup=warmup, budget=budget)

    notes = dict(NOTES)
    versions: dict[str, str] = {}
    for peer in PEERS:
        samples, detail = _run_peer(
            ctx, peer, repetitions, warmup, ctx.scratch / f"peer-{peer}.json"
        )
        label = f"e. {peer}"
        if samples:
            series[label] = samples
            versions[peer] = detail
            notes[label] = f"{peer} {detail}, separate venv, run as a block"
        else:
            log.warning("peer %s skipped: %s", peer, detail)
            notes[label] = f"skipped: {detail}"
            series[label] = []
    notes["e. epicbox2"] += "; root, writable root, no pids limit, log driver none"
    notes["e. llm-sandbox"] += "; root, writable root, long-lived container + exec, stop"

    table, data = timing_table(
        f"Start-to-exit latency, `python3 -c 'print(1)'`, N={repetitions} sequential",
        series,
        floor=FLOOR,
        also=NET_DISABLED,
        notes=notes,
    )
    phase_rows = []
    for label, parts in phases.items():
        row = [label] + [
            fmt_ms(Stats.of_seconds(parts[p]).median_ms) if p in parts else "—" for p in PHASES
        ]
        phase_rows.append(row)
    phase_table = Table(
        title="Where the time goes (median ms per call; docker-py's create includes its own inspect)",
        headers=["variant", *PHASES],
        rows=phase_rows,
    )
    floor, none_, disabled, backend_ms = (
        _median(series, label) for label in (FLOOR, NET_NONE, NET_DISABLED, BACKEND)
    )
    net = _paired(series, NET_NONE, NET_DISABLED)
    hard = _paired(series, HARDENED, NET_DISABLED)
    machinery = _paired(series, BACKEND, HARDENED)
    staging = _paired(series, TASK_SANDBOX, BACKEND)
    conclusions = [
        (
            f"network_mode=none costs {net} a sandbox over network_disabled "
            f"(medians {none_:.0f} → {disabled:.0f} ms): with network_disabled the engine builds no network sandbox."
        ),
        f"Hardening (every restriction of the spec, bind mounts included) costs {hard} over bare docker-py with network_disabled.",
        f"DockerBackend's own machinery (inspect record, log thread, OOM check) costs {machinery} over the same create_kwargs.",
        (
            f"Taskbox's hardened sandbox takes {backend_ms / floor:.2f}x the docker-py floor (default bridge network) "
            f"and {backend_ms / disabled:.2f}x the fastest bare docker-py variant."
        ),
        f"Planning and staging per run (taskbox sandbox run) cost {staging} on top of DockerBackend.run.",
    ]
    for peer in PEERS:
        peer_ms = _median(series, f"e. {peer}")
        if not math.isnan(peer_ms):
            conclusions.append(
                f"{peer}: {peer_ms:.0f} ms median, {peer_ms / backend_ms:.2f}x Taskbox's hardened run (blocks, not paired)."
            )
    conclusions.append(
        "Differences are medians of paired differences (same round of the round-robin), with their interquartile range."
    )
    return BenchResult(
        key="B1",
        title="sandbox start-to-exit latency",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table, phase_table],
        notes=conclusions,
        data={
            "series": data,
            "phases_median_ms": {
                label: {p: Stats.of_seconds(parts.get(p, [])).median_ms for p in PHASES}
                for label, parts in phases.items()
            },
            "peer_versions": dict(versions),
            "image_id": image,
            "repetitions": repetitions,
            "warmup": warmup,
        },
    )
