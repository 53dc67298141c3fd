"""Every error the controller raises on purpose, in one place.

    TaskboxError                      base; ``code`` is the stable API error code
    ├── InvalidTaskError (ValueError)     the task contract is malformed or asks too much
    ├── PolicyError (ValueError)          a policy file is malformed or unknown
    ├── RepositoryError                   unknown repository, bad base ref, git failure
    │   ├── UnknownRepositoryError (LookupError)  no repository of that name in the settings
    │   ├── BaseRefError (ValueError)     the base ref names no commit
    │   └── RepositoryUnavailableError    a configured repository is missing or not a git repository
    ├── SandboxError                      the engine or the container failed
    │   ├── SandboxTimeoutError (TimeoutError)  the wall-clock deadline was hit
    │   ├── ImageNotFoundError            the sandbox image is not built
    │   └── ImageBuildError               building the sandbox image failed
    ├── IngestionError                    what came out of the sandbox was refused
    ├── GatewayError                      the model gateway refused or failed
    ├── StoreError                        the task store failed, is locked, or has a newer schema
    └── ServiceError                      the task service cannot do this now
        ├── TaskNotFoundError (LookupError)   no task with that id
        ├── AuditNotFoundError (LookupError)  the task has no run record yet
        ├── IdempotencyConflictError      the key was already used with another request
        ├── TaskNotFinishedError          the result was asked for while the task is queued or running
        ├── TaskFinishedError             a cancel was asked for after the task finished
        ├── ShuttingDownError             the controller is draining and takes no new work
        ├── QueueFullError                too many tasks are already waiting
        ├── PolicyUnavailableError        the task's policy cannot be loaded (an operator's problem)
        ├── BranchExistsError             ``taskbox/<taskKey>`` already exists in the repository
        └── TaskKeyTakenError             another caller used the key, or it is queued or running

Messages say what is wrong in words a caller can act on; they never carry a
stack trace or a secret.
"""

from __future__ import annotations


class TaskboxError(Exception):
    """Base of every deliberate Taskbox failure."""

    code = "taskbox_error"


class InvalidTaskError(TaskboxError, ValueError):
    """The task contract is malformed, refers to refused paths, or asks to widen its policy."""

    code = "invalid_task"


class PolicyError(TaskboxError, ValueError):
    """A policy file does not validate, or a named policy does not exist."""

    code = "invalid_policy"


class RepositoryError(TaskboxError):
    """The repository is unknown or not a git repository, or the base ref does not resolve."""

    code = "repository_error"


class SandboxError(TaskboxError):
    """The container engine or the container itself failed."""

    code = "sandbox_error"


class SandboxTimeoutError(SandboxError, TimeoutError):
    """The sandbox ran past its wall-clock deadline and was killed."""

    code = "sandbox_timeout"


class ImageNotFoundError(SandboxError):
    """The sandbox image is missing: run ``taskbox image build``."""

    code = "image_not_found"


class ImageBuildError(SandboxError):
    """Building the sandbox image (base, wheelhouse or ``docker build``) failed."""

    code = "image_build_failed"


class IngestionError(TaskboxError):
    """The result or the commit that came out of the sandbox was refused."""

    code = "ingestion_refused"


class GatewayError(TaskboxError):
    """The model gateway refused a request or could not reach its upstream."""

    code = "gateway_error"


class UnknownRepositoryError(RepositoryError, LookupError):
    """The caller named a repository that the settings do not map to a path."""

    code = "repository_not_found"


class BaseRefError(RepositoryError, ValueError):
    """The base ref the caller sent does not name a commit of the repository."""

    code = "invalid_base_ref"


class RepositoryUnavailableError(RepositoryError):
    """A repository of the settings is missing or not a git repository (an operator's problem)."""

    code = "repository_unavailable"


class StoreError(TaskboxError):
    """The task store cannot be opened or written: locked by another controller, newer schema, I/O."""

    code = "store_error"


class ServiceError(TaskboxError):
    """A request that the task service cannot honour in the task's or the controller's state."""

    code = "service_error"


class TaskNotFoundError(ServiceError, LookupError):
    """No task has that id."""

    code = "task_not_found"


class AuditNotFoundError(ServiceError, LookupError):
    """The task has not started a run yet, or its run left no record."""

    code = "audit_not_found"


class IdempotencyConflictError(ServiceError):
    """The idempotency key was already used with a different request body."""

    code = "idempotency_conflict"


class TaskNotFinishedError(ServiceError):
    """The task is still queued or running, so it has no result yet."""

    code = "task_not_finished"


class TaskFinishedError(ServiceError):
    """The task has already finished, so it cannot be cancelled."""

    code = "task_already_finished"


class ShuttingDownError(ServiceError):
    """The controller is shutting down and takes no new tasks; retry against the next one."""

    code = "shutting_down"


class QueueFullError(ServiceError):
    """The queue holds as many tasks as the settings allow; retry later."""

    code = "queue_full"


class PolicyUnavailableError(ServiceError):
    """The policy a task would run under cannot be loaded (an operator's problem, not the caller's)."""

    code = "policy_unavailable"


class BranchExistsError(ServiceError):
    """The repository already has ``taskbox/<taskKey>``: a run of this key could never land."""

    code = "branch_exists"


class TaskKeyTakenError(ServiceError):
    """The task key is used in the repository by another caller, or is queued or running already."""

    code = "task_key_taken"
