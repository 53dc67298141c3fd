"""Progress lines for the controller's event stream, written to the sandbox's log (format: taskbox_wire.progress)."""

from __future__ import annotations

import sys

from taskbox_wire.progress import progress_line


def report_progress(stage: str, message: str) -> None:
    """Write one progress event as a single log line."""
    sys.stderr.write(progress_line(stage, message))
    sys.stderr.flush()
