"""Host checks: one check's verdict (ok, warn, refuse), a report of many, and version parsing.

Shared by ``controller/preflight.py`` (the checks of any host and sandbox) and each
engine's own checks (``controller/sandbox/docker/preflight.py``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

Version = tuple[int, int, int]


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


class Level(StrEnum):
    """How bad a finding is; ``refuse`` stops the controller."""

    OK = "ok"
    WARN = "warn"
    REFUSE = "refuse"


_RANK = {Level.OK: 0, Level.WARN: 1, Level.REFUSE: 2}


class Check(BaseModel):
    """One finding: what was checked, how it came out, and what to do about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    level: Level
    summary: str
    detail: str = ""
    remedy: str = ""


class PreflightReport(BaseModel):
    """Every check, the worst level, and the facts a security team wants on one screen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checks: list[Check]
    engine_version: str | None = None
    runc_version: str | None = None
    cgroup_version: str | None = None
    default_runtime: str | None = None

    @property
    def level(self) -> Level:
        """The worst level of any check (``ok`` when there are none)."""
        return max((c.level for c in self.checks), key=_RANK.__getitem__, default=Level.OK)

    @property
    def refused(self) -> bool:
        """Whether the controller must not run tasks on this host."""
        return self.level is Level.REFUSE

    def dump(self) -> dict[str, Any]:
        """The JSON form ``taskbox preflight --json`` prints."""
        return {"level": self.level.value, **self.model_dump(mode="json")}


def parse_version(raw: str | None) -> Version | None:
    """The first ``X.Y[.Z]`` in ``raw`` (a leading ``v`` and build suffixes are ignored)."""
    if not raw:
        return None
    match = _VERSION.search(raw)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def dotted(version: Version) -> str:
    return ".".join(str(part) for part in version)
