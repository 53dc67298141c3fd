"""Progress lines for the controller's event stream, written to the sandbox's log.

The controller treats them as hostile input: it parses each line strictly, caps
their number and accepts only the stages ``round``, ``checks``, ``model`` and ``tool``.
"""

from __future__ import annotations

import json
import sys

EVENT_PREFIX = "::taskbox-event::"


def report_progress(stage: str, message: str) -> None:
    """Write one progress event as a single log line."""
    line = json.dumps({"stage": stage, "message": message[:500]}, separators=(",", ":"))
    sys.stderr.write(f"{EVENT_PREFIX}{line}\n")
    sys.stderr.flush()
