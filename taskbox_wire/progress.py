"""The progress line the runner writes to its log, which the controller parses as hostile input.

One line: ``::taskbox-event::`` then a JSON object with exactly ``stage`` and
``message``. The controller parses it strictly, caps the number of events and
accepts only the stages in :data:`STAGES`.
"""

from __future__ import annotations

import json

EVENT_PREFIX = "::taskbox-event::"
STAGES = frozenset({"round", "checks", "model", "tool"})
"""The stages a sandbox may report; anything else it prints is only logged."""
MAX_MESSAGE_CHARS = 500


def progress_line(stage: str, message: str) -> str:
    """One progress event as the single log line the controller reads (with its newline)."""
    line = json.dumps(
        {"stage": stage, "message": message[:MAX_MESSAGE_CHARS]}, separators=(",", ":")
    )
    return f"{EVENT_PREFIX}{line}\n"
