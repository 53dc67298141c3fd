"""RunConfig: what the controller tells the runner, written to ``/taskbox/run.json``.

The controller builds it (trusted); the runner only reads it. It imports only
pydantic and the shared contract so it works inside the sandbox image.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

from taskbox_wire.contract import Task
from taskbox_wire.paths import BASE_DIR, F2P_DIR, GATEWAY_DIR, OUTDIR, WORKDIR

GitBlobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]


class RunBudget(BaseModel):
    """The loop's own budget; the gateway enforces the token and request caps again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    max_tokens_per_request: int = Field(gt=0)
    max_total_tokens: int = Field(gt=0)
    max_rounds: int = Field(gt=0)
    wall_clock_seconds: int = Field(gt=0)


class RunConfig(BaseModel):
    """Everything the runner needs; nothing the runner could use to widen its reach."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,80}$")]
    task: Task
    base_files: dict[str, GitBlobId]
    """Every file staged under /work at the base commit, with its git blob id. The
    runner's scratch base commit holds exactly these files; the controller rebuilds
    the same tree on the host and compares."""
    base_modes: dict[str, str] = Field(default_factory=dict)
    """Git modes of ``base_files`` other than 100644 (100755 for executables)."""
    owns_paths: list[str]
    """The planned read-write paths (normalised; directories end with '/')."""
    readable_paths: list[str]
    """Every path the model may view: relevant files, the contract, and ``owns_paths``."""
    missing_context: list[str] = Field(default_factory=list)
    """Relevant files the plan refused or that were absent, each 'path — reason'."""
    openapi_path: str | None = None
    """The contract file under /work, when the task has one."""
    coverage_threshold: float = 80.0
    budget: RunBudget
    gateway_socket: Path = Path(GATEWAY_DIR) / "gateway.sock"
    gateway_url: str | None = None
    """``http://host:port`` of the gateway when it is reached over TCP (a Kubernetes Pod);
    the socket is used when this is unset."""
    gateway_token: SecretStr
    """Per-run token for the gateway; it is not the model API key and dies with the run."""
    workdir: Path = Path(WORKDIR)
    outdir: Path = Path(OUTDIR)

    @field_validator("gateway_url")
    @classmethod
    def _plain_http_origin(cls, value: str | None) -> str | None:
        """Only ``http://host[:port]``: no userinfo (a credential), path, query or fragment."""
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError("gateway_url has a bad port") from exc
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("gateway_url must be http://host[:port]")
        if "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("gateway_url must be http://host[:port] with nothing else")
        return value.rstrip("/")

    def dump_for_sandbox(self) -> str:
        """JSON for ``/taskbox/run.json``, with the gateway token revealed (and only there)."""
        data = self.model_dump(mode="json")
        data["gateway_token"] = self.gateway_token.get_secret_value()
        return json.dumps(data, indent=2, sort_keys=True)


class JudgeConfig(BaseModel):
    """What the judge's sandbox is told, written to ``/taskbox/judge.json``: no token, no model.

    The judge verifies the candidate tree at ``workdir``; ``base_dir`` is the planned
    base tree as it was (its test index and tool configuration), ``fail_to_pass_dir`` the
    base with the candidate's test files laid over it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,80}$")]
    owns_paths: list[str]
    """The planned read-write paths (normalised; directories end with '/')."""
    changed_files: list[str]
    """Files the candidate adds or modifies (from the controller's own diff)."""
    test_files: list[str]
    """The candidate's added or modified test modules: they must fail on the base."""
    openapi_path: str | None = None
    coverage_threshold: float = 80.0
    test_timeout_seconds: float = Field(gt=0)
    workdir: Path = Path(WORKDIR)
    base_dir: Path = Path(BASE_DIR)
    fail_to_pass_dir: Path = Path(F2P_DIR)
    outdir: Path = Path(OUTDIR)
