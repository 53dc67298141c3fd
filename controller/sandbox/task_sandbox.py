"""Run one command in exactly the sandbox a task would get: plan, stage, run, remove.

This is what ``taskbox sandbox run`` does (and what the Docker attack tests use):
the same planner, policy, staging and container settings as a real run, with
the command in place of the runner and no model gateway behind the socket.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, SecretStr

from controller.admission import admit
from controller.errors import InvalidTaskError
from controller.gitrepo import MODE_EXECUTABLE
from controller.policy.planner import MountPlan
from controller.sandbox.backend import SandboxRun
from controller.sandbox.engines import DOCKER_WIRING, SandboxWiring
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import build_container_spec
from controller.staging import remove_staging, stage_run
from taskbox_wire.config import RunBudget, RunConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from controller.image import ImageEngine
    from controller.policy.schema import Policy
    from controller.sandbox.backend import SandboxBackend
    from taskbox_wire.contract import Task

log = logging.getLogger(__name__)

#: Labels a caller may not set: they belong to the controller (cleanup relies on them).
RESERVED_LABEL_PREFIX = "org.taskbox."


class TaskSandboxRun(BaseModel):
    """What ``run_in_task_sandbox`` did: the plan, the image, and how the command ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    image: str
    plan: MountPlan
    policy: str
    policy_digest: str
    run: SandboxRun
    staging_root: Path | None
    """The staging folder, when it was kept (``keep=True``); otherwise it is gone."""


#: The runner stops its own loop this long before the controller's hard deadline, so
#: it still has time to commit, bundle and write its result.
RUNNER_FINISH_MARGIN_SECONDS = 30


def run_config_for(
    task: Task,
    plan: MountPlan,
    policy: Policy,
    run_id: str,
    token: str | None = None,
    *,
    gateway_url: str | None = None,
) -> RunConfig:
    """The RunConfig a run of ``task`` under ``plan`` gets; a fresh random gateway token by default.

    ``gateway_url`` (``http://HOST:PORT``) is where the runner dials its gateway when it is
    a TCP endpoint (Kubernetes); None: the mounted socket.
    """
    dirs = [e.path + "/" for e in plan.read_only if e.kind == "dir"]
    files = [e.path for e in plan.read_only if e.kind == "file"]
    deadline = policy.limits.wall_clock_seconds
    return RunConfig(
        run_id=run_id,
        task=task,
        base_files={s.path: s.oid for s in plan.staged},
        base_modes={s.path: MODE_EXECUTABLE for s in plan.staged if s.executable},
        owns_paths=plan.owns_paths,
        readable_paths=sorted({*files, *dirs, *plan.owns_paths}),
        missing_context=plan.missing_context,
        openapi_path=plan.contract,
        coverage_threshold=policy.verification.coverage_threshold,
        budget=RunBudget(
            model=policy.model.default_model,
            max_tokens_per_request=policy.model.max_tokens_per_request,
            max_total_tokens=policy.model.max_total_tokens,
            max_rounds=policy.model.max_rounds,
            wall_clock_seconds=max(deadline - RUNNER_FINISH_MARGIN_SECONDS, deadline // 2),
        ),
        gateway_token=SecretStr(token or secrets.token_urlsafe(32)),
        gateway_url=gateway_url,
    )


def run_in_task_sandbox(
    task: Task,
    *,
    repo: Path,
    command: list[str],
    backend: SandboxBackend,
    policies_dir: Path,
    runs_dir: Path,
    base: str = "HEAD",
    policy_name: str | None = None,
    images: ImageEngine | None = None,
    keep: bool = False,
    extra_labels: Mapping[str, str] | None = None,
    collect: Mapping[str, int] | None = None,
    on_log: Callable[[str], None] | None = None,
    controller_id: str = "cli",
    wiring: SandboxWiring = DOCKER_WIRING,
) -> TaskSandboxRun:
    """Run ``command`` in the sandbox ``task`` would get; the container is removed in every case.

    The image is the repository's dependency image when one was built for its
    declarations (``images`` given), else the policy's. The staging folder goes
    too unless ``keep``. ``wiring`` is the engine's (``Engine.wiring``): with a TCP
    gateway no socket folder is staged, and without hand-over nothing is chowned.
    Raises InvalidTaskError, RepositoryError, PolicyError,
    ImageNotFoundError or SandboxError; a failing, killed or timed-out command
    is not an error: see ``run.outcome``.
    """
    if not command:
        raise InvalidTaskError("no command to run")
    labels = dict(extra_labels or {})
    if any(key.startswith(RESERVED_LABEL_PREFIX) for key in labels):
        raise InvalidTaskError(f"labels starting with {RESERVED_LABEL_PREFIX!r} are reserved")
    admission = admit(
        task,
        repo=repo,
        base_ref=base,
        policies_dir=policies_dir,
        policy_name=policy_name,
        images=images,
    )
    top, policy, plan, image = admission.repo, admission.policy, admission.plan, admission.image
    run_id = f"sbx-{secrets.token_hex(6)}"
    root = runs_dir / run_id
    try:
        config = run_config_for(task, plan, policy, run_id)
        staging = stage_run(
            repo=top,
            plan=plan,
            policy=policy,
            root=root / "stage",
            run_config_json=config.dump_for_sandbox(),
            gateway=wiring.gateway is None,
            hand_over=wiring.hand_over,
        )
        spec = build_container_spec(
            policy=policy,
            plan=plan,
            staging=staging,
            image=image,
            run_id=run_id,
            command=list(command),
            controller_id=controller_id,
        )
        if labels:
            spec = spec.model_copy(update={"labels": {**spec.labels, **labels}})
        log.info("running %s in sandbox %s (image %s)", command[0], spec.name, image)
        run = run_sandbox(backend, spec, collect=collect, on_log=on_log)
    finally:
        if not keep:
            try:
                remove_staging(root)
            except OSError as exc:
                log.warning("could not remove the staging folder %s: %s", root, exc)
    return TaskSandboxRun(
        run_id=run_id,
        image=image,
        plan=plan,
        policy=policy.name,
        policy_digest=policy.digest(),
        run=run,
        staging_root=root / "stage" if keep else None,
    )
