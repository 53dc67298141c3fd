"""The model's tools: the text editor over the allowed files, run_checks and report_missing_context.

Every refusal (a path outside the plan, a symlink, a missing ``old_str``) is
returned to the model as an ``is_error`` tool result it can act on; nothing the
model sends can raise out of here.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

if TYPE_CHECKING:
    from pathlib import Path

    from anthropic.types import ToolParam, ToolTextEditor20250728Param

logger = logging.getLogger(__name__)

EDITOR_TOOL_NAME: Final = "str_replace_based_edit_tool"
RUN_CHECKS_TOOL_NAME: Final = "run_checks"
REPORT_MISSING_TOOL_NAME: Final = "report_missing_context"

#: Most characters one ``view`` returns; the rest is cut with a hint to use ``view_range``.
MAX_VIEW_CHARS = 20_000
#: Largest file the editor reads (for view or edit); bigger ones are refused, not streamed.
MAX_READ_BYTES = 2 * 1024 * 1024
#: Largest file the editor writes; generated source files are far below this.
MAX_WRITE_BYTES = 1024 * 1024
#: Most entries a directory listing shows.
MAX_LISTING_ENTRIES = 500

#: Folders and files that tools and test runs produce; never the model's work.
JUNK_DIR_NAMES = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", ".hypothesis"}
)
JUNK_SUFFIXES = (".pyc", ".pyo")

_SNIPPET_CONTEXT = 4


class ToolRefusal(Exception):  # noqa: N818 - a refusal is an answer to the model, not an error of ours
    """A tool call the model can fix: the message goes back to it as an ``is_error`` result."""


@dataclass(frozen=True)
class ToolOutcome:
    """What one tool call returns to the model."""

    text: str
    is_error: bool = False


def is_junk_path(rel: str) -> bool:
    """Whether ``rel`` is a cache or coverage artefact that must never be written or committed."""
    parts = rel.split("/")
    if any(part in JUNK_DIR_NAMES for part in parts):
        return True
    name = parts[-1]
    return name.endswith(JUNK_SUFFIXES) or name == ".coverage" or name.startswith(".coverage.")


def normalise_path(raw: object) -> str:
    """A repository-relative POSIX path without '.', '//' or a trailing '/'; '' is the root.

    Raises ToolRefusal for anything that could leave the repository: absolute
    paths, '..', NUL bytes, backslashes.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ToolRefusal("'path' must be a non-empty string relative to the repository root")
    if len(raw) > 1024 or "\\" in raw or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):  # noqa: PLR2004
        raise ToolRefusal("'path' is too long or holds a control character or a backslash")
    if raw.startswith("/"):
        hint = raw.lstrip("/")
        hint = hint.removeprefix("work/") if hint.startswith("work/") else hint
        raise ToolRefusal(
            f"absolute paths are not accepted: give paths relative to the repository root, "
            f"e.g. '{hint or 'app/main.py'}' instead of '{raw}'"
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ToolRefusal(f"'..' is not allowed in paths: {raw!r}")
    return "/".join(parts)


def _normalise_entry(entry: str) -> str:
    """A planned path from RunConfig, keeping the trailing '/' that marks a directory."""
    rel = normalise_path(entry)
    return f"{rel}/" if entry.endswith("/") and rel else rel


@dataclass(frozen=True)
class AccessRules:
    """Which repository paths the model may view and which it may write (pure, no I/O)."""

    readable: tuple[str, ...]
    writable: tuple[str, ...]

    @classmethod
    def from_plan(cls, readable_paths: Iterable[str], owns_paths: Iterable[str]) -> AccessRules:
        """Rules from RunConfig; every owned path is readable too."""
        owned = tuple(sorted({_normalise_entry(p) for p in owns_paths}))
        readable = tuple(sorted({_normalise_entry(p) for p in readable_paths} | set(owned)))
        return cls(readable=readable, writable=owned)

    @staticmethod
    def _covered(rel: str, entries: tuple[str, ...]) -> bool:
        for entry in entries:
            if entry.endswith("/"):
                if rel.startswith(entry):
                    return True
            elif rel == entry:
                return True
        return False

    def may_read(self, rel: str) -> bool:
        """A file the model may view."""
        return bool(rel) and self._covered(rel, self.readable)

    def may_write(self, rel: str) -> bool:
        """A file the model may create or change: under an owned path and not a cache artefact."""
        return bool(rel) and self._covered(rel, self.writable) and not is_junk_path(rel)

    def may_list(self, rel_dir: str) -> bool:
        """A directory the model may list: the root, an ancestor of a readable path, or inside a readable directory."""
        if not rel_dir:
            return True
        prefix = f"{rel_dir}/"
        return any(
            entry.startswith(prefix) or (entry.endswith("/") and prefix.startswith(entry))
            for entry in self.readable
        )

    def may_make_dir(self, rel_dir: str) -> bool:
        """A missing directory the editor may create: an owned directory or one inside it."""
        prefix = f"{rel_dir}/"
        return any(
            entry.endswith("/") and prefix.startswith(entry) and not is_junk_path(rel_dir)
            for entry in self.writable
        )


# --------------------------------------------------------------------------- editor input


class _EditorInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str


class _View(_EditorInput):
    command: Literal["view"]
    view_range: Annotated[list[int], Field(min_length=2, max_length=2)] | None = None


class _Create(_EditorInput):
    command: Literal["create"]
    file_text: str


class _StrReplace(_EditorInput):
    command: Literal["str_replace"]
    old_str: Annotated[str, StringConstraints(min_length=1)]
    new_str: str | None = None


class _Insert(_EditorInput):
    command: Literal["insert"]
    insert_line: int
    # The model sends ``insert_text``; older documentation says ``new_str``. Accept either.
    insert_text: str | None = None
    new_str: str | None = None


_EDITOR_INPUTS: dict[str, type[_EditorInput]] = {
    "view": _View,
    "create": _Create,
    "str_replace": _StrReplace,
    "insert": _Insert,
}


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "input"
        problems.append(f"{where}: {err['msg']}")
    return "; ".join(problems[:5])


def _numbered(lines: list[str], first_number: int) -> str:
    """Lines as ``cat -n`` prints them, the form the editor tool's users expect."""
    return "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(lines, start=first_number))


def _cut(text: str, limit: int, hint: str) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    head = head[: head.rfind("\n")] if "\n" in head else head
    return f"{head}\n[output cut at {limit} characters; {hint}]"


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceEditor:
    """The text editor tool over ``workdir``: views only planned paths, writes only owned ones.

    Every path is walked component by component with ``O_NOFOLLOW`` from a
    directory descriptor, so a symlink anywhere on the way is refused rather
    than followed, whatever the model or its tests planted.
    """

    def __init__(self, workdir: Path, rules: AccessRules) -> None:
        self._workdir = workdir
        self._rules = rules
        self._written: dict[str, None] = {}
        self._write_count = 0

    @property
    def rules(self) -> AccessRules:
        """The access rules this editor enforces."""
        return self._rules

    @property
    def write_count(self) -> int:
        """How many writes the editor made; a change means earlier check results are stale."""
        return self._write_count

    @property
    def written_paths(self) -> list[str]:
        """Every path the model wrote through this editor, sorted."""
        return sorted(self._written)

    # ------------------------------------------------------------------ dispatch

    def handle(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        """Run one editor command; refusals become ``is_error`` outcomes."""
        try:
            return ToolOutcome(self._dispatch(tool_input))
        except ToolRefusal as exc:
            return ToolOutcome(str(exc), is_error=True)

    def _dispatch(self, tool_input: Mapping[str, Any]) -> str:
        command = tool_input.get("command")
        if command == "undo_edit":
            raise ToolRefusal("undo_edit is not available: make the reverse edit with str_replace")
        model = _EDITOR_INPUTS.get(command) if isinstance(command, str) else None
        if model is None:
            raise ToolRefusal(
                f"unknown command {command!r}: use one of {', '.join(sorted(_EDITOR_INPUTS))}"
            )
        try:
            parsed = model.model_validate(dict(tool_input))
        except ValidationError as exc:
            raise ToolRefusal(f"invalid {command} input: {_validation_message(exc)}") from exc
        rel = normalise_path(parsed.path)
        if isinstance(parsed, _View):
            return self.view(rel, parsed.view_range)
        if isinstance(parsed, _Create):
            return self.create(rel, parsed.file_text)
        if isinstance(parsed, _StrReplace):
            return self.str_replace(rel, parsed.old_str, parsed.new_str or "")
        if isinstance(parsed, _Insert):
            text = parsed.insert_text if parsed.insert_text is not None else parsed.new_str
            if text is None:
                raise ToolRefusal("insert needs 'insert_text' (the text to insert)")
            return self.insert(rel, parsed.insert_line, text)
        raise ToolRefusal(
            f"unknown command {command!r}"
        )  # pragma: no cover - the map is exhaustive

    # ------------------------------------------------------------------ commands

    def view(self, rel: str, view_range: list[int] | None = None) -> str:
        """A file with line numbers, or a directory listing two levels deep."""
        if self._is_dir(rel):
            if not self._rules.may_list(rel):
                raise ToolRefusal(f"'{rel}' is outside the files planned for this task")
            return self._listing(rel)
        if not self._rules.may_read(rel):
            raise ToolRefusal(
                f"'{rel}' is outside the files planned for this task; if you need it, "
                f"call {REPORT_MISSING_TOOL_NAME} with the path and the reason"
            )
        lines = self.read_text(rel).split("\n")
        if lines[-1] == "":
            lines.pop()
        if not lines:
            return f"{rel} is empty."
        first, last = 1, len(lines)
        if view_range is not None:
            first, last = self._check_range(view_range, len(lines))
        body = _numbered(lines[first - 1 : last], first)
        return _cut(
            body,
            MAX_VIEW_CHARS,
            f"{rel} has {len(lines)} lines; view a smaller view_range, e.g. [{first}, {first + 199}]",
        )

    def create(self, rel: str, file_text: str) -> str:
        """Write a whole file (new, or replacing an owned one such as an empty placeholder)."""
        created = self._write_text(rel, file_text)
        count = file_text.count("\n") + (0 if file_text.endswith("\n") or not file_text else 1)
        verb = "Created" if created else "Overwrote"
        return f"{verb} {rel} ({count} lines)."

    def str_replace(self, rel: str, old_str: str, new_str: str) -> str:
        """Replace the one exact occurrence of ``old_str``; none or several is a refusal."""
        self._require_writable(rel)
        content = self.read_text(rel)
        first = content.find(old_str)
        if first < 0:
            raise ToolRefusal(
                f"old_str was not found in {rel}; it must match exactly, including whitespace "
                f"and indentation (view the file and copy the text)"
            )
        second = content.find(old_str, first + 1)
        if second >= 0:
            lines: list[str] = []
            at = first
            while at >= 0 and len(lines) < 10:  # noqa: PLR2004 - enough to locate them
                lines.append(str(content.count("\n", 0, at) + 1))
                at = content.find(old_str, at + 1)
            raise ToolRefusal(
                f"old_str occurs more than once in {rel} (at lines {', '.join(lines)}); "
                f"include more surrounding lines so it is unique"
            )
        updated = content[:first] + new_str + content[first + len(old_str) :]
        self._write_text(rel, updated)
        start_line = content.count("\n", 0, first) + 1
        return f"Edited {rel}.\n{self._snippet(updated, start_line, new_str.count(chr(10)) + 1)}"

    def insert(self, rel: str, insert_line: int, text: str) -> str:
        """Insert ``text`` after line ``insert_line`` (0 inserts at the top)."""
        self._require_writable(rel)
        content = self.read_text(rel)
        lines = content.splitlines(keepends=True)
        if not 0 <= insert_line <= len(lines):
            raise ToolRefusal(
                f"insert_line {insert_line} is outside {rel}, which has {len(lines)} lines "
                f"(use 0 to {len(lines)})"
            )
        if lines and insert_line == len(lines) and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        block = text if text.endswith("\n") else f"{text}\n"
        updated = "".join([*lines[:insert_line], block, *lines[insert_line:]])
        self._write_text(rel, updated)
        return (
            f"Inserted into {rel}.\n{self._snippet(updated, insert_line + 1, block.count(chr(10)))}"
        )

    # ------------------------------------------------------------------ reading

    def read_text(self, rel: str) -> str:
        """A planned file's UTF-8 text, read without following any symlink."""
        data = self._read_bytes(rel)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolRefusal(f"{rel} is not a UTF-8 text file") from exc

    def _read_bytes(self, rel: str) -> bytes:
        parts = rel.split("/")
        dir_fd = self._open_dir(parts[:-1], create=False, rel=rel)
        try:
            fd = self._open_at(
                dir_fd, parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, rel
            )
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ToolRefusal(f"{rel} is not a regular file")
            if info.st_size > MAX_READ_BYTES:
                raise ToolRefusal(
                    f"{rel} is {info.st_size} bytes, over the {MAX_READ_BYTES}-byte cap"
                )
            data = handle.read(MAX_READ_BYTES + 1)
        if len(data) > MAX_READ_BYTES:
            raise ToolRefusal(f"{rel} is over the {MAX_READ_BYTES}-byte cap")
        return data

    def _is_dir(self, rel: str) -> bool:
        if not rel:
            return True
        parts = rel.split("/")
        try:
            fd = self._open_dir(parts, create=False, rel=rel)
        except ToolRefusal:
            return False
        os.close(fd)
        return True

    def _listing(self, rel: str) -> str:
        entries: list[str] = []
        fd = self._open_dir(rel.split("/") if rel else [], create=False, rel=rel or ".")
        try:
            self._list_into(fd, rel, depth=2, out=entries)
        finally:
            os.close(fd)
        shown = rel or "."
        if not entries:
            return f"{shown}/ holds no files you may view."
        more = ""
        if len(entries) > MAX_LISTING_ENTRIES:
            more = f"\n[{len(entries) - MAX_LISTING_ENTRIES} more entries not shown]"
            entries = entries[:MAX_LISTING_ENTRIES]
        return f"Files you may view under {shown}/ (two levels deep):\n" + "\n".join(entries) + more

    def _list_into(self, dir_fd: int, rel: str, *, depth: int, out: list[str]) -> None:
        with os.scandir(dir_fd) as scan:
            names = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan)
        for name, is_dir in names:
            child = f"{rel}/{name}" if rel else name
            if is_junk_path(child):
                continue
            if is_dir:
                if not self._rules.may_list(child):
                    continue
                out.append(f"{child}/")
                if depth > 1:
                    try:
                        sub = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
                    except OSError:
                        continue
                    try:
                        self._list_into(sub, child, depth=depth - 1, out=out)
                    finally:
                        os.close(sub)
            elif self._rules.may_read(child):
                out.append(child)

    # ------------------------------------------------------------------ writing

    def _require_writable(self, rel: str) -> None:
        if is_junk_path(rel):
            raise ToolRefusal(f"{rel} is a cache or coverage file; it is never part of the work")
        if not self._rules.may_write(rel):
            owned = ", ".join(self._rules.writable)
            raise ToolRefusal(
                f"'{rel}' is not under a path this task owns ({owned}); you may not write it"
            )

    def _write_text(self, rel: str, text: str) -> bool:
        """Write ``text`` to ``rel`` in place; True when the file did not exist before."""
        self._require_writable(rel)
        data = text.encode("utf-8")
        if len(data) > MAX_WRITE_BYTES:
            raise ToolRefusal(
                f"the new content is {len(data)} bytes, over the {MAX_WRITE_BYTES}-byte cap"
            )
        parts = rel.split("/")
        dir_fd = self._open_dir(parts[:-1], create=True, rel=rel)
        created = True
        try:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(parts[-1], flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            except FileExistsError:
                created = False
                fd = self._open_at(dir_fd, parts[-1], flags, rel)
            except OSError as exc:
                raise self._refusal_for(exc, rel) from exc
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ToolRefusal(f"{rel} is not a regular file")
            if info.st_nlink > 1:
                # Rewriting a hard-linked file would change the other name's content too.
                raise ToolRefusal(f"{rel} has other hard links; refusing to write through them")
            # Truncate only after the checks: in place, because an owned file may be a bind mount.
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self._written[rel] = None
        self._write_count += 1
        logger.info("editor wrote %s (%d bytes)", rel, len(data))
        return created

    # ------------------------------------------------------------------ descriptors

    def _open_dir(self, parts: list[str], *, create: bool, rel: str) -> int:
        """A descriptor of workdir/parts, every component opened with O_NOFOLLOW."""
        fd = os.open(self._workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for index, name in enumerate(parts):
                try:
                    nxt = os.open(name, _OPEN_DIR, dir_fd=fd)
                except FileNotFoundError:
                    so_far = "/".join(parts[: index + 1])
                    if not create or not self._rules.may_make_dir(so_far):
                        raise ToolRefusal(f"{rel}: the folder '{so_far}' does not exist") from None
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        nxt = os.open(name, _OPEN_DIR, dir_fd=fd)
                    except OSError as exc:
                        raise self._refusal_for(exc, rel) from exc
                except OSError as exc:
                    raise self._refusal_for(self._explain(exc, name, fd), rel) from exc
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_at(self, dir_fd: int, name: str, flags: int, rel: str) -> int:
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise self._refusal_for(self._explain(exc, name, dir_fd), rel) from exc

    @staticmethod
    def _explain(exc: OSError, name: str, dir_fd: int) -> OSError:
        """ELOOP for a symlink: O_DIRECTORY|O_NOFOLLOW on one reports ENOTDIR on Linux."""
        if exc.errno == errno.ENOTDIR:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                return exc
            if stat.S_ISLNK(info.st_mode):
                return OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        return exc

    @staticmethod
    def _refusal_for(exc: OSError, rel: str) -> ToolRefusal:
        if exc.errno == errno.ENOENT:
            return ToolRefusal(f"{rel} does not exist")
        if exc.errno == errno.ELOOP:
            return ToolRefusal(
                f"{rel} is or passes through a symbolic link; links are not followed"
            )
        if exc.errno == errno.ENOTDIR:
            return ToolRefusal(f"{rel}: a part of the path is a file, not a folder")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return ToolRefusal(f"{rel} cannot be written here (read-only)")
        if exc.errno == errno.ENXIO:
            return ToolRefusal(f"{rel} is not a regular file")
        return ToolRefusal(f"{rel}: {os.strerror(exc.errno or 0)}")

    @staticmethod
    def _check_range(view_range: list[int], total: int) -> tuple[int, int]:
        first, last = view_range
        if last == -1:
            last = total
        if first < 1 or first > total or last < first:
            raise ToolRefusal(
                f"view_range {view_range} does not fit a file of {total} lines "
                f"(lines are numbered from 1; use -1 as the end for 'to the end')"
            )
        return first, min(last, total)

    @staticmethod
    def _snippet(content: str, first_changed: int, changed_lines: int) -> str:
        lines = content.split("\n")
        start = max(1, first_changed - _SNIPPET_CONTEXT)
        end = min(len(lines), first_changed + changed_lines + _SNIPPET_CONTEXT - 1)
        return _numbered(lines[start - 1 : end], start)


# --------------------------------------------------------------------------- the other tools


class MissingContextInput(BaseModel):
    """Input of ``report_missing_context``: the files the model needed and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    files: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = Field(
        min_length=1, max_length=50
    )
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


@dataclass
class MissingContextLog:
    """The 'path — reason' lines the model reported, in order, without repeats."""

    entries: list[str] = field(default_factory=list)

    def handle(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        """Record one report."""
        try:
            parsed = MissingContextInput.model_validate(dict(tool_input))
        except ValidationError as exc:
            return ToolOutcome(f"invalid input: {_validation_message(exc)}", is_error=True)
        reason = " ".join(parsed.reason.split())
        for path in parsed.files:
            line = f"{path.strip()} — {reason}"
            if line not in self.entries:
                self.entries.append(line)
        return ToolOutcome(
            f"Recorded {len(parsed.files)} missing file(s); they will be listed in the result. "
            f"Carry on with what you have."
        )


def tool_definitions() -> list[ToolParam | ToolTextEditor20250728Param]:
    """The tools the model gets, in a fixed order so the cached prefix never drifts."""
    editor: ToolTextEditor20250728Param = {
        "type": "text_editor_20250728",
        "name": EDITOR_TOOL_NAME,
        "max_characters": MAX_VIEW_CHARS,
    }
    missing: ToolParam = {
        "name": REPORT_MISSING_TOOL_NAME,
        "description": (
            "Report files you need but cannot view (they are outside this task's planned context). "
            "Each file is listed in the task result as 'path — reason' so the planner can add it "
            "next time. Reporting does not make the file available; continue without it."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "files": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "Repository-relative paths of the missing files.",
                },
                "reason": {"type": "string", "description": "Why the files are needed."},
            },
            "required": ["files", "reason"],
            "additionalProperties": False,
        },
    }
    checks: ToolParam = {
        "name": RUN_CHECKS_TOOL_NAME,
        "description": (
            "Run the task's checks now on the current files: ruff, pytest with coverage, the "
            "OpenAPI contract and the ten constraints. Returns a report listing each failure "
            "in order. The same checks run when you end your turn."
        ),
        "input_schema": {"type": "object", "properties": {}, "additionalProperties": False},
    }
    return [missing, checks, editor]


@dataclass
class ModelTools:
    """Dispatches one tool_use block to its tool; unknown tools and crashes become error results."""

    editor: WorkspaceEditor
    missing_context: MissingContextLog
    run_checks: Callable[[], str]

    def run(self, name: str, tool_input: object) -> ToolOutcome:
        """The outcome of one tool call; never raises for anything the model sent."""
        if not isinstance(tool_input, Mapping):
            return ToolOutcome("the tool input must be a JSON object", is_error=True)
        handlers: dict[str, Callable[[Mapping[str, Any]], ToolOutcome]] = {
            EDITOR_TOOL_NAME: self.editor.handle,
            REPORT_MISSING_TOOL_NAME: self.missing_context.handle,
            RUN_CHECKS_TOOL_NAME: lambda _input: ToolOutcome(self.run_checks()),
        }
        handler = handlers.get(name)
        if handler is None:
            return ToolOutcome(
                f"unknown tool {name!r}; the tools are {', '.join(sorted(handlers))}",
                is_error=True,
            )
        try:
            return handler(tool_input)
        except ToolRefusal as exc:
            return ToolOutcome(str(exc), is_error=True)
        except Exception:
            # A bug of ours must not end the run: the model gets a short error, the log the trace.
            logger.exception("tool %s failed", name)
            return ToolOutcome(
                f"{name} failed with an internal error; try another way", is_error=True
            )
