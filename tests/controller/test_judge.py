"""The judge's decisions on the fake engine: what it stages, what it runs, which report it believes."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest

from controller.ingest import Candidate, ChangedPath
from controller.judge import CandidateJudge, JudgeRecord, SealedReportReader, candidate_trees
from controller.policy.loader import load_policy
from controller.policy.planner import plan_mounts
from controller.sandbox.fake import Exit, FakeEngine, FakeSandbox
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task, TaskResult
from taskbox_wire.paths import (
    BASE_DIR,
    F2P_DIR,
    GATEWAY_DIR,
    JUDGE_COMMAND,
    JUDGE_KEY_FILE,
    JUDGE_STATIC_PREFIX,
    JUDGE_TESTS_REPORT,
    WORKDIR,
)
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


def take_key(sandbox: FakeSandbox) -> bytes:
    """Read and remove the one-time key, as the in-sandbox judge does first."""
    path = sandbox.out_dir / JUDGE_KEY_FILE
    key = bytes.fromhex(path.read_text())
    path.unlink()
    return key


def sealed(report_bytes: bytes, key: bytes) -> str:
    """The framed line the in-sandbox judge prints for its static report."""
    payload = json.dumps(json.loads(report_bytes), sort_keys=True)
    mac = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    return f"{JUDGE_STATIC_PREFIX}{mac} {payload}\n"


def judge_as_it_should(
    sandbox: FakeSandbox,
    static: bytes | None = None,
    tests: bytes | None = None,
) -> int:
    """Log a line, seal the static report on the output, write the tests report; exit 0."""
    key = take_key(sandbox)
    sandbox.print("INFO taskbox_runner.verify.harness: verifying /work\n")
    sandbox.print(sealed(static or report(), key))
    sandbox.write(JUDGE_TESTS_REPORT, tests or report())
    return 0


def test_candidate_trees_are_the_plan_with_the_change_and_the_base_with_its_tests(
    world: World,
) -> None:
    """The candidate drops deletions and adds files; fail-to-pass is the base plus the new tests only."""
    tree, fail_to_pass = candidate_trees(world.plan, world.candidate)

    assert set(tree) == {"app/main.py", "app/greet.py", "tests/test_greet.py"}
    assert set(fail_to_pass) == {"app/main.py", "tests/test_main.py", "tests/test_greet.py"}


def test_an_owned_file_the_candidate_deleted_is_not_mounted(world: World) -> None:
    """No empty placeholder stands in for a deleted module: the judge sees the tree that lands."""
    specs: list[Any] = []

    def handler(sandbox: FakeSandbox) -> int:
        specs.append(sandbox.spec)
        return judge_as_it_should(sandbox)

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
        return judge_as_it_should(sandbox)

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "succeeded", verdict.reason


def test_one_container_without_a_gateway_seals_the_static_report_and_records_both(
    world: World,
) -> None:
    """One judge container: no gateway, read-only base trees, 2 CPUs, a key it alone reads; both reports recorded."""
    seen: list[FakeSandbox] = []
    keys: list[tuple[int, int]] = []

    def handler(sandbox: FakeSandbox) -> int:
        seen.append(sandbox)
        info = (sandbox.out_dir / JUDGE_KEY_FILE).stat()
        keys.append((info.st_mode & 0o777, info.st_uid))
        return judge_as_it_should(sandbox)

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "succeeded", verdict.reason
    assert len(seen) == 1
    spec = seen[0].spec
    targets = {m.target: m.read_only for m in spec.mounts}
    assert GATEWAY_DIR not in targets
    assert targets[WORKDIR] is True
    assert targets[BASE_DIR] is True
    assert targets[F2P_DIR] is True
    assert spec.command == list(JUDGE_COMMAND)
    assert spec.name == "taskbox-BE-7-run-judge"
    assert spec.labels["org.taskbox.phase"] == "judge"
    assert spec.nano_cpus == int(min(2.0, world.policy.max.cpus) * 1e9)
    assert spec.memory_bytes == world.policy.limits.memory_mb * 1024 * 1024
    assert spec.pids_limit == world.policy.limits.pids
    assert keys == [(0o400, world.policy.uid)]
    assert {
        "container-judge.json",
        "judge-static.json",
        "judge-tests.json",
        "judge-config.json",
        "verdict.json",
    } <= set(world.records)
    assert (world.folder / "judge.log").read_text().startswith("INFO ")


def test_a_static_failure_cannot_be_undone_by_the_tests_report(world: World) -> None:
    """The static report is sealed: a passing tests report does not pass constraint 2 again."""

    def handler(sandbox: FakeSandbox) -> int:
        return judge_as_it_should(sandbox, static=report({2: "app/greet.py:1: TB0201 secret"}))

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert "app/greet.py:1: TB0201 secret" in verdict.constraints[1].evidence


def test_a_later_framed_line_is_ignored_even_with_a_good_seal(world: World) -> None:
    """Only the first framed line counts: a passing report printed after it (by model code) changes nothing."""

    def handler(sandbox: FakeSandbox) -> int:
        key = take_key(sandbox)
        sandbox.print(sealed(report({9: "app/greet.py:1: E501 line too long"}), key))
        sandbox.print("collected 1 item\n" + sealed(report(), key) + sealed(report(), key))
        sandbox.write(JUDGE_TESTS_REPORT, report())
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert not verdict.constraints[8].passed
    assert "app/greet.py:1: E501 line too long" in verdict.constraints[8].evidence


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ("missing", "it was never written"),
        ("wrong-key", "seal does not match"),
        ("cut-off", "cut off"),
        ("garbled-json", "is unusable"),
        ("no-mac", "not framed"),
        ("overlong", "characters"),
        ("not-ascii", "not ASCII"),
    ],
)
def test_a_missing_or_unusable_first_static_line_fails_closed(
    world: World, first: str, why: str
) -> None:
    """No sealed first line (absent, forged, cut, garbled, too long): failed, whatever the tests report says."""
    other_key = bytes(32)

    def handler(sandbox: FakeSandbox) -> int:
        key = take_key(sandbox)
        good = sealed(report(), key)
        payload = '{"framework": "fastapi",'
        garbled = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
        lines = {
            "missing": "INFO nothing sealed here\n",
            "wrong-key": sealed(report(), other_key) + good,
            "cut-off": good.rstrip("\n"),
            "garbled-json": f"{JUDGE_STATIC_PREFIX}{garbled} {payload}\n" + good,
            "no-mac": f"{JUDGE_STATIC_PREFIX}{report().decode()}\n" + good,
            "overlong": good.replace('"warnings": []', '"warnings": ["' + "x" * 1_100_000 + '"]'),
            "not-ascii": good.replace('"fastapi"', '"fastap\u00ef"'),
        }
        sandbox.print(lines[first])
        sandbox.write(JUDGE_TESTS_REPORT, report())
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert verdict.reason is not None
    assert verdict.reason.startswith("the judge's static report is missing or unusable"), (
        verdict.reason
    )
    assert why in verdict.reason, verdict.reason
    assert not verdict.constraints
    assert "judge-static.json" not in world.records
    assert "verdict.json" in world.records


def test_a_static_line_in_pieces_of_one_character_is_read_whole(world: World) -> None:
    """The engine may cut the output anywhere: a line that arrives one character at a time still counts."""

    def handler(sandbox: FakeSandbox) -> int:
        key = take_key(sandbox)
        for char in "INFO x\n" + sealed(report({3: "app/greet.py:2: ANN201 missing"}), key):
            sandbox.print(char)
        sandbox.write(JUDGE_TESTS_REPORT, report())
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert "app/greet.py:2: ANN201 missing" in verdict.constraints[2].evidence


def test_the_reader_holds_little_of_a_long_line_that_is_not_framed() -> None:
    """A flood of output that is not the report is forwarded, not held: memory stays bounded."""
    forwarded: list[str] = []
    reader = SealedReportReader(key=b"k" * 32, max_bytes=1000, forward=forwarded.append)
    for _ in range(1000):
        reader("y" * 1000)
    reader("\n")

    assert sum(len(c) for c in forwarded) == 1_000_001
    assert reader.buffered_chars == 0
    reader.finish()
    assert reader.report is None
    assert reader.problem == "it was never written"


@pytest.mark.parametrize(
    "tests_phase",
    ["killed", "exit-2", "no-report", "link", "garbage", "timeout"],
)
def test_tests_that_end_badly_fail_every_constraint(world: World, tests_phase: str) -> None:
    """Killed, failed, silent, a link for a report, garbage or the deadline: failed, nothing passes."""

    def handler(sandbox: FakeSandbox) -> int | Exit:
        key = take_key(sandbox)
        sandbox.print(sealed(report(), key))
        if tests_phase == "killed":
            return Exit(exit_code=137, oom=True)
        if tests_phase == "link":
            sandbox.symlink(JUDGE_TESTS_REPORT, "/etc/passwd")
        elif tests_phase == "garbage":
            sandbox.write(JUDGE_TESTS_REPORT, b'{"framework": "fastapi", "framework": "x"}')
        elif tests_phase == "exit-2":
            sandbox.write(JUDGE_TESTS_REPORT, report())
            return 2
        elif tests_phase == "timeout":
            sandbox.write(JUDGE_TESTS_REPORT, report())
            sandbox.sleep(10_000)
        return 0

    verdict = world.judge(FakeEngine(handler))

    assert verdict.status == "failed"
    assert verdict.reason is not None
    assert verdict.reason.startswith("the judge's tests"), verdict.reason
    assert not any(c.passed for c in verdict.constraints)
    assert "judge-static.json" in world.records


def test_a_cancel_while_judging_fails_and_removes_the_container(world: World) -> None:
    """A cancel during the tests removes the judge's container; the verdict is failed, never succeeded."""
    cancel = threading.Event()

    def handler(sandbox: FakeSandbox) -> int:
        key = take_key(sandbox)
        sandbox.print(sealed(report(), key))
        sandbox.write(JUDGE_TESTS_REPORT, report())
        cancel.set()
        sandbox.run_until_removed()
        return 0

    engine = FakeEngine(handler)
    verdict = world.judge(engine, cancel)

    assert verdict.status == "failed"
    assert verdict.reason == "the judge was cancelled"
    assert engine.live == []
