"""The policy schema: what a sandbox may see, use and produce.

Every field carries a docstring because this file is the security team's
reference; ``extra="forbid"`` makes a misspelt key fail loudly.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

#: The deny rules every policy carries whatever its file says: deny beats allow,
#: and no policy can drop these.
MANDATORY_DENY: tuple[str, ...] = (
    ".git/",
    ".git",
    ".env*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "secrets/",
)


class _PolicyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Limits(_PolicyModel):
    """Resource limits of one sandbox."""

    memory_mb: int = Field(gt=0, le=65536)
    """Memory limit in MiB; swap is set equal so the sandbox cannot swap past it."""
    cpus: float = Field(gt=0, le=64)
    """CPU quota in cores (``NanoCpus``)."""
    pids: int = Field(gt=0, le=32768)
    """Maximum number of processes and threads (cgroup pids controller)."""
    nofile: int = Field(default=1024, gt=0, le=65536)
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    file_size_mb: int = Field(default=64, gt=0, le=16384)
    """Largest file a process may write (RLIMIT_FSIZE), in MiB."""
    wall_clock_seconds: int = Field(gt=0, le=86400)
    """Deadline from start; the controller kills and removes the container past it."""
    log_max_mb: int = Field(default=10, gt=0, le=1024)
    """Size cap of the container's json-file log (stdout and stderr)."""


class TaskMaximum(_PolicyModel):
    """The most a task may ask for in its ``resources``; a request above any of these is refused."""

    memory_mb: int = Field(gt=0, le=65536)
    """Largest memory limit a task may request, in MiB."""
    cpus: float = Field(gt=0, le=64)
    """Largest CPU quota a task may request, in cores."""
    pids: int = Field(gt=0, le=32768)
    """Largest pids limit a task may request."""
    wall_clock_seconds: int = Field(gt=0, le=86400)
    """Longest deadline a task may request, in seconds."""


class Tmpfs(_PolicyModel):
    """One in-memory scratch mount inside the sandbox; always noexec, nosuid, nodev."""

    path: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./-]*$")]
    """Absolute path inside the container."""
    size_mb: int = Field(gt=0, le=8192)
    """Size cap in MiB; writes past it fail with ENOSPC (and count against memory)."""

    @field_validator("path")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        reserved = ("/work", "/out", "/taskbox", "/run/taskbox", "/proc", "/sys", "/dev")
        if (
            value == "/"
            or ".." in value.split("/")
            or any(value == r or value.startswith(r + "/") for r in reserved)
        ):
            raise ValueError(f"tmpfs path {value!r} is reserved or unsafe")
        return value


class ModelBudget(_PolicyModel):
    """What the generate-verify loop may spend on the model; enforced by the gateway."""

    allowed_models: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        min_length=1
    )
    """Model ids the gateway forwards; any other is refused with 403."""
    default_model: str
    """The model the runner asks for; must be in ``allowed_models``."""
    max_tokens_per_request: int = Field(gt=0, le=128_000)
    """Cap on ``max_tokens`` of one request; larger asks are lowered to it."""
    max_total_tokens: int = Field(gt=0)
    """Input plus output tokens the whole run may use; past it the gateway answers 429 with x-should-retry false."""
    max_requests: int = Field(gt=0, le=10_000)
    """Model requests the whole run may make."""
    max_rounds: int = Field(gt=0, le=100)
    """Verify rounds: how many times the checks may fail and go back to the model."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    """Largest request body the gateway reads, in bytes; a bigger one gets 413 before it is parsed."""
    max_requests_in_flight: int = Field(default=2, ge=1, le=16)
    """Requests of the run the gateway handles at once; one more is refused with a retryable 429."""
    max_connections: int = Field(default=8, ge=1, le=256)
    """Open connections to the run's gateway socket; one more is answered 429 and closed at once."""
    idle_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Seconds a connection may send nothing while the gateway waits for a request or its body; then it is closed."""
    max_transcript_bytes: int = Field(default=128 * 1024 * 1024, ge=65_536, le=4 * 1024**3)
    """Size cap of the run's model transcript; when it is reached the run's model budget is spent."""
    allowed_betas: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]] = (
        Field(default_factory=list, max_length=16)
    )
    """``anthropic-beta`` flags the gateway forwards; any other flag is refused with 400 (none by default)."""

    @model_validator(mode="after")
    def _default_allowed(self) -> ModelBudget:
        if self.default_model not in self.allowed_models:
            raise ValueError(f"default_model {self.default_model!r} is not in allowed_models")
        return self


class Ingestion(_PolicyModel):
    """What the controller accepts from the sandbox's output."""

    max_result_bytes: int = Field(default=1_000_000, gt=0, le=64_000_000)
    """Size cap of ``result.json``."""
    max_bundle_bytes: int = Field(default=50_000_000, gt=0, le=2_000_000_000)
    """Size cap of the git bundle."""
    allow_symlinks: bool = False
    """Whether the commit may add symbolic links (under ``ownsPaths`` only)."""
    allow_executable: bool = False
    """Whether the commit may add files with the executable bit."""


class Verification(_PolicyModel):
    """Thresholds of the checks that run inside the sandbox."""

    coverage_threshold: float = Field(default=80.0, ge=0, le=100)
    """Minimum line coverage, in percent, over the code the task owns (constraint 4)."""


class Policy(_PolicyModel):
    """A complete, effective sandbox policy."""

    schema_version: Literal[1] = 1
    """Version of this schema; bumped on any incompatible change."""
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    """The policy's name; a worker's policy is named after the worker."""
    description: str = ""
    """One or two sentences on what the policy is for."""
    image: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """Image reference the sandbox runs; the image ID is recorded with every run."""
    uid: int = Field(ge=1, le=2**31 - 1)
    """User id inside the sandbox; never 0."""
    gid: int = Field(ge=1, le=2**31 - 1)
    """Group id inside the sandbox; never 0."""
    limits: Limits
    """Limits applied when the task asks for nothing."""
    max: TaskMaximum
    """The ceiling on what a task may ask for."""
    tmpfs: list[Tmpfs] = Field(min_length=1)
    """Scratch mounts; ``/tmp`` must be among them."""
    deny: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]]
    """gitignore-style rules for paths the sandbox may never see or write; the mandatory rules are always added."""
    model: ModelBudget
    """The model budget of one run."""
    ingestion: Ingestion = Field(default_factory=Ingestion)
    """What the controller accepts back."""
    verification: Verification = Field(default_factory=Verification)
    """Thresholds of the in-sandbox checks."""
    runtime_class: (
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")] | None
    ) = None
    """The Kubernetes RuntimeClass of the sandbox's Pod, e.g. ``gvisor`` or ``kata`` (a DNS-1123
    name); None runs the cluster's default runtime. Kubernetes preflight refuses a class the
    cluster does not have. The Docker backend refuses a
    policy that names one (Docker has no RuntimeClass)."""

    @field_validator("deny")
    @classmethod
    def _with_mandatory(cls, value: list[str]) -> list[str]:
        merged = list(dict.fromkeys([*MANDATORY_DENY, *value]))
        for rule in merged:
            if rule.startswith("!"):
                raise ValueError(f"deny rule {rule!r} negates: rules may only deny, never allow")
        return merged

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        if not any(t.path == "/tmp" for t in self.tmpfs):
            raise ValueError("tmpfs must include /tmp")
        paths = [t.path for t in self.tmpfs]
        if len(set(paths)) != len(paths):
            raise ValueError("a tmpfs path is listed twice")
        for field in ("memory_mb", "cpus", "pids", "wall_clock_seconds"):
            if getattr(self.limits, field) > getattr(self.max, field):
                raise ValueError(f"limits.{field} is above max.{field}")
        return self

    def digest(self) -> str:
        """sha256 over the canonical JSON of the effective policy; recorded with every run."""
        # A field added with a None default is left out while it is None, so the digest of a
        # policy that does not use it stays what earlier runs recorded.
        unset = {"runtime_class"} if self.runtime_class is None else set()
        body = self.model_dump(mode="json", exclude=unset)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
