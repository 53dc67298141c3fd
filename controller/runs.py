"""One task end to end: admission, staging, gateway, sandbox, ingestion, report.

``TaskRunner.execute`` is what ``taskbox run`` and the API's workers call. It is
synchronous (the docker SDK is) and writes everything it decides and sees to the
run's folder (``runs_dir/<run_id>/record``), which is the audit trail and what
``replay:RUN_DIR`` reads back.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from controller.admission import Admission, admit
from controller.errors import IngestionError, SandboxError, TaskboxError
from controller.events import EventSink, RunEvent
from controller.gateway import GatewayThread, GatewayUsage, ModelGateway, make_upstream
from controller.gateway.serve import bind_tcp
from controller.ingest import Candidate, CommitIdentity, ingest
from controller.judge import CandidateJudge, JudgeRecord
from controller.sandbox.backend import SandboxBackend, SandboxHandle, SandboxOutcome
from controller.sandbox.engines import SandboxWiring, open_engine, sandbox_wiring
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import ContainerSpec, build_container_spec
from controller.sandbox.task_sandbox import run_config_for
from controller.sandbox_log import SandboxLog
from controller.staging import remove_staging, stage_run
from controller.verdict import Verdict, settle
from taskbox_wire.contract import Task, TaskResult, TaskStatus, commit_subject
from taskbox_wire.paths import BUNDLE_FILE, RESULT_FILE, RUNNER_COMMAND

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from controller.image import ImageEngine
    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
    from controller.settings import Settings

log = logging.getLogger(__name__)

#: The agent's own result.json, as it came out of its sandbox (a claim, kept for the record).
AGENT_RESULT_FILE = "agent-result.json"
#: The landing intent, written right before the branch is: recovery reads it after a crash.
LANDING_FILE = "landing.json"
IDENTITY = CommitIdentity(name="Taskbox", email="taskbox@localhost")


class RunMeta(BaseModel):
    """``record/run.json``: the facts that make a run reproducible."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    task_key: str
    repository: str
    base_ref: str
    base_commit: str
    model: str
    policy: str
    policy_digest: str
    image: str | None = None
    image_id: str | None = None
    commit_date: datetime
    started_at: datetime
    finished_at: datetime | None = None
    status: TaskStatus | None = None
    usage: GatewayUsage | None = None


class RunRecord:
    """The folder of one run: ``stage/`` (removed after the run) and ``record/`` (kept)."""

    def __init__(self, runs_dir: Path, run_id: str) -> None:
        self.root = runs_dir / run_id
        self.stage = self.root / "stage"
        self.judge_stage = self.root / "judge-stage"
        self.dir = self.root / "record"

    def create(self) -> None:
        """Make the record folder; a run id is never reused."""
        self.root.mkdir(parents=True, exist_ok=False, mode=0o750)
        self.dir.mkdir(mode=0o750)

    def write_json(self, name: str, data: Any) -> None:
        """Write one JSON document of the record."""
        (self.dir / name).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def write_json_durably(self, name: str, data: Any) -> None:
        """Write one JSON document so that it is whole on disk before this returns.

        A temporary file is written and fsync'd, renamed over the name, and the folder
        fsync'd: after a crash the document is either absent or complete.
        """
        text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
        temp = self.dir / f".{name}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(self.dir / name)
        folder = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write one raw file of the record (the bundle)."""
        (self.dir / name).write_bytes(data)

    def read_json(self, name: str) -> Any:
        """Read one JSON document of the record, or None when it is absent."""
        path = self.dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    def append_event(self, event: RunEvent) -> None:
        """Append one event to ``events.jsonl``."""
        with (self.dir / "events.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(event.model_dump_json() + "\n")


def new_run_id(task_key: str) -> str:
    """A fresh, unguessable run id that still says which task it is."""
    return f"{task_key}-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


class TaskRunner:
    """Runs tasks in sandboxes of one backend; safe to call from several threads at once."""

    def __init__(
        self,
        settings: Settings,
        backend: SandboxBackend,
        images: ImageEngine,
        *,
        model: str = "anthropic",
        controller_id: str = "taskbox",
        wiring: SandboxWiring | None = None,
    ) -> None:
        """``wiring`` is how the engine's sandboxes reach their gateway and get their files;
        by default the one ``settings.sandbox_backend`` names."""
        self._settings = settings
        self._backend = backend
        self._images = images
        self._model = model
        self._controller_id = controller_id
        self._wiring = wiring if wiring is not None else sandbox_wiring(settings)

    @property
    def runs_dir(self) -> Path:
        """Where this runner keeps each run's folder."""
        return self._settings.runs_dir

    # ------------------------------------------------------------------ admission

    def admit(
        self, task: Task, repo: Path, base_ref: str, policy_name: str | None = None
    ) -> Admission:
        """Admit a task against a repository (``controller.admission.admit`` on this engine's images).

        Raises InvalidTaskError when an owned path is refused or the task asks too much,
        RepositoryError for a bad repository or ref, PolicyError for a bad policy.
        """
        return admit(
            task,
            repo=repo,
            base_ref=base_ref,
            policies_dir=self._settings.policies_dir,
            policy_name=policy_name,
            images=self._images,
        )

    # ------------------------------------------------------------------ execution

    def execute(
        self,
        *,
        run_id: str,
        task: Task,
        repo: Path,
        base_ref: str,
        emit: EventSink | None = None,
        cancel: threading.Event | None = None,
        model: str | None = None,
        policy_name: str | None = None,
        command: list[str] | None = None,
    ) -> TaskResult:
        """Run one task and return the controller's result; never raises for the task's own failure.

        ``command`` replaces the runner inside the same sandbox (tests and probes only;
        no caller of the API can set it).

        Raises InvalidTaskError, RepositoryError or PolicyError when the task cannot be
        admitted (nothing was started then), and SandboxError when the engine fails.
        """
        # Admission first: a refused task starts nothing and leaves no run folder.
        admission = self.admit(task, repo, base_ref, policy_name)
        top, base, policy, plan = (
            admission.repo,
            admission.base_commit,
            admission.policy,
            admission.plan,
        )
        record = RunRecord(self._settings.runs_dir, run_id)
        record.create()
        sink = _RecordingSink(record, emit)
        cancel = cancel or threading.Event()
        model_spec = model or self._model
        sink(
            RunEvent(
                stage="admitted",
                message=f"task {task.task_key} admitted at {base[:12]} under policy {policy.name}",
                data={"base_commit": base, "policy_digest": policy.digest()},
            )
        )
        commit_date = _commit_date(model_spec, datetime.now(UTC))
        meta = RunMeta(
            run_id=run_id,
            task_key=task.task_key,
            repository=str(top),
            base_ref=base_ref,
            base_commit=base,
            model=model_spec,
            policy=policy.name,
            policy_digest=policy.digest(),
            commit_date=commit_date,
            started_at=datetime.now(UTC),
        )
        record.write_json("task.json", task.to_wire())
        record.write_json("plan.json", plan.model_dump(mode="json"))
        record.write_json(
            "policy.json", {"digest": policy.digest(), "policy": policy.model_dump(mode="json")}
        )
        run = _AdmittedRun(
            record=record,
            meta=meta,
            task=task,
            repo=top,
            policy=policy,
            plan=plan,
            sink=sink,
            cancel=cancel,
            command=command or list(RUNNER_COMMAND),
            image=admission.image,
        )
        try:
            result = self._execute_admitted(run)
        finally:
            if not self._settings.keep_staging:
                remove_staging(record.stage)
                remove_staging(record.judge_stage)
        meta.finished_at = datetime.now(UTC)
        meta.status = result.status
        record.write_json("run.json", meta.model_dump(mode="json"))
        record.write_json("result.json", result.model_dump(mode="json"))
        sink(
            RunEvent(
                stage="finished",
                message=f"{result.status}" + (f": {result.reason}" if result.reason else ""),
                data={"status": result.status, "git_commit": result.git_commit},
            )
        )
        return result

    def _execute_admitted(self, run: _AdmittedRun) -> TaskResult:
        record, meta, sink = run.record, run.meta, run.sink
        # Admission chose the image: the repository's dependency layer when one was built
        # (tasks run offline, so that is how its imports resolve), else the policy's.
        image = run.image
        image_id = self._images.image_id(image)
        if image_id is None:
            raise SandboxError(f"sandbox image {image} is missing: run `taskbox image build`")
        meta.image, meta.image_id = image, image_id
        record.write_json("run.json", meta.model_dump(mode="json"))

        token = secrets.token_urlsafe(32)
        tcp = self._bind_gateway()
        try:
            agent, usage = self._agent_phase(run, image_id, token, tcp)
        finally:
            if tcp is not None:
                tcp.close()  # harmless when the gateway already closed it
        outcome = agent.outcome
        meta.usage = usage
        record.write_json("usage.json", usage.model_dump(mode="json"))
        sink(
            RunEvent(
                stage="sandbox_exited",
                message=outcome.describe(),
                data={
                    "exit_code": outcome.exit_code,
                    "model_requests": usage.requests - usage.count_tokens_requests,
                    "usage": {
                        "input_tokens": usage.input_tokens
                        + usage.cache_creation_input_tokens
                        + usage.cache_read_input_tokens,
                        "output_tokens": usage.output_tokens,
                    },
                },
            )
        )
        result = self._report(run, agent)
        if (
            result.rounds is not None
            and result.rounds > usage.requests - usage.count_tokens_requests
        ):
            # Each round needs at least one model request: a larger claim is not believed.
            result = result.model_copy(update={"rounds": None})
        return result

    def _bind_gateway(self) -> socket.socket | None:
        """This run's own TCP listener when the engine's sandboxes dial the gateway (a free port), else None."""
        if self._wiring.gateway is None:
            return None
        # Port 0: every run its own port, so runs never share a listener and the run's
        # NetworkPolicy opens exactly that port.
        return bind_tcp(self._wiring.gateway.bind_host, 0)

    def _agent_phase(
        self, run: _AdmittedRun, image_id: str, token: str, tcp: socket.socket | None
    ) -> tuple[_AgentPhase, GatewayUsage]:
        """Stage, then run the agent's sandbox with its gateway serving; what it did and what it used."""
        record, meta, policy, plan = run.record, run.meta, run.policy, run.plan
        gateway_tcp = self._wiring.gateway
        port = int(tcp.getsockname()[1]) if tcp is not None else None
        # Set before staging: run.json (in the staged tree) is how the runner learns it.
        gateway_url = gateway_tcp.url(port) if gateway_tcp is not None and port else None
        config = run_config_for(run.task, plan, policy, meta.run_id, token, gateway_url=gateway_url)
        staging = stage_run(
            repo=run.repo,
            plan=plan,
            policy=policy,
            root=record.stage,
            run_config_json=config.dump_for_sandbox(),
            gateway=tcp is None,
            hand_over=self._wiring.hand_over,
        )
        record.write_json("run-config.json", config.model_dump(mode="json"))  # token redacted
        run.sink(RunEvent(stage="staged", message=f"{len(plan.staged)} files staged"))

        spec = build_container_spec(
            policy=policy,
            plan=plan,
            staging=staging,
            image=image_id,
            run_id=meta.run_id,
            command=run.command,
            controller_id=self._controller_id,
            gateway_port=port,
        )
        gateway = ModelGateway(
            upstream=make_upstream(meta.model, self._settings),
            budget=policy.model,
            token=token,
            transcript=record.dir / "transcript.jsonl",
        )
        # With TCP the gateway's Unix socket is mounted nowhere; it lives in the run's folder.
        socket_path = staging.gateway_socket() if tcp is None else record.root / "gateway.sock"
        with GatewayThread(gateway, socket_path, tcp=tcp) as thread:
            agent = self._run_sandbox(spec, record, run.sink, run.cancel, policy)
            usage = thread.usage
        return agent, usage

    def _run_sandbox(
        self,
        spec: ContainerSpec,
        record: RunRecord,
        sink: EventSink,
        cancel: threading.Event,
        policy: Policy,
    ) -> _AgentPhase:
        """The agent's sandbox through the one lifecycle; its output as accepted bytes or refusals."""
        last_checks: list[str] = []

        def observe(event: RunEvent) -> None:
            if event.stage == "checks":
                last_checks[:] = [event.message]
            sink(event)

        log_sink = SandboxLog(record.dir / "sandbox.log", observe)
        try:
            run = run_sandbox(
                self._backend,
                spec,
                # The policy's caps bound what is read into memory at all.
                collect={
                    RESULT_FILE: policy.ingestion.max_result_bytes,
                    BUNDLE_FILE: policy.ingestion.max_bundle_bytes,
                },
                on_log=log_sink,
                cancel=cancel,
                on_created=lambda inspected: record.write_json("container.json", inspected),
                on_started=lambda: sink(
                    RunEvent(stage="sandbox_started", message=f"container {spec.name} started")
                ),
            )
        finally:
            log_sink.close()
        output: dict[str, bytes | str] = dict(run.output.files)
        output.update({name: f"refused: {why}" for name, why in run.output.refused.items()})
        return _AgentPhase(
            outcome=run.outcome,
            output=output,
            # The runner's own verdict on its last round: a claim, but one that can only
            # lower the judge's verdict (controller.verdict.settle), never raise it.
            last_checks_failed=bool(last_checks) and last_checks[0].startswith("checks failed"),
        )

    def _report(  # noqa: PLR0911 - one return per way a run ends reads best
        self,
        run: _AdmittedRun,
        agent: _AgentPhase,
    ) -> TaskResult:
        task, plan, record, outcome, output = (
            run.task,
            run.plan,
            run.record,
            agent.outcome,
            agent.output,
        )

        def ended(status: TaskStatus, reason: str) -> TaskResult:
            return TaskResult(
                task_key=task.task_key,
                status=status,
                summary=reason,
                reason=reason,
                missing_context=plan.missing_context,
            )

        if run.cancel.is_set():
            return ended("cancelled", "cancelled while running; the container was removed")
        if outcome.timed_out:
            return ended("timeout", f"the sandbox {outcome.describe()}")
        raw_result = output.get(RESULT_FILE)
        if not isinstance(raw_result, bytes):
            why = raw_result or "the runner wrote no result.json"
            return ended("error", f"{why} ({outcome.describe()})")
        raw_bundle = output.get(BUNDLE_FILE)
        if isinstance(raw_bundle, str):
            return ended("failed", f"result.bundle {raw_bundle}")
        if raw_bundle is not None:
            record.write_bytes(BUNDLE_FILE, raw_bundle)
        record.write_bytes(AGENT_RESULT_FILE, raw_result)
        try:
            ingested = ingest(
                repo=run.repo,
                plan=plan,
                policy=run.policy,
                task_key=task.task_key,
                subject=commit_subject(task.task_key, task.description, plan.owns_paths),
                result_bytes=raw_result,
                bundle_bytes=raw_bundle,
                workspace=record.root,
                identity=IDENTITY,
                commit_date=run.meta.commit_date,
                judge=self._judge(run, agent),
                agent_exit_code=outcome.exit_code,
                on_landing=lambda branch, commit, result: record.write_json_durably(
                    # Written (and synced) before the ref update: recovery recognises a crash
                    # in between, even a power loss that keeps the ref.
                    LANDING_FILE,
                    {"branch": branch, "commit": commit, "result": result.model_dump(mode="json")},
                ),
            )
        except IngestionError as exc:
            return ended("failed", f"the sandbox's output was refused: {exc}")
        record.write_json("ingested.json", ingested.model_dump(mode="json", exclude={"result"}))
        if run.cancel.is_set():
            return ended("cancelled", "cancelled while judging; the containers were removed")
        return ingested.result

    def _judge(self, run: _AdmittedRun, agent: _AgentPhase) -> Callable[[Candidate], Verdict]:
        """The judge of this run's candidate, its verdict settled with what the agent phase showed."""
        candidate_judge = CandidateJudge(
            backend=self._backend,
            plan=run.plan,
            policy=run.policy,
            image=run.meta.image_id or "",
            run_id=run.meta.run_id,
            stage_root=run.record.judge_stage,
            record=JudgeRecord(folder=run.record.dir, write_json=run.record.write_json),
            sink=run.sink,
            cancel=run.cancel,
            controller_id=self._controller_id,
            hand_over=self._wiring.hand_over,
        )

        def judge(candidate: Candidate) -> Verdict:
            verdict = candidate_judge(candidate)
            if run.cancel.is_set():
                # Decided before landing: a cancelled run never writes its branch.
                return Verdict(status="failed", reason="cancelled while judging")
            return settle(
                verdict,
                agent=candidate.agent,
                agent_exit_code=agent.outcome.exit_code,
                agent_last_checks_failed=agent.last_checks_failed,
            )

        return judge

    # ------------------------------------------------------------------ API hooks

    def container_ids_for(self, run_id: str) -> list[str]:
        """Containers on the engine labelled with this run."""
        return [o.id for o in self._backend.find_orphans() if o.run_id == run_id]

    def remove_run_containers(self, run_id: str) -> int:
        """Remove this run's containers; how many there were."""
        found = [o for o in self._backend.find_orphans() if o.run_id == run_id]
        for orphan in found:
            self._backend.remove(
                SandboxHandle(id=orphan.id, name=orphan.name, run_id=orphan.run_id)
            )
        return len(found)

    def remove_staging(self, run_id: str) -> None:
        """Remove a run's staging folder (after a crash)."""
        record = RunRecord(self._settings.runs_dir, run_id)
        remove_staging(record.stage)
        remove_staging(record.judge_stage)

    def audit(self, run_id: str) -> dict[str, JsonValue] | None:
        """What a security team asks of a run: plan, effective policy and digest, image, container."""
        return audit_record(RunRecord(self._settings.runs_dir, run_id))


@dataclass(frozen=True, slots=True)
class _AgentPhase:
    """What the controller itself saw of the agent's sandbox."""

    outcome: SandboxOutcome
    output: dict[str, bytes | str]
    """Output files by name: accepted bytes, or the refusal as text."""
    last_checks_failed: bool
    """The runner's last progress event on its checks said they failed."""


@dataclass(frozen=True, slots=True)
class _AdmittedRun:
    """Everything decided at admission, carried through the rest of one run."""

    record: RunRecord
    meta: RunMeta
    task: Task
    repo: Path
    policy: Policy
    plan: MountPlan
    sink: EventSink
    cancel: threading.Event
    command: list[str]
    image: str
    """The image admission chose (the repository's dependency layer or the policy's)."""


class _RecordingSink:
    """Writes every event to the run record, then passes it on."""

    def __init__(self, record: RunRecord, emit: EventSink | None) -> None:
        self._record = record
        self._emit = emit
        self._lock = threading.Lock()

    def __call__(self, event: RunEvent) -> None:
        with self._lock:
            self._record.append_event(event)
        log.info("run %s: %s: %s", self._record.root.name, event.stage, event.message)
        if self._emit is not None:
            self._emit(event)


def _commit_date(model_spec: str, now: datetime) -> datetime:
    """The date of the final commit: a replay reuses the recorded run's, so it gets the same commit."""
    kind, _, where = model_spec.partition(":")
    if kind.startswith("replay") and where:
        recorded = Path(where) / "record" / "run.json"
        try:
            return RunMeta.model_validate_json(recorded.read_text()).commit_date
        except (OSError, ValidationError) as exc:
            raise TaskboxError(f"cannot replay {where}: its record/run.json is unusable") from exc
    return now.replace(microsecond=0)


def make_executor(settings: Settings) -> TaskRunner:
    """The executor ``taskbox serve`` runs tasks with, on the engine the settings name."""
    engine = open_engine(settings)
    return TaskRunner(
        settings,
        engine.backend,
        engine.images,
        model=settings.model_upstream,
        wiring=engine.wiring,
    )


def make_readiness_probes(settings: Settings) -> dict[str, Callable[[], None]]:
    """``/readyz`` checks: the engine answers and the sandbox image is built."""
    engine = open_engine(settings)

    def image() -> None:
        if engine.images.image_id(settings.image) is None:
            raise SandboxError(f"sandbox image {settings.image} is not built")

    return {"engine": engine.ping, "image": image}


def audit_record(record: RunRecord) -> dict[str, JsonValue] | None:
    """The audit of the run recorded at ``record``: plan, effective policy, image, container.

    ``None`` when there is no such record.
    """
    if not record.dir.is_dir():
        return None
    meta = record.read_json("run.json") or {}
    return {
        "run_id": record.root.name,
        "plan": record.read_json("plan.json"),
        "policy": record.read_json("policy.json"),
        "image": meta.get("image"),
        "image_id": meta.get("image_id"),
        "container": record.read_json("container.json"),
    }
