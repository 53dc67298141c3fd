"""Every error the controller raises on purpose, in one place.

    TaskboxError                      base; ``code`` is the stable API error code
    ├── InvalidTaskError (ValueError)     the task contract is malformed or asks too much
    ├── PolicyError (ValueError)          a policy file is malformed or unknown
    ├── RepositoryError                   unknown repository, bad base ref, git failure
    ├── SandboxError                      the engine or the container failed
    │   ├── SandboxTimeoutError (TimeoutError)  the wall-clock deadline was hit
    │   └── ImageNotFoundError            the sandbox image is not built
    ├── IngestionError                    what came out of the sandbox was refused
    └── GatewayError                      the model gateway refused or failed

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


class IngestionError(TaskboxError):
    """The result or the commit that came out of the sandbox was refused."""

    code = "ingestion_refused"


class GatewayError(TaskboxError):
    """The model gateway refused a request or could not reach its upstream."""

    code = "gateway_error"
