"""``taskbox policy``: show a task's mount plan and container settings; lint policy files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from controller.admission import Admission, plan_admission
from controller.cli.common import CliError, echo_safe, load_task_file
from controller.display import escape_text, make_console, safe_text
from controller.errors import SandboxError, TaskboxError
from controller.judge import judge_policy
from controller.policy.loader import load_policy_file
from controller.sandbox.engines import open_engine
from controller.sandbox.kubernetes.manifests import manifests, to_yaml
from controller.sandbox.kubernetes.target import target_from_settings
from controller.sandbox.spec import (
    PHASE_AGENT,
    PHASE_JUDGE,
    ContainerSpec,
    StagingPaths,
    build_container_spec,
)
from controller.settings import get_settings
from taskbox_wire.paths import BASE_DIR, F2P_DIR, RUNNER_COMMAND, judge_command

if TYPE_CHECKING:
    from controller.image import ImageEngine
    from controller.settings import Settings

log = logging.getLogger(__name__)


#: The run id ``policy explain`` shows in names, labels and the exchange URL.
EXPLAIN_RUN_ID = "explain"


class Explanation:
    """A task's plan, the image it would run, and the exact container settings it would get."""

    def __init__(
        self,
        admission: Admission,
        image_id: str | None,
        spec: ContainerSpec,
        judge_spec: ContainerSpec | None = None,
    ) -> None:
        self.plan = admission.plan
        self.policy = admission.policy
        self.image = admission.image
        self.image_id = image_id
        self.spec = spec
        self.judge_spec = judge_spec
        """The judge's container (no gateway, the base and fail-to-pass trees read-only)."""

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form: read_only, read_write, refused, image, container, policy."""
        return {
            "task_key": self.plan.task_key,
            "base_commit": self.plan.base_commit,
            "policy": {"name": self.policy.name, "digest": self.policy.digest()},
            "read_only": [e.model_dump(mode="json") for e in self.plan.read_only],
            "read_write": [e.model_dump(mode="json") for e in self.plan.read_write],
            "refused": [r.model_dump(mode="json") for r in self.plan.refused],
            "staged_files": len(self.plan.staged),
            "valid": not self.plan.invalid_reasons,
            "image": self.image,
            "image_id": self.image_id,
            "container": self.spec.model_dump(mode="json"),
        }


def explain_task(
    task_file: Path, repo: Path, base: str, policy_name: str | None, staging_root: Path
) -> Explanation:
    """Admit a task exactly as a run would (image included), without staging or starting anything.

    The image is the one a run would use: the repository's dependency layer when one is
    built. With no engine answering, the policy's image is shown and ``image_id`` is None.
    """
    settings = get_settings()
    task = load_task_file(task_file)
    try:
        images: ImageEngine | None = open_engine(settings).images
    except SandboxError as exc:
        log.warning("no engine answers (%s): showing the policy's image", exc)
        images = None
    admission = plan_admission(
        task,
        repo=repo,
        base_ref=base,
        policies_dir=settings.policies_dir,
        policy_name=policy_name,
        images=images,
    )
    image_id = images.image_id(admission.image) if images is not None else None
    # A run creates its container from the image's content id, so the settings show it too.
    image = image_id or admission.image
    spec = build_container_spec(
        policy=admission.policy,
        plan=admission.plan,
        staging=StagingPaths.under(staging_root),
        image=image,
        run_id=EXPLAIN_RUN_ID,
        command=list(RUNNER_COMMAND),
    )
    # The judge's staging as controller.staging.stage_judge lays it out (no gateway folder).
    # A real judge leaves out the owned files its candidate does not have (judge.judge_plan).
    judge_root = staging_root.parent / "judge"
    judge_staging = StagingPaths.under(judge_root).model_copy(
        update={
            "gateway": None,
            "extra_read_only": {BASE_DIR: judge_root / "base", F2P_DIR: judge_root / "f2p"},
        }
    )
    judge_spec = build_container_spec(
        policy=judge_policy(admission.policy),
        plan=admission.plan,
        staging=judge_staging,
        image=image,
        run_id=EXPLAIN_RUN_ID,
        command=judge_command(),
        phase=PHASE_JUDGE,
    )
    return Explanation(admission, image_id, spec, judge_spec)


def kubernetes_manifests(
    ex: Explanation, settings: Settings
) -> list[tuple[str, list[dict[str, Any]]]]:
    """The NetworkPolicy and the Pod of each phase (agent, judge) a task would get on a cluster.

    The target comes from the ``kubernetes_*`` settings (their defaults without a cluster);
    the exchange token is a placeholder: a run makes a fresh single-use one.
    """
    target = target_from_settings(settings)
    if target.image is None:
        # A cluster pulls a reference, never a local content id: show the image's name.
        target = target.model_copy(update={"image": ex.image})
    runtime_class = ex.policy.runtime_class or settings.kubernetes_runtime_class
    phases = [(PHASE_AGENT, ex.spec)]
    if ex.judge_spec is not None:
        phases.append((PHASE_JUDGE, ex.judge_spec))
    return [
        (
            phase,
            manifests(
                spec,
                target,
                run_id=EXPLAIN_RUN_ID,
                phase=phase,
                exchange_token=None,
                runtime_class=runtime_class,
            ),
        )
        for phase, spec in phases
    ]


def _print_kubernetes(ex: Explanation, settings: Settings) -> None:
    # One YAML stream; each phase's documents follow a comment that names it. Task text can
    # reach names and paths only through PyYAML, which escapes control and non-ASCII characters.
    head = escape_text(
        f"taskbox policy explain: task {ex.plan.task_key}, policy {ex.policy.name} "
        f"({ex.policy.digest()})"
    )
    click.echo(f"# {head}")
    for phase, documents in kubernetes_manifests(ex, settings):
        who = "the agent's sandbox" if phase == PHASE_AGENT else "the judge's sandbox (no gateway)"
        click.echo(f"# phase {phase}: {who}: NetworkPolicy, then Pod")
        click.echo(to_yaml(documents), nl=False)


def _print_explanation(ex: Explanation) -> None:
    # Paths, reasons and details come from the task and the repository: data, never markup.
    console = make_console()
    console.print(
        Text.assemble(
            ("Task", "bold"),
            " ",
            safe_text(ex.plan.task_key),
            f" at {ex.plan.base_commit[:12]}  ",
            ("policy", "bold"),
            " ",
            safe_text(ex.policy.name),
            f" ({ex.policy.digest()[:19]}…)",
        )
    )
    mounts = Table(title="Mount plan (inside the sandbox under /work)", highlight=False)
    for column in ("path", "kind", "access", "why"):
        mounts.add_column(column)
    for entry in ex.plan.read_only:
        mounts.add_row(
            safe_text(entry.path), safe_text(entry.kind), "read-only", safe_text(entry.role.value)
        )
    for entry in ex.plan.read_write:
        mounts.add_row(
            safe_text(entry.path),
            safe_text(entry.kind),
            Text("read-write", style="bold"),
            safe_text(entry.role.value),
        )
    console.print(mounts)
    if ex.plan.refused:
        refused = Table(title="Refused", highlight=False)
        for column in ("path", "role", "reason", "detail"):
            refused.add_column(column)
        for item in ex.plan.refused:
            refused.add_row(
                safe_text(item.path),
                safe_text(item.role.value),
                safe_text(item.reason.value),
                safe_text(item.detail),
            )
        console.print(refused)
    spec = ex.spec
    settings = Table(title="Container settings", highlight=False)
    settings.add_column("setting")
    settings.add_column("value")
    rows = [
        ("image", f"{ex.image} ({ex.image_id or 'not built'})"),
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
        settings.add_row(safe_text(name), safe_text(value))
    console.print(settings)
    for reason in ex.plan.invalid_reasons:
        console.print(
            Text.assemble(("invalid:", "bold red"), " owned path refused: ", safe_text(reason))
        )


@click.group()
def policy() -> None:
    """Inspect and check sandbox policies."""


@policy.command()
@click.argument("task_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", default="HEAD", show_default=True, help="Base commit or ref.")
@click.option("--policy", "policy_name", default=None, help="Policy name (default: the worker's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of tables.")
@click.option(
    "--backend",
    type=click.Choice(["docker", "kubernetes"]),
    default="docker",
    show_default=True,
    help="docker: the mount plan and container settings; kubernetes: the Pod and "
    "NetworkPolicy of the agent's and the judge's sandbox, as YAML.",
)
def explain(
    task_file: Path,
    repo: Path,
    *,
    base: str,
    policy_name: str | None,
    as_json: bool,
    backend: str,
) -> None:
    """Print the mount plan and the exact container settings a task would get."""
    settings = get_settings()
    if as_json and backend == "kubernetes":
        raise CliError("--json shows the docker settings; --backend kubernetes prints YAML")
    try:
        ex = explain_task(
            task_file, repo, base, policy_name, settings.runs_dir / "<run-id>" / "stage"
        )
        if backend == "kubernetes":
            _print_kubernetes(ex, settings)
    except (TaskboxError, ValueError) as exc:
        # ValueError: a setting or the plan that no Kubernetes manifest can express.
        raise CliError(str(exc)) from exc
    if backend == "kubernetes":
        # The YAML stays one parseable stream; what makes the plan invalid goes to stderr.
        for reason in ex.plan.invalid_reasons:
            echo_safe(f"invalid: owned path refused: {reason}", err=True)
    elif as_json:
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
            echo_safe(f"FAIL {exc}")
        else:
            echo_safe(f"ok   {path} ({loaded.name}, {loaded.digest()})")
    if failed:
        raise SystemExit(1)
