"""The shared harness of the benchmarks: samples to statistics, tables, result files, cleanup.

Every benchmark returns a :class:`BenchResult`; ``python -m bench`` merges them
into ``bench/results/<date>.json`` and ``<date>.md``. Containers a benchmark
starts carry ``org.taskbox.bench=<run id>`` and the suite's pid and host
(:class:`RunOwner`); :func:`remove_bench_containers` removes this run's, whatever
happened, and another run's only once its process is gone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import socket
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from docker.errors import DockerException, NotFound
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from controller.sandbox.docker import DockerBackend
from controller.sandbox.spec import LABEL_CONTROLLER
from controller.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    import docker

    from controller.sandbox.backend import CollectedOutput, SandboxHandle, SandboxOutcome
    from controller.sandbox.spec import ContainerSpec
    from controller.settings import Settings

log = logging.getLogger("bench")

#: Every container a benchmark starts carries this label, its value the suite run's id.
BENCH_LABEL = "org.taskbox.bench"
#: The pid and host of the suite run that made a container: another run removes it once that pid is gone.
BENCH_PID_LABEL = "org.taskbox.bench.pid"
BENCH_HOST_LABEL = "org.taskbox.bench.host"
#: Carries the suite run's owner to the servers it starts (B3's ``taskbox serve`` with
#: ``bench.api_executor``), so their containers are the run's own. Not ``TASKBOX_``: the
#: benchmarks hand their servers no ``TASKBOX_`` variable but the settings they choose.
OWNER_ENV = "BENCH_RUN_OWNER"
#: States in which a container whose owner is unknown (the old ``org.taskbox.bench=1``) is removed.
STOPPED_STATES = frozenset({"exited", "dead"})


@dataclass(frozen=True)
class RunOwner:
    """One suite run: its id (the bench label's value), its process and its host."""

    run_id: str
    pid: int
    host: str

    @property
    def controller_id(self) -> str:
        """The controller id this run gives Taskbox, so its orphan search finds only this run's."""
        return f"bench-{self.run_id[:12]}"

    def labels(self) -> dict[str, str]:
        """The labels of every container this run starts."""
        return {
            BENCH_LABEL: self.run_id,
            BENCH_PID_LABEL: str(self.pid),
            BENCH_HOST_LABEL: self.host,
        }

    def encode(self) -> str:
        """The value of :data:`OWNER_ENV`."""
        return f"{self.run_id}:{self.pid}:{self.host}"

    @classmethod
    def decode(cls, text: str) -> RunOwner | None:
        """The owner :meth:`encode` wrote, or ``None`` for anything else."""
        run_id, _, rest = text.partition(":")
        pid, _, host = rest.partition(":")
        if not (run_id.isalnum() and pid.isdigit() and host):
            return None
        return cls(run_id=run_id, pid=int(pid), host=host)

    @classmethod
    def current(cls) -> RunOwner:
        """The run this process belongs to: inherited from :data:`OWNER_ENV`, else a new one (exported)."""
        inherited = cls.decode(os.environ.get(OWNER_ENV, ""))
        if inherited is not None:
            return inherited
        owner = cls(run_id=uuid.uuid4().hex, pid=os.getpid(), host=socket.gethostname())
        os.environ[OWNER_ENV] = owner.encode()
        return owner


THIS_RUN = RunOwner.current()
BENCH_LABELS: dict[str, str] = THIS_RUN.labels()
#: The controller id the benchmarks give Taskbox, so its orphan search finds only this run's.
CONTROLLER_ID = THIS_RUN.controller_id
#: Name prefixes of peers' containers that cannot be labelled (epicbox names its own).
PEER_NAME_PREFIXES = ("epicbox-",)
#: A tag of the sandbox image for peers: a peer that deletes "its" image deletes only this tag.
PEER_IMAGE_TAG = "taskbox-bench:peer"
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
PEER_VENV = PROJECT_ROOT / "var" / "bench-venv"


class BenchError(Exception):
    """A benchmark could not measure what it meant to (wrong output, missing tool)."""


def expect(condition: object, message: str) -> None:
    """Raise BenchError unless ``condition`` holds: a benchmark of a broken path measures nothing."""
    if not condition:
        raise BenchError(message)


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Stats(BaseModel):
    """Summary of one series of samples, in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> Stats:
        """Statistics of samples given in seconds."""
        ms = [s * 1000 for s in samples]
        if not ms:
            return cls(
                n=0,
                median_ms=math.nan,
                p95_ms=math.nan,
                mean_ms=math.nan,
                min_ms=math.nan,
                max_ms=math.nan,
            )
        return cls(
            n=len(ms),
            median_ms=round(statistics.median(ms), 2),
            p95_ms=round(percentile(ms, 95), 2),
            mean_ms=round(statistics.fmean(ms), 2),
            min_ms=round(min(ms), 2),
            max_ms=round(max(ms), 2),
        )


def fmt_ms(value: float) -> str:
    """Milliseconds for a table: whole numbers, or n/a."""
    return "n/a" if math.isnan(value) else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio for a table, like ``1.23x``."""
    return "" if value is None or math.isnan(value) else f"{value:.2f}x"


# --- results -------------------------------------------------------------------------------


class Table(BaseModel):
    """One Markdown table of a benchmark's result."""

    model_config = ConfigDict(extra="forbid")

    title: str
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        """The table in GitHub Markdown, with its title in bold above it."""
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.headers) + " |")
        # Text columns (the first, and notes) align left; numbers align right.
        align = ["---" if i == 0 or h == "note" else "---:" for i, h in enumerate(self.headers)]
        lines.append("|" + "|".join(align) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


class BenchResult(BaseModel):
    """What one benchmark measured: tables for people, ``data`` for tools, notes for both."""

    model_config = ConfigDict(extra="forbid")

    key: str
    title: str
    started_at: datetime
    duration_seconds: float
    tables: list[Table] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    data: dict[str, JsonValue] = Field(default_factory=dict)
    skipped: str | None = None
    load_average: list[float] = Field(default_factory=list)
    """The host's 1-minute load average before and after: other work on the machine skews every number."""


class ResultsFile(BaseModel):
    """``bench/results/<date>.json``: the latest result of each benchmark run that day."""

    model_config = ConfigDict(extra="forbid")

    date: str
    machine: dict[str, JsonValue]
    benchmarks: dict[str, BenchResult]


def timing_table(
    title: str,
    series: Mapping[str, Sequence[float]],
    *,
    floor: str | None = None,
    also: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> tuple[Table, dict[str, JsonValue]]:
    """A table of median, p95, min, max (ms) and the ratio of medians to ``floor`` (and ``also``).

    Returns the table and the same numbers as data for the JSON file.
    """
    stats = {label: Stats.of_seconds(samples) for label, samples in series.items()}
    bases = {
        name: stats[label].median_ms
        for name, label in (("floor", floor), ("also", also))
        if label is not None and label in stats
    }
    headers = ["variant", "n", "median ms", "p95 ms", "min ms", "max ms"]
    if "floor" in bases:
        headers.append("x floor")
    if "also" in bases:
        headers.append(f"x {str(also).split('.', 1)[0]}")
    headers.append("note")
    rows: list[list[str]] = []
    data: dict[str, JsonValue] = {}
    for label, item in stats.items():
        ratios = {name: item.median_ms / base if base else None for name, base in bases.items()}
        row = [
            label,
            str(item.n),
            fmt_ms(item.median_ms),
            fmt_ms(item.p95_ms),
            fmt_ms(item.min_ms),
            fmt_ms(item.max_ms),
        ]
        row += [fmt_ratio(ratios[name]) for name in ("floor", "also") if name in ratios]
        row.append((notes or {}).get(label, ""))
        rows.append(row)
        entry: dict[str, JsonValue] = dict(item.model_dump())
        for name, ratio in ratios.items():
            key = "ratio_to_floor" if name == "floor" else f"ratio_to_{also}"
            entry[key] = None if ratio is None or math.isnan(ratio) else round(ratio, 3)
        data[label] = entry
    return Table(title=title, headers=headers, rows=rows), data


def render_markdown(results: ResultsFile) -> str:
    """The day's results as one Markdown page."""
    machine = results.machine
    lines = [
        f"# Taskbox benchmarks, {results.date}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
    ]
    for key in sorted(results.benchmarks):
        bench = results.benchmarks[key]
        lines += [
            f"## {bench.key}: {bench.title}",
            "",
            f"Run {bench.started_at:%Y-%m-%d %H:%M} UTC, took {bench.duration_seconds:.0f} s"
            + (
                f"; load average {bench.load_average[0]:.1f} → {bench.load_average[-1]:.1f} on "
                f"{machine.get('cpus')} CPUs."
                if bench.load_average
                else "."
            ),
            "",
        ]
        if bench.skipped:
            lines += [f"Skipped: {bench.skipped}", ""]
        for table in bench.tables:
            lines += [table.markdown(), ""]
        lines += [f"- {note}" for note in bench.notes]
        if bench.notes:
            lines.append("")
    return "\n".join(lines)


def write_results(
    results: Sequence[BenchResult],
    machine: dict[str, JsonValue],
    directory: Path = RESULTS_DIR,
    today: str | None = None,
) -> tuple[Path, Path]:
    """Merge ``results`` into the day's JSON (replacing runs of the same benchmark), write both files."""
    day = today or datetime.now(UTC).strftime("%Y-%m-%d")
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{day}.json", directory / f"{day}.md"
    benchmarks: dict[str, BenchResult] = {}
    if json_path.is_file():
        try:
            benchmarks = ResultsFile.model_validate_json(json_path.read_text()).benchmarks
        except ValueError:
            log.warning("%s is not a results file; starting it anew", json_path)
    benchmarks.update({r.key: r for r in results})
    document = ResultsFile(date=day, machine=machine, benchmarks=benchmarks)
    json_path.write_text(document.model_dump_json(indent=2) + "\n")
    md_path.write_text(render_markdown(document))
    return json_path, md_path


# --- the machine and the engine ------------------------------------------------------------


def machine_info(client: docker.DockerClient) -> dict[str, JsonValue]:
    """What the numbers were measured on."""
    version: dict[str, Any] = client.version()
    info: dict[str, Any] = client.info()
    memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": str(version.get("Version", "")),
        "runtime": str(info.get("DefaultRuntime", "")),
        "cgroup": str(info.get("CgroupVersion", "")),
        "storage": str(info.get("Driver", "")),
    }


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def removable(
    labels: Mapping[str, str],
    state: str,
    *,
    owner: RunOwner,
    alive: Callable[[int], bool] = pid_alive,
) -> bool:
    """Whether the run ``owner`` may remove a container with these labels, in this state.

    Its own containers (its run id, or its controller id), yes. Another run's only
    when that run's process is gone, and only when it ran on this host (a pid of
    another machine says nothing here). A bench container of unknown owner (the
    old ``org.taskbox.bench=1``) only once it has stopped.
    """
    run = labels.get(BENCH_LABEL)
    if run == owner.run_id or labels.get(LABEL_CONTROLLER) == owner.controller_id:
        return True
    if run is None:
        return False
    pid, host = labels.get(BENCH_PID_LABEL, ""), labels.get(BENCH_HOST_LABEL)
    if not pid.isdigit() or host is None:
        return state in STOPPED_STATES
    return host == owner.host and not alive(int(pid))


def bench_containers(
    client: docker.DockerClient, *, owner: RunOwner | None = None, peers: bool = False
) -> list[dict[str, Any]]:
    """Containers ``owner`` (this run) may remove (:func:`removable`); with ``peers``, peers' too.

    Peers' containers carry no label (epicbox names its own), so they are found by
    name prefix, and only when asked: after B1, the one benchmark that runs peers.
    """
    owner = owner or THIS_RUN
    found: dict[str, dict[str, Any]] = {}
    for labels in ([BENCH_LABEL], [f"{LABEL_CONTROLLER}={owner.controller_id}"]):
        for item in client.api.containers(all=True, filters={"label": labels}):
            if removable(item.get("Labels") or {}, str(item.get("State", "")), owner=owner):
                found[item["Id"]] = item
    for prefix in PEER_NAME_PREFIXES if peers else ():
        for item in client.api.containers(all=True, filters={"name": f"^/{prefix}"}):
            found[item["Id"]] = item
    return list(found.values())


def remove_bench_containers(
    client: docker.DockerClient, *, owner: RunOwner | None = None, peers: bool = False
) -> list[str]:
    """Force-remove every container :func:`bench_containers` finds; returns their names."""
    removed: list[str] = []
    for item in bench_containers(client, owner=owner, peers=peers):
        try:
            client.api.remove_container(item["Id"], force=True, v=True)
        except NotFound:
            continue
        except DockerException:
            log.exception("could not remove %s", item["Id"][:12])
            continue
        removed.append((item.get("Names") or [item["Id"][:12]])[0].lstrip("/"))
    return removed


# --- timing --------------------------------------------------------------------------------


@dataclass
class Budget:
    """A wall-clock budget: loops stop taking samples when it is spent, so the suite stays bounded."""

    seconds: float
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def spent(self) -> bool:
        """Whether the budget is used up."""
        return time.monotonic() - self.started >= self.seconds

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.monotonic() - self.started


def round_robin(
    variants: Mapping[str, Callable[[], float]],
    *,
    repetitions: int,
    warmup: int,
    budget: Budget,
) -> dict[str, list[float]]:
    """Run the variants in turn, ``warmup`` + ``repetitions`` rounds, collecting each one's seconds.

    Interleaving spreads the machine's drift over every variant alike, so their
    ratios within one run are fair even when the absolute numbers wander.
    """
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for index in range(warmup + repetitions):
        if budget.spent():
            log.warning("budget of %.0f s spent after %d rounds", budget.seconds, index)
            break
        for label, once in variants.items():
            seconds = once()
            if index >= warmup:
                samples[label].append(seconds)
    return samples


class Marks:
    """Named timestamps (``time.perf_counter``) collected from several threads."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        """Record ``name`` now."""
        self.items.append((name, time.perf_counter()))

    def first(self, name: str) -> float | None:
        """When ``name`` was first recorded."""
        return next((t for n, t in self.items if n == name), None)

    def last(self, name: str) -> float | None:
        """When ``name`` was last recorded."""
        return next((t for n, t in reversed(self.items) if n == name), None)


class BenchBackend(DockerBackend):
    """Taskbox's Docker backend, with the bench label added to every container and its calls timed.

    Only the label changes what is created; ``marks`` (when set) receives
    ``<method>:begin`` and ``<method>:end`` for each backend call, and the same
    prefixed with the container's phase (``agent/``, ``judge-static/``, ...;
    :func:`container_phase`), so the containers of one task can be told apart.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        marks: Marks | None = None,
        log_marks: Mapping[str, str] | None = None,
    ) -> None:
        """``log_marks``: substring of a sandbox log line -> mark recorded when such a line arrives."""
        super().__init__(client)
        self.marks = marks
        self.log_marks = dict(log_marks or {})
        #: Added to every container's environment (a benchmark's variant, e.g. a runner switch).
        self.extra_env: dict[str, str] = {}

    def _mark(self, name: str, container: str | None = None) -> None:
        if self.marks is not None:
            self.marks.mark(name)
            if container is not None:
                self.marks.mark(f"{container_phase(container)}/{name}")

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        """Create with this run's bench labels (:data:`BENCH_LABELS`) added to the spec's labels."""
        labelled = spec.model_copy(
            update={
                "labels": {**spec.labels, **BENCH_LABELS},
                "environment": {**spec.environment, **self.extra_env},
            }
        )
        self._mark("create:begin", spec.name)
        try:
            return super().create(labelled)
        finally:
            self._mark("create:end", spec.name)

    def start(self, handle: SandboxHandle) -> None:
        """Start, timed."""
        self._mark("start:begin", handle.name)
        try:
            super().start(handle)
        finally:
            self._mark("start:end", handle.name)

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None = None,
        **options: Any,
    ) -> SandboxOutcome:
        """Wait, timed; log lines matching ``log_marks`` are marked as they arrive.

        ``options`` pass through whatever else this version of the backend's ``wait`` takes.
        """
        if self.marks is not None and self.log_marks:
            on_log = _MarkingLog(
                self.marks, self.log_marks, on_log, prefix=f"{container_phase(handle.name)}/"
            )
        self._mark("wait:begin", handle.name)
        try:
            return super().wait(handle, timeout_seconds=timeout_seconds, on_log=on_log, **options)
        finally:
            self._mark("wait:end", handle.name)

    def collect(self, handle: SandboxHandle, caps: Mapping[str, int]) -> CollectedOutput:
        """Collect, timed."""
        self._mark("collect:begin", handle.name)
        try:
            return super().collect(handle, caps)
        finally:
            self._mark("collect:end", handle.name)

    def remove(self, handle: SandboxHandle) -> None:
        """Remove, timed."""
        self._mark("remove:begin", handle.name)
        try:
            super().remove(handle)
        finally:
            self._mark("remove:end", handle.name)


def container_phase(name: str) -> str:
    """A task container's phase from its name: ``taskbox-<run>-judge`` -> ``judge``, else ``agent``.

    An older judge ran in two containers (``-judge-static``, ``-judge-tests``); their
    names still map to ``judge-static`` and ``judge-tests``.
    """
    head, sep, tail = name.rpartition("-judge")
    if not (sep and head):
        return "agent"
    if not tail:
        return "judge"
    return f"judge{tail}" if tail.startswith("-") and len(tail) > 1 else "agent"


class _MarkingLog:
    """Passes log chunks on, marking the arrival of lines that contain a known substring."""

    def __init__(
        self,
        marks: Marks,
        patterns: Mapping[str, str],
        forward: Callable[[str], None] | None,
        *,
        prefix: str = "",
    ) -> None:
        """Lines are marked both as the pattern's name and as ``prefix`` + that name."""
        self._marks = marks
        self._patterns = patterns
        self._forward = forward
        self._prefix = prefix
        self._pending = ""

    def __call__(self, chunk: str) -> None:
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            for needle, name in self._patterns.items():
                if needle in line:
                    self._marks.mark(name)
                    if self._prefix:
                        self._marks.mark(self._prefix + name)
        if self._forward is not None:
            self._forward(chunk)


@dataclass
class BenchContext:
    """What every benchmark gets: the engine, settings, the image, a scratch folder, the run's size."""

    client: docker.DockerClient
    settings: Settings
    image: str
    """The sandbox image's tag (settings.image)."""
    image_id: str
    """Its content id: every variant runs exactly this image."""
    scratch: Path
    """A folder of this suite run, removed at the end."""
    quick: bool = False
    """Fewer repetitions (a smoke run of the suite, not numbers to quote)."""

    def reps(self, full: int, quick: int) -> int:
        """The repetition count for this run."""
        return quick if self.quick else full

    def folder(self, name: str) -> Path:
        """A fresh folder under the scratch folder."""
        path = self.scratch / name
        path.mkdir(parents=True, exist_ok=False)
        return path


def to_json(data: object) -> JsonValue:
    """``data`` as plain JSON (typed containers of numbers and strings become JsonValue)."""
    value: JsonValue = json.loads(json.dumps(data, default=str))
    return value


def iter_with_budget(count: int, budget: Budget) -> Iterator[int]:
    """``range(count)`` that stops early (with a warning) when the budget is spent."""
    for index in range(count):
        if budget.spent():
            log.warning("budget of %.0f s spent after %d of %d", budget.seconds, index, count)
            return
        yield index
