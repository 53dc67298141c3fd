"""Reproduce a run from its record: the same task, base, policy and model turns; then compare.

The task, base commit, policy and repository come from ``record/``; the model is the
recorded transcript (``replay:RUN_DIR``, strict: a request that does not hash like the
recorded one of its turn is refused, naming the turn); the commit date is the recorded
one, so an identical run gives the same commit id. The answer is ``identical`` or the
list of every difference, with the first turn whose request no longer matches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from controller.errors import TaskboxError
from controller.gateway.transcript import read_transcript, transcript_path
from controller.runs import RunMeta, RunRecord, new_run_id
from taskbox_wire.contract import Task, TaskResult

if TYPE_CHECKING:
    from controller.events import EventSink
    from controller.gateway.transcript import TranscriptEntry
    from controller.runs import TaskRunner

log = logging.getLogger(__name__)


class Difference(BaseModel):
    """One fact the reproduction does not share with the recording."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    what: str
    recorded: JsonValue
    reproduced: JsonValue


class Reproduction(BaseModel):
    """What ``taskbox reproduce`` found."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recorded_run: str
    run_id: str
    """The reproduction's own run (its record is beside the original's)."""
    identical: bool
    differences: list[Difference]
    first_diverging_turn: int | None
    """The first model turn whose request differs from the recording (None: none did)."""
    result: TaskResult


def _load(record: Path, name: str) -> Any:
    path = record / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TaskboxError(f"{path} is not a readable run record file: {exc}") from exc


def first_diverging_turn(
    recorded: list[TranscriptEntry], reproduced: list[TranscriptEntry]
) -> int | None:
    """The first turn whose request hashes differently (or exists on one side only)."""
    old = {e.turn: e.request_sha256 for e in recorded if e.turn is not None}
    new = {e.turn: e.request_sha256 for e in reproduced if e.turn is not None}
    # A refused request has no turn; the turn it would have been is the one after the last.
    refused = [e for e in reproduced if e.turn is None and e.status >= 400]  # noqa: PLR2004 - HTTP
    for turn in range(1, max([*old, *new, 0]) + 1):
        if old.get(turn) != new.get(turn):
            return turn
    if refused and len(new) < len(old):
        return len(new) + 1
    return None


def compare(recorded: TaskResult, reproduced: TaskResult) -> list[Difference]:
    """Every reported fact of the two results that differs (status, commit, files, tests, checks)."""
    facts: dict[str, tuple[JsonValue, JsonValue]] = {
        "status": (recorded.status, reproduced.status),
        "git_commit": (recorded.git_commit, reproduced.git_commit),
        "files_created": (list(recorded.files_created), list(reproduced.files_created)),
        "files_modified": (list(recorded.files_modified), list(reproduced.files_modified)),
        "test_results": (
            recorded.test_results.model_dump(mode="json"),
            reproduced.test_results.model_dump(mode="json"),
        ),
        "failed_checks": (
            [str(c.id) for c in recorded.constraints if not c.passed],
            [str(c.id) for c in reproduced.constraints if not c.passed],
        ),
    }
    return [
        Difference(what=name, recorded=old, reproduced=new)
        for name, (old, new) in facts.items()
        if old != new
    ]


def reproduce(
    run_dir: Path,
    *,
    runner: TaskRunner,
    repo: Path | None = None,
    base_ref: str | None = None,
    emit: EventSink | None = None,
) -> Reproduction:
    """Run the recorded task again with the recorded model turns and compare the two results.

    ``repo`` and ``base_ref`` replace the recorded repository and base commit (to see
    where a changed base diverges). Raises TaskboxError when the record is unusable, and
    what ``TaskRunner.execute`` raises when the task cannot be admitted.
    """
    record = run_dir / "record"
    try:
        meta = RunMeta.model_validate(_load(record, "run.json"))
        task = Task.model_validate(_load(record, "task.json"))
        recorded = TaskResult.model_validate(_load(record, "result.json"))
    except ValidationError as exc:
        raise TaskboxError(
            f"{record} is not a complete run record: {exc.errors()[0]['msg']}"
        ) from exc
    run_id = new_run_id(task.task_key)
    result = runner.execute(
        run_id=run_id,
        task=task,
        repo=repo or Path(meta.repository),
        base_ref=base_ref or meta.base_commit,
        emit=emit,
        model=f"replay:{run_dir}",
        policy_name=meta.policy,
    )
    differences = compare(recorded, result)
    reproduced_meta = RunRecord(runner.runs_dir, run_id).read_json("run.json") or {}
    if meta.image_id and reproduced_meta.get("image_id") != meta.image_id:
        differences.append(
            Difference(
                what="image_id", recorded=meta.image_id, reproduced=reproduced_meta.get("image_id")
            )
        )
    new_transcript = transcript_path(runner.runs_dir / run_id)
    turn = first_diverging_turn(
        read_transcript(transcript_path(run_dir)),
        read_transcript(new_transcript) if new_transcript.is_file() else [],
    )
    if turn is not None:
        differences.append(Difference(what="first_diverging_turn", recorded=None, reproduced=turn))
    log.info("reproduced %s as %s: %d difference(s)", run_dir.name, run_id, len(differences))
    return Reproduction(
        recorded_run=run_dir.name,
        run_id=run_id,
        identical=not differences,
        differences=differences,
        first_diverging_turn=turn,
        result=result,
    )
