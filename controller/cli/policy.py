"""``taskbox policy``: show a task's mount plan and container settings; lint policy files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from controller.cli.common import CliError, load_task_file
from controller.errors import TaskboxError
from controller.gitrepo import ensure_repository, list_tree, resolve_commit
from controller.policy.loader import effective_policy, load_policy_file, policy_for_worker
from controller.policy.planner import MountPlan, plan_mounts
from controller.sandbox.spec import ContainerSpec, StagingPaths, build_container_spec
from controller.settings import get_settings

if TYPE_CHECKING:
    from controller.policy.schema import Policy


class Explanation:
    """A task's plan and the exact container settings it would get."""

    def __init__(self, plan: MountPlan, policy: Policy, spec: ContainerSpec) -> None:
        self.plan = plan
        self.policy = policy
        self.spec = spec

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form: read_only, read_write, refused, container, policy."""
        return {
            "task_key": self.plan.task_key,
            "base_commit": self.plan.base_commit,
            "policy": {"name": self.policy.name, "digest": self.policy.digest()},
            "read_only": [e.model_dump(mode="json") for e in self.plan.read_only],
            "read_write": [e.model_dump(mode="json") for e in self.plan.read_write],
            "refused": [r.model_dump(mode="json") for r in self.plan.refused],
            "staged_files": len(self.plan.staged),
            "valid": not self.plan.invalid_reasons,
            "container": self.spec.model_dump(mode="json"),
        }


def explain_task(
    task_file: Path, repo: Path, base: str, policy_name: str | None, staging_root: Path
) -> Explanation:
    """Plan a task exactly as a run would, without staging or starting anything."""
    settings = get_settings()
    task = load_task_file(task_file)
    top = ensure_repository(repo)
    commit = resolve_commit(top, base)
    policy = effective_policy(
        policy_for_worker(settings.policies_dir, task.worker, policy_name), task.resources
    )
    plan = plan_mounts(task, list_tree(top, commit), policy, commit)
    spec = build_container_spec(
        policy=policy,
        plan=plan,
        staging=StagingPaths.under(staging_root),
        image=policy.image,
        run_id="explain",
        command=["python", "-m", "taskbox_runner"],
    )
    return Explanation(plan, policy, spec)


def _print_explanation(ex: Explanation) -> None:
    console = Console()
    console.print(
        f"[bold]Task[/] {ex.plan.task_key} at {ex.plan.base_commit[:12]}  "
        f"[bold]policy[/] {ex.policy.name} ({ex.policy.digest()[:19]}…)"
    )
    mounts = Table(title="Mount plan (inside the sandbox under /work)")
    for column in ("path", "kind", "access", "why"):
        mounts.add_column(column)
    for entry in ex.plan.read_only:
        mounts.add_row(entry.path, entry.kind, "read-only", entry.role.value)
    for entry in ex.plan.read_write:
        mounts.add_row(entry.path, entry.kind, "[bold]read-write[/]", entry.role.value)
    console.print(mounts)
    if ex.plan.refused:
        refused = Table(title="Refused")
        for column in ("path", "role", "reason", "detail"):
            refused.add_column(column)
        for item in ex.plan.refused:
            refused.add_row(item.path, item.role.value, item.reason.value, item.detail)
        console.print(refused)
    spec = ex.spec
    settings = Table(title="Container settings")
    settings.add_column("setting")
    settings.add_column("value")
    rows = [
        ("image", spec.image),
        ("user", spec.user),
        ("network", "disabled (loopback only)"),
        ("root filesystem", "read-only"),
        ("capabilities", f"drop {', '.join(spec.cap_drop)}"),
        ("security options", ", ".join(spec.security_opt)),
        ("memory (= memory+swap)", f"{spec.memory_bytes // 2**20} MiB"),
        ("cpus", f"{spec.nano_cpus / 1e9:g}"),
        ("pids", str(spec.pids_limit)),
        ("ulimits", ", ".join(f"{u.name}={u.hard}" for u in spec.ulimits)),
        ("tmpfs", ", ".join(f"{t.target} ({t.option_string()})" for t in spec.tmpfs)),
        ("init / ipc", f"init, ipc {spec.ipc_mode}"),
        ("log cap", f"{spec.log_max_bytes // 2**20} MiB"),
        ("wall clock", f"{spec.wall_clock_seconds} s, enforced by the controller"),
    ]
    rows += [
        (f"mount {m.target}", f"{'ro' if m.read_only else 'rw'} <- {m.source}") for m in spec.mounts
    ]
    for name, value in rows:
        settings.add_row(name, value)
    console.print(settings)
    for reason in ex.plan.invalid_reasons:
        console.print(f"[bold red]invalid:[/] owned path refused: {reason}")


@click.group()
def policy() -> None:
    """Inspect and check sandbox policies."""


@policy.command()
@click.argument("task_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", default="HEAD", show_default=True, help="Base commit or ref.")
@click.option("--policy", "policy_name", default=None, help="Policy name (default: the worker's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of tables.")
def explain(task_file: Path, repo: Path, base: str, policy_name: str | None, as_json: bool) -> None:
    """Print the mount plan and the exact container settings a task would get."""
    settings = get_settings()
    try:
        ex = explain_task(
            task_file, repo, base, policy_name, settings.runs_dir / "<run-id>" / "stage"
        )
    except TaskboxError as exc:
        raise CliError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(ex.as_json(), indent=2))
    else:
        _print_explanation(ex)
    if ex.plan.invalid_reasons:
        raise SystemExit(1)


@policy.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def lint(files: tuple[Path, ...]) -> None:
    """Validate policy files (default: every file in the policies folder)."""
    paths = list(files) or sorted(get_settings().policies_dir.glob("*.yaml"))
    if not paths:
        raise CliError("no policy files found")
    failed = 0
    for path in paths:
        try:
            loaded = load_policy_file(path)
        except TaskboxError as exc:
            failed += 1
            click.echo(f"FAIL {exc}")
        else:
            click.echo(f"ok   {path} ({loaded.name}, {loaded.digest()})")
    if failed:
        raise SystemExit(1)
