"""The judge's decisions on the fake engine: what it stages, in which order it runs, what it believes."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import pytest

from controller.ingest import Candidate, ChangedPath
from controller.judge import CandidateJudge, JudgeRecord, candidate_trees
from controller.policy.loader import load_policy
from controller.policy.planner import plan_mounts
from controller.sandbox.fake import Exit, FakeEngine, FakeSandbox
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task, TaskResult
from taskbox_wire.paths import BASE_DIR, F2P_DIR, GATEWAY_DIR, WORKDIR
from tests.conftest import git

if TYPE_CHECKING:
    from pathlib import Path

    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
    from tests.conftest import RepoFactory

KEY = "BE-7"


def report(failing: dict[int, str] | None = None) -> bytes:
    """A judge phase's report as the in-sandbox judge writes it."""
    failing = failing or {}
    return json.dumps(
        {
            "framework": "fastapi",
            "test_results": {"total": 1, "passed": 1, "failed": 0, "skipped": 0},
            "constraints": [
                {
                    "id": n,
                    "name": f"check {n}",
                    "passed": n not in failing,
                    "evidence": ["verdict line", *([failing[n]] if n in failing else [])],
                }
                for n in range(1, 11)
            ],
            "warnings": [],
        }
    ).encode()


class World:
    """A repository, its plan, and a candidate that adds a module and its test."""

    def __init__(self, make_repo: RepoFactory, tmp_path: Path) -> None:
        self.repo, self.base = make_repo(
            {
                "app/main.py": "x = 1\n",
                "tests/test_main.py": "def test_x() -> None:\n    assert 1\n",
            }
        )
        self.policy: Policy = load_policy(PROJECT_ROOT / "policies", "be-python")
        task = Task.model_validate(
            {
                "taskKey": KEY,
                "description": "Add greet.",
                "ownsPaths": ["app/", "tests/test_greet.py", "tests/test_main.py"],
                "contextJson": {f"{KEY}-ctx": {"relevant_files": []}},
            }
        )
        self.plan: MountPlan = plan_mounts(task, self._tree(), self.policy, self.base)
        module = self._blob("def greet() -> str:\n    return 'hi'\n")
        test = self._blob(
            "from app.greet import greet\n\n\ndef test_greet() -> None:\n    assert greet() == 'hi'\n"
        )
        self.candidate = Candidate(
            repo=self.repo,
            base_commit=self.base,
            commit="c" * 40,
            changes=(
                ChangedPath("app/greet.py", "A", module, executable=False),
                ChangedPath("tests/test_greet.py", "A", test, executable=False),
                ChangedPath("tests/test_main.py", "D", None, executable=False),
            ),
            agent=TaskResult(task_key=KEY, status="succeeded"),
        )
        self.records: dict[str, Any] = {}
        self.folder = tmp_path / "record"
        self.folder.mkdir()
        self.stage = tmp_path / "judge-stage"

    def _tree(self) -> Any:
        from controller.gitrepo import list_tree  # noqa: PLC0415 - a helper of this fixture only

        return list_tree(self.repo, self.base)

    def _blob(self, text: str) -> str:
        return git(self.repo, "hash-object", "-w", "--stdin", input_bytes=text.encode()).strip()

    def judge(self, engine: FakeEngine, cancel: threading.Event | None = None) -> Any:
        """Run the judge on the fake engine; the verdict."""
        return CandidateJudge(
            backend=engine,
            plan=self.plan,
            policy=self.policy,
            image="taskbox-sandbox:latest",
            run_id="BE-7-run",
            stage_root=self.stage,
            record=JudgeRecord(
                folder=self.folder,
                write_json=self.records.__setitem__,
            ),
            sink=lambda _event: None,
            cancel=cancel or threading.Event(),
            controller_id="test",
        )(self.candidate)


@pytest.fixture
def world(make_repo: RepoFactory, tmp_path: Path) -> World:
    """A fresh world per test."""
    return World(make_repo, tmp_path)


def phase_of(sandbox: FakeSandbox) -> str:
    """``static`` or ``tests``, from the judge's command."""
    return sandbox.spec.command[-1]


def test_candidate_trees_are_the_plan_with_the_change_and_the_base_with_its_tests(
    world: World,
) -> None:
    """The candidate drops deletions and adds files; fail-to-pass is the base plus the new tests only."""
    tree, fail_to_pass = candidate_trees(world.plan, world.candidate)

    assert set(tree) == {"app/main.py", "app/greet.py", "tests/test_greet.py"}
    assert set(fail_to_pass) == {"app/main.py", "tests/test_main.py", "tests/test_greet.py"}


def test_static_phase_runs_first_read_only_and_without_a_gateway(world: World) -> None:
    """Two containers, static then tests; neither has the gateway; only the tests phase may write owned paths."""
    seen: list[FakeSandbox] = []

    def handler(sandbox: FakeSandbox) -> int:
        seen.append(sandbox)
        sandbox.write(f"{phase_of(sandbox)}.json", report())
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "succeeded", verdict.reason
    assert [phase_of(s) for s in seen] == ["static", "tests"]
    static, tests = (s.spec for s in seen)
    for spec in (static, tests):
        targets = {m.target: m.read_only for m in spec.mounts}
        assert GATEWAY_DIR not in targets
        assert targets[WORKDIR] is True
        assert targets[BASE_DIR] is True
        assert targets[F2P_DIR] is True
        assert spec.command[:4] == ["python", "-P", "-m", "taskbox_runner.judge"]
    assert all(m.read_only for m in static.mounts if m.target.startswith(f"{WORKDIR}/"))
    assert not all(m.read_only for m in tests.mounts if m.target.startswith(f"{WORKDIR}/"))
    out = {
        spec.name: next(m.source for m in spec.mounts if m.target == "/out")
        for spec in (static, tests)
    }
    assert len(set(out.values())) == 2, (
        "the test phase must not share the static phase's out folder"
    )
    assert {"container-judge-static.json", "container-judge-tests.json", "verdict.json"} <= set(
        world.records
    )


def test_a_static_failure_cannot_be_undone_by_the_test_phase(world: World) -> None:
    """The static report is sealed: a passing test phase does not pass constraint 2 again."""

    def handler(sandbox: FakeSandbox) -> int:
        failing = {2: "app/greet.py:1: TB0201 secret"} if phase_of(sandbox) == "static" else {}
        sandbox.write(f"{phase_of(sandbox)}.json", report(failing))
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert "app/greet.py:1: TB0201 secret" in verdict.constraints[1].evidence


@pytest.mark.parametrize(
    "tests_phase",
    ["killed", "exit-2", "no-report", "link", "garbage"],
)
def test_a_test_phase_that_ends_badly_fails_every_constraint(
    world: World, tests_phase: str
) -> None:
    """Killed, failed, silent, a link for a report, or garbage: the verdict fails, nothing passes."""

    def handler(sandbox: FakeSandbox) -> int | Exit:
        if phase_of(sandbox) == "static":
            sandbox.write("static.json", report())
            return 0
        if tests_phase == "killed":
            return Exit(exit_code=137, oom=True)
        if tests_phase == "link":
            sandbox.symlink("tests.json", "/etc/passwd")
        elif tests_phase == "garbage":
            sandbox.write("tests.json", b'{"framework": "fastapi", "framework": "x"}')
        elif tests_phase == "exit-2":
            sandbox.write("tests.json", report())
            return 2
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert verdict.reason is not None
    assert verdict.reason.startswith("the judge's test phase")
    assert not any(c.passed for c in verdict.constraints)


def test_a_static_phase_without_a_report_stops_the_judge(world: World) -> None:
    """No static report, no test phase: model code never runs when the sealed report is missing."""
    phases: list[str] = []

    def handler(sandbox: FakeSandbox) -> int:
        phases.append(phase_of(sandbox))
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert phases == ["static"]


def test_an_owned_file_the_candidate_deleted_is_not_mounted(world: World) -> None:
    """No empty placeholder stands in for a deleted module: the judge sees the tree that lands."""
    specs: list[Any] = []

    def handler(sandbox: FakeSandbox) -> int:
        specs.append(sandbox.spec)
        sandbox.write(f"{phase_of(sandbox)}.json", report())
        return 0

    world.judge(FakeEngine(handler))

    targets = {m.target for spec in specs for m in spec.mounts}
    assert f"{WORKDIR}/tests/test_main.py" not in targets
    assert f"{WORKDIR}/tests/test_greet.py" in targets
    assert not (world.stage / "work" / "tests" / "test_main.py").exists()


def test_a_test_file_where_the_base_had_a_file_of_its_folders_name_is_staged(
    world: World,
) -> None:
    """Deleting tests/test_main.py and adding tests/test_main.py/test_x.py stages, not crashes."""
    blob = git(
        world.repo,
        "hash-object",
        "-w",
        "--stdin",
        input_bytes=b"def test_x() -> None:\n    assert 1 == 2\n",
    ).strip()
    world.candidate = Candidate(
        repo=world.repo,
        base_commit=world.base,
        commit="d" * 40,
        changes=(
            ChangedPath("tests/test_main.py", "D", None, executable=False),
            ChangedPath("tests/test_main.py/test_x.py", "A", blob, executable=False),
        ),
        agent=world.candidate.agent,
    )
    tree, fail_to_pass = candidate_trees(world.plan, world.candidate)
    assert "tests/test_main.py" not in fail_to_pass
    assert "tests/test_main.py/test_x.py" in fail_to_pass
    assert "tests/test_main.py" not in tree

    def handler(sandbox: FakeSandbox) -> int:
        sandbox.write(f"{phase_of(sandbox)}.json", report())
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "succeeded", verdict.reason
