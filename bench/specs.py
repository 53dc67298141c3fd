"""Hardened container specs, exactly as Taskbox builds them, over one staged tiny repository."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from bench.harness import BENCH_LABELS, CONTROLLER_ID
from bench.projects import tiny_repo, tiny_task
from controller.admission import admit
from controller.sandbox.spec import build_container_spec
from controller.sandbox.task_sandbox import run_config_for
from controller.staging import stage_run

if TYPE_CHECKING:
    from bench.harness import BenchContext
    from controller.sandbox.spec import ContainerSpec


class HardenedSpecs:
    """Plans and stages a tiny task once; :meth:`spec` gives a fresh spec (new name) for each sandbox."""

    def __init__(self, ctx: BenchContext, name: str, command: list[str]) -> None:
        root = ctx.folder(name)
        self.repo = tiny_repo(root / "repo")
        self.task = tiny_task()
        self.command = command
        admission = admit(
            self.task,
            repo=self.repo,
            base_ref="HEAD",
            policies_dir=ctx.settings.policies_dir,
        )
        top, self.policy, self.plan = admission.repo, admission.policy, admission.plan
        config = run_config_for(self.task, self.plan, self.policy, "bench")
        self.staging = stage_run(
            repo=top,
            plan=self.plan,
            policy=self.policy,
            root=root / "stage",
            run_config_json=config.dump_for_sandbox(),
        )
        self.image_id = ctx.image_id
        self.runs_dir = root / "runs"
        self.runs_dir.mkdir()

    def spec(self, command: list[str] | None = None) -> ContainerSpec:
        """The policy's hardened spec for a new run id, with the bench label."""
        spec = build_container_spec(
            policy=self.policy,
            plan=self.plan,
            staging=self.staging,
            image=self.image_id,
            run_id=f"bench-{secrets.token_hex(6)}",
            command=command or self.command,
            controller_id=CONTROLLER_ID,
        )
        return spec.model_copy(update={"labels": {**spec.labels, **BENCH_LABELS}})
