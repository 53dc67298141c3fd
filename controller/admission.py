"""Admission, written once: the repository, base commit, effective policy, mount plan and image of a task.

``taskbox run``, the API (at submit and when a worker starts the task),
``taskbox policy explain`` and ``taskbox sandbox run`` all call :func:`admit`,
so the security team audits exactly the plan and the image a run uses. Nothing
is staged or started here; a refused task leaves no trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from controller.errors import InvalidTaskError
from controller.gitrepo import ensure_repository, list_tree, resolve_commit
from controller.image import image_for_repo
from controller.policy.loader import effective_policy, policy_for_worker
from controller.policy.planner import MountPlan, plan_mounts
from controller.policy.schema import Policy

if TYPE_CHECKING:
    from controller.image import ImageEngine
    from taskbox_wire.contract import Task


class Admission(BaseModel):
    """Everything decided before a task may run; plain data, recorded with the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: Path
    """The repository's top folder."""
    base_commit: str
    """The full id of the base commit the task starts from."""
    policy: Policy
    """The effective policy (the worker's or the named one, with the task's resources applied)."""
    plan: MountPlan
    """What the sandbox sees (read-only), may change (read-write), and what was refused and why."""
    image: str
    """The image the sandbox runs: the repository's dependency layer when one was built for
    its declarations (``taskbox image build --repo``), else the policy's image."""


def plan_admission(
    task: Task,
    *,
    repo: Path,
    base_ref: str,
    policies_dir: Path,
    policy_name: str | None = None,
    images: ImageEngine | None = None,
) -> Admission:
    """Everything admission decides, even for a task it would refuse (``policy explain`` shows why).

    ``images`` answers which dependency image exists; without one the policy's image is
    named (a plan-only caller with no engine). Raises InvalidTaskError when the task asks
    more than its policy allows, RepositoryError for a bad repository or ref, PolicyError
    for a bad policy; refused owned paths are in ``plan.invalid_reasons``.
    """
    top = ensure_repository(repo)
    base = resolve_commit(top, base_ref)
    policy = effective_policy(
        policy_for_worker(policies_dir, task.worker, policy_name), task.resources
    )
    plan = plan_mounts(task, list_tree(top, base), policy, base)
    image = policy.image
    if images is not None:
        image = image_for_repo(top, base, engine=images, sandbox_image=policy.image) or image
    return Admission(repo=top, base_commit=base, policy=policy, plan=plan, image=image)


def admit(
    task: Task,
    *,
    repo: Path,
    base_ref: str,
    policies_dir: Path,
    policy_name: str | None = None,
    images: ImageEngine | None = None,
) -> Admission:
    """Admit ``task`` against ``repo`` at ``base_ref``, or refuse it with every reason.

    As :func:`plan_admission`, and raises InvalidTaskError (with every reason) when
    the plan refuses an owned path.
    """
    admission = plan_admission(
        task,
        repo=repo,
        base_ref=base_ref,
        policies_dir=policies_dir,
        policy_name=policy_name,
        images=images,
    )
    if admission.plan.invalid_reasons:
        raise InvalidTaskError(
            "owned paths refused by the plan: " + "; ".join(admission.plan.invalid_reasons)
        )
    return admission
