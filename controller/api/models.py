"""Request and response bodies of the API (camelCase on the wire, like the task contract).

``Task`` and ``TaskResult`` come from :mod:`taskbox_wire.contract` unchanged; the
models here wrap them. Inputs forbid unknown fields; every field documents
itself, and those docstrings become the OpenAPI descriptions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints
from pydantic.alias_generators import to_camel

from controller.policy.schema import Policy
from controller.store import TaskState
from taskbox_wire.contract import Task

#: A repository name as the settings define it; never a path.
RepositoryName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
#: A git ref or commit id; refused when it could be read as an option or holds odd characters.
BaseRef = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_./@^~{}+][A-Za-z0-9_./@^~{}+-]{0,254}$"),
    Field(examples=["HEAD"]),
]
#: What an Idempotency-Key header may hold: visible ASCII, 1 to 200 characters.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
#: Task ids are 32 lowercase hex characters.
TASK_ID_PATTERN = r"^[0-9a-f]{32}$"
# A list cursor is ``after:<1 to 18 digits>`` in unpadded base64url. Callers treat it as
# opaque; the pattern is exact (every string it allows decodes to a cursor the server takes),
# so the spec and the server agree on what is refused. "after:" is 6 bytes, so it encodes
# alone to "YWZ0ZXI6"; each 3 digits then make 4 characters, 1 or 2 leftover digits 2 or 3.
_DIGIT_PAIR = "(?:[MN][DTjz]|O[DT])"  # first digit's 6 high bits, then its 2 low + next's 4 high
_DIGITS_3 = _DIGIT_PAIR + "[AEIMQUYcgk][w-z0-5]"
_DIGITS_2 = _DIGIT_PAIR + "[AEIMQUYcgk]"
_DIGITS_1 = "(?:[MN][AQgw]|O[AQ])"
CURSOR_PATTERN = f"^YWZ0ZXI6(?:{_DIGITS_3}){{0,5}}(?:{_DIGITS_3}|{_DIGITS_2}|{_DIGITS_1})$"


class ApiModel(BaseModel):
    """Base of the API's own bodies: camelCase aliases, attribute docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )


class SubmitTaskRequest(ApiModel):
    """``POST /v1/tasks``: a task, the repository (by name) and the commit to start from."""

    task: Task
    """The task contract, camelCase, as the orchestrator writes it. ``contextJson`` must hold the
    key ``<taskKey>-ctx`` (the context result: ``relevant_files``, ``world_state``) and may hold
    ``<taskKey>-schema`` and ``<taskKey>-contract``; any other key is refused (422)."""
    repository: RepositoryName
    """A repository name from the controller's settings; never a host path."""
    base_ref: BaseRef = "HEAD"
    """Ref or commit to start from; resolved to a commit id when the task is admitted."""


class TaskView(ApiModel):
    """A task's state as the API shows it."""

    id: str
    """Task id (32 hex characters)."""
    task_key: str
    """The task's key from the contract (``BE-123``)."""
    repository: str
    """Repository name."""
    base_ref: str
    """The ref as submitted."""
    base_commit: str
    """The commit that ``baseRef`` named when the task was admitted; every attempt starts here."""
    status: TaskState
    """``queued``, ``running``, or a final state: ``succeeded``, ``failed``, ``timeout``, ``cancelled``, ``error``."""
    queue_position: int | None
    """1 for the next task to start; ``null`` unless queued."""
    attempts: int
    """Runs started and not given back by a clean shutdown (at most 2: a crash re-queues once)."""
    run_id: str | None
    """The current or last run; its containers carry the label ``org.taskbox.run=<runId>``."""
    cancel_requested: bool
    """A cancel was asked for while the task ran; it ends ``cancelled`` unless it had already succeeded."""
    reason: str | None
    """Why the task did not succeed, once it is final."""
    created_by: str
    """Fingerprint of the token that submitted the task (a sha256 prefix, never the token)."""
    created_at: datetime
    """When the task was admitted."""
    started_at: datetime | None
    """When its current (or last) run started."""
    finished_at: datetime | None
    """When it reached its final state."""


class TaskPage(ApiModel):
    """One page of tasks, in submission order."""

    items: list[TaskView]
    """The tasks of this page."""
    next_cursor: str | None
    """Pass as ``cursor`` to get the next page; ``null`` on the last page."""


class EventView(ApiModel):
    """One event of a task; the ``data`` of each server-sent event."""

    seq: int
    """1, 2, 3… per task; also the SSE event id, so ``Last-Event-ID`` resumes after it."""
    stage: str
    """``queued``, ``started``, stages of the run (``admitted``, ``staged``, ``sandbox_started``, ``round``, ``checks``, ``sandbox_exited``, ``ingested``), ``cancel_requested``, ``requeued``, and last ``finished``."""
    message: str
    """One human sentence."""
    data: dict[str, JsonValue]
    """Details of the stage."""
    created_at: datetime
    """When the event was recorded."""


class AuditView(ApiModel):
    """What the latest run of a task really got."""

    task_id: str
    """Task id."""
    run_id: str
    """The run the record belongs to."""
    created_by: str
    """Fingerprint of the token that submitted the task (a sha256 prefix, never the token)."""
    audit: dict[str, JsonValue]
    """Mount plan, effective policy and its digest, image id, container settings as inspected.
    Host paths (staging, repositories, the engine's data root, log files) are shown as
    ``<host path>``; the run record on the controller keeps them."""


class PolicyView(ApiModel):
    """A policy file of the controller, validated."""

    name: str
    """Policy name (the file's stem)."""
    digest: str
    """sha256 over the policy's canonical JSON; recorded with every run."""
    policy: Policy
    """The policy, ``extends`` resolved."""


class PolicyList(ApiModel):
    """Every policy of the controller."""

    items: list[PolicyView]
    """Policies by name."""


class HealthReport(ApiModel):
    """The process answers."""

    status: Literal["ok"]
    """Always ``ok``."""


class ReadinessReport(ApiModel):
    """Every readiness check passed."""

    status: Literal["ready"]
    """Always ``ready`` (a failed check answers 503 ``not_ready`` instead)."""
    checks: dict[str, Literal["ok"]]
    """Each check by name: ``store`` (writable), ``engine`` (reachable), ``image`` (present)."""


class ErrorDetail(ApiModel):
    """What went wrong."""

    code: str
    """Stable, machine-readable code; see the API description for the list."""
    message: str
    """One sentence for a human; never a stack trace or a secret."""
    request_id: str | None = None
    """The request's id (also the ``X-Request-ID`` header); quote it to the operator."""


class ErrorResponse(ApiModel):
    """Every non-2xx answer has this body."""

    error: ErrorDetail
    """The error."""
