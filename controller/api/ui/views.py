"""What the web view shows, as plain data: pure functions from records to rows, no HTML here.

The templates lay these out; every string in them is still data and is escaped
there (autoescape, and control and bidi characters shown escaped). Host paths
are taken out here, with the API's redactor, before anything reaches a page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controller.display import duration
from controller.errors import RepositoryError
from controller.gitrepo import run_git

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from controller.api.models import EventView
    from controller.api.redact import HostPathRedactor
    from controller.gateway.transcript import TranscriptEntry

#: Longest diff shown, in characters (the rest is cut with a note; the commit has it all).
MAX_DIFF_CHARS = 512 * 1024
#: Longest text block of a transcript turn shown; the record keeps the whole of it.
MAX_BLOCK_CHARS = 20_000
#: Transcript turns shown (a run's transcript has a size cap; this bounds one page).
MAX_TURNS = 300
#: A commit id as the controller writes them (sha1 or sha256): never read as an option by git.
_COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


def parse_time(value: object) -> datetime | None:
    """An ISO timestamp (``...Z`` too) as a datetime; ``None`` when absent or not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def clock(value: datetime | None) -> str:
    """``2026-12-06 01:06:21`` (UTC), or ``-``."""
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


# --------------------------------------------------------------------------- task list


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One line of the task list."""

    id: str
    task_key: str
    repository: str
    status: str
    attempts: int
    created: str
    took: str
    reason: str | None
    queue_position: int | None


def task_rows(views: Iterable[tuple[int, str]]) -> list[TaskRow]:
    """Rows of the task list from the store's ``(seq, TaskView JSON)`` page (already redacted)."""
    rows = []
    for _, text in views:
        view: dict[str, Any] = json.loads(text)
        started, finished = parse_time(view.get("startedAt")), parse_time(view.get("finishedAt"))
        rows.append(
            TaskRow(
                id=str(view["id"]),
                task_key=str(view["taskKey"]),
                repository=str(view["repository"]),
                status=str(view["status"]),
                attempts=int(view.get("attempts") or 0),
                created=clock(parse_time(view.get("createdAt"))),
                took=duration(
                    (finished - started).total_seconds() if started and finished else None
                ),
                reason=view.get("reason"),
                queue_position=view.get("queuePosition"),
            )
        )
    return rows


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One event with its time since the task was submitted and how long until the next one."""

    seq: int
    stage: str
    message: str
    at: str
    offset: str
    took: str


def timeline(events: Sequence[EventView]) -> list[TimelineRow]:
    """The task's events as a stage timeline (the same columns as ``taskbox runs show``)."""
    if not events:
        return []
    first = events[0].created_at
    rows = []
    for index, event in enumerate(events):
        following = events[index + 1].created_at if index + 1 < len(events) else None
        rows.append(
            TimelineRow(
                seq=event.seq,
                stage=event.stage,
                message=event.message,
                at=clock(event.created_at),
                offset=duration((event.created_at - first).total_seconds()),
                took=""
                if following is None
                else duration((following - event.created_at).total_seconds()),
            )
        )
    return rows


# --------------------------------------------------------------------------- container


def _mib(value: object) -> str:
    return f"{value // 2**20} MiB" if isinstance(value, int) and value > 0 else "not limited"


def container_settings(inspected: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The settings a security review reads, from a container as the engine inspected it."""
    config: Mapping[str, Any] = inspected.get("Config") or {}
    host: Mapping[str, Any] = inspected.get("HostConfig") or {}
    nano_cpus = host.get("NanoCpus")
    rows = [
        ("image", str(config.get("Image") or inspected.get("Image") or "-")),
        ("user", str(config.get("User") or "image default")),
        # Docker keeps NetworkMode "default" when Config.NetworkDisabled takes the network away.
        ("network", "disabled" if config.get("NetworkDisabled") else "ENABLED"),
        ("network mode", str(host.get("NetworkMode") or "-")),
        ("read-only root filesystem", "yes" if host.get("ReadonlyRootfs") else "NO"),
        ("privileged", "YES" if host.get("Privileged") else "no"),
        ("capabilities dropped", ", ".join(host.get("CapDrop") or []) or "none"),
        ("capabilities added", ", ".join(host.get("CapAdd") or []) or "none"),
        ("security options", ", ".join(host.get("SecurityOpt") or []) or "none"),
        ("memory", _mib(host.get("Memory"))),
        ("memory + swap", _mib(host.get("MemorySwap"))),
        (
            "cpus",
            f"{nano_cpus / 1e9:g}" if isinstance(nano_cpus, int) and nano_cpus else "not limited",
        ),
        ("pids", str(host.get("PidsLimit") or "not limited")),
        (
            "ulimits",
            ", ".join(
                f"{u.get('Name')}={u.get('Hard')}"
                for u in host.get("Ulimits") or []
                if isinstance(u, dict)
            )
            or "none",
        ),
        (
            "tmpfs",
            ", ".join(
                f"{target} ({options})" for target, options in (host.get("Tmpfs") or {}).items()
            )
            or "none",
        ),
        ("init", "yes" if host.get("Init") else "no"),
        ("ipc mode", str(host.get("IpcMode") or "-")),
        ("runtime", str(host.get("Runtime") or "-")),
    ]
    for mount in host.get("Mounts") or []:
        if isinstance(mount, dict):
            access = "read-only" if mount.get("ReadOnly") else "read-write"
            rows.append((f"mount {mount.get('Target')}", f"{access} ({mount.get('Type')})"))
    return rows


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True, slots=True)
class DiffFile:
    """The part of a diff about one file: its header (names) and its lines with their kind."""

    title: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    """``(kind, text)``: kind is ``add``, ``del``, ``hunk`` or ``ctx``."""
    added: int = 0
    removed: int = 0


def _kind(line: str) -> str:
    if line.startswith("@@"):
        return "hunk"
    if line.startswith("+") and not line.startswith("+++ "):
        return "add"
    if line.startswith("-") and not line.startswith("--- "):
        return "del"
    return "ctx"


def diff_files(text: str) -> list[DiffFile]:
    """A unified diff split by file (``diff --git`` headers), each line classified for colour."""
    files: list[DiffFile] = []
    title: str | None = None
    lines: list[tuple[str, str]] = []

    def close() -> None:
        if title is not None:
            added = sum(kind == "add" for kind, _ in lines)
            removed = sum(kind == "del" for kind, _ in lines)
            files.append(DiffFile(title=title, lines=list(lines), added=added, removed=removed))

    for line in text.splitlines():
        if line.startswith("diff --git "):
            close()
            title, lines = line.removeprefix("diff --git "), []
            continue
        if title is None:
            title = "(diff)"
        lines.append((_kind(line), line))
    close()
    return files


def landed_diff(repo: Path, commit: str, redactor: HostPathRedactor) -> tuple[str | None, bool]:
    """The landed commit's diff against its parent (host paths redacted) and whether it was cut.

    Plumbing only, in git's safe environment (no system or user config), with no
    external diff driver and no textconv: a ``.gitattributes`` written by the model
    cannot make the controller run anything. ``None`` when the commit cannot be read.
    """
    if not _COMMIT.fullmatch(commit):
        return None, False
    try:
        raw = run_git(
            repo,
            "diff-tree",
            "-p",
            "-M",
            "--root",
            "--no-commit-id",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            commit,
        )
    except RepositoryError:
        return None, False
    text = raw.decode("utf-8", "replace")
    cut = len(text) > MAX_DIFF_CHARS
    return redactor.redact_text(text[:MAX_DIFF_CHARS]), cut


# --------------------------------------------------------------------------- transcript


@dataclass(frozen=True, slots=True)
class Block:
    """One content block of a message: text, a tool call or a tool's answer."""

    kind: str
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange with the model: what the sandbox sent new, and what the model answered."""

    number: int
    summary: str
    sent: list[Block]
    answer: list[Block]
    note: str | None = None


def _cut(text: str) -> str:
    if len(text) <= MAX_BLOCK_CHARS:
        return text
    return (
        text[:MAX_BLOCK_CHARS]
        + f"\n… ({len(text) - MAX_BLOCK_CHARS} more characters in the record)"
    )


def pretty_json(value: object) -> str:
    """``value`` as indented JSON, keys sorted (how a record's raw document is shown)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _blocks(content: object, redactor: HostPathRedactor) -> list[Block]:
    """A message's content (a string or a list of blocks) as display blocks."""
    if isinstance(content, str):
        return [Block("text", "text", _cut(redactor.redact_text(content)))]
    blocks: list[Block] = []
    for item in content if isinstance(content, list) else []:
        if not isinstance(item, dict):
            continue
        kind = str(item.get("type", "?"))
        if kind == "text":
            blocks.append(
                Block("text", "text", _cut(redactor.redact_text(str(item.get("text", "")))))
            )
        elif kind == "tool_use":
            body = pretty_json(redactor.redact(item.get("input")))
            blocks.append(Block("tool_use", f"tool call {item.get('name')}", _cut(body)))
        elif kind == "tool_result":
            inner = item.get("content")
            text = (
                "\n".join(b.body for b in _blocks(inner, redactor))
                if isinstance(inner, list)
                else redactor.redact_text(str(inner or ""))
            )
            title = "tool result (error)" if item.get("is_error") else "tool result"
            blocks.append(Block("tool_result", title, _cut(text)))
        else:
            blocks.append(Block("other", kind, _cut(pretty_json(redactor.redact(item)))))
    return blocks


def transcript_turns(entries: Sequence[TranscriptEntry], redactor: HostPathRedactor) -> list[Turn]:
    """Each model exchange of a run: the newest message the sandbox sent and the model's answer.

    A request repeats the whole conversation; only its last message is new, so that is
    what a turn shows (the first turn's is the task prompt).
    """
    turns = []
    for entry in entries[:MAX_TURNS]:
        body = entry.request.body or {}
        messages = body.get("messages") if isinstance(body, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else {}
        sent = _blocks(last.get("content") if isinstance(last, dict) else None, redactor)
        response = entry.response or {}
        answer = _blocks(response.get("content"), redactor)
        tools = [b.title.removeprefix("tool call ") for b in answer if b.kind == "tool_use"]
        stop = response.get("stop_reason")
        summary = f"{entry.request.method} {entry.request.path} → {entry.status}"
        if stop:
            summary += f", {stop}"
        if tools:
            summary += f": {', '.join(tools)}"
        note = None if entry.refusal is None else f"refused: {entry.refusal.reason}"
        turns.append(
            Turn(
                number=entry.turn or entry.seq + 1,
                summary=redactor.redact_text(summary),
                sent=sent,
                answer=answer,
                note=None if note is None else redactor.redact_text(note),
            )
        )
    return turns
