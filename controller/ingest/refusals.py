"""Why ingestion refuses, as stable codes, and how refused input is shown (escaped, cut)."""

from __future__ import annotations

import re
from enum import StrEnum

from controller.errors import IngestionError

MIB = 1024 * 1024


UNSAFE_TEXT_CHARS = r"\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"


CONTROLS_IN_MESSAGES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class IngestRefusal(StrEnum):
    """Why ingestion refused; every IngestionError message starts with ``<reason>: ``."""

    RESULT_INVALID = "result_invalid"
    TASK_MISMATCH = "task_mismatch"
    PLAN_MISMATCH = "plan_mismatch"
    WORKSPACE = "workspace"
    BUNDLE_TOO_LARGE = "bundle_too_large"
    BUNDLE_INVALID = "bundle_invalid"
    BUNDLE_PREREQUISITES = "bundle_prerequisites"
    BUNDLE_REFS = "bundle_refs"
    OBJECTS_INVALID = "objects_invalid"
    HISTORY = "history"
    BASE_TREE = "base_tree_mismatch"
    TOO_MANY_CHANGES = "too_many_changes"
    INVALID_PATH = "invalid_path"
    GIT_METADATA = "git_metadata"
    OUTSIDE_OWNED = "outside_owned_paths"
    DENIED = "denied"
    SYMLINK = "symlink"
    SUBMODULE = "submodule"
    EXECUTABLE = "executable"
    ODD_MODE = "odd_mode"
    HIDDEN_PATH = "hidden_path"
    CASE_COLLISION = "case_collision"
    FILE_TOO_LARGE = "file_too_large"
    BRANCH_EXISTS = "branch_exists"
    TARGET = "target_repository"
    TIMEOUT = "timeout"


def refuse(reason: IngestRefusal, detail: str) -> IngestionError:
    return IngestionError(f"{reason}: {detail}")


def clean(text: str, limit: int = 300) -> str:
    """Text from git or the sandbox, made safe for a log line or an error message."""
    cleaned = CONTROLS_IN_MESSAGES.sub("", text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def shown(raw: bytes | str) -> str:
    """A hostile path as a quoted, escaped literal (newlines, CRs and invalid bytes visible)."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    text_shown = repr(text)
    return text_shown if len(text_shown) <= 200 else text_shown[:199] + "…"  # noqa: PLR2004 - display cap
