"""Ingestion against real git: a scratch repo makes the bundle the way the runner does, hostile variants are refused."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from controller.errors import IngestionError
from controller.gitrepo import SAFE_GIT_ENV, list_tree, read_blobs, resolve_commit
from controller.ingest import BUNDLE_REF, CommitIdentity, IngestedResult, ingest
from controller.ingest import bundle as ingest_bundle
from controller.ingest import git as ingest_git
from controller.ingest import paths as ingest_paths
from controller.policy.loader import load_policy
from controller.policy.planner import MountPlan, plan_mounts
from controller.policy.schema import Ingestion, Limits, Policy
from taskbox_wire.contract import Task
from tests import packforge
from tests.claim_judge import claim_judge
from tests.packforge import GIB, Entry, delta_bomb_entries, pack, repository_objects

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
KEY = "BE-123"
SUBJECT = f"feat(users): add the users endpoint [{KEY}]"
IDENTITY = CommitIdentity(name="Taskbox", email="taskbox@example.invalid")
WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)

#: The scratch side runs git like the runner would, with its own fixed identity.
SANDBOX_ENV = {
    **SAFE_GIT_ENV,
    "GIT_AUTHOR_NAME": "Sandbox",
    "GIT_AUTHOR_EMAIL": "sandbox@example.invalid",
    "GIT_AUTHOR_DATE": "@1700000000 +0000",
    "GIT_COMMITTER_NAME": "Sandbox",
    "GIT_COMMITTER_EMAIL": "sandbox@example.invalid",
    "GIT_COMMITTER_DATE": "@1700000000 +0000",
}

TARGET_FILES = {
    "README.md": "# demo\n",
    "app/main.py": "print('main')\n",
    "app/util.py": "def helper() -> int:\n    return 1\n",
    "app/.env": "SECRET=never-shown\n",
    "app/run.sh": "#!/bin/sh\necho run\n",
    "docs/readme.md": "How the app works.\n",
    "other/keep.txt": "never staged\n",
    "secrets/token": "s3cr3t\n",
}


def git_bytes(cwd: Path, *args: str, input_bytes: bytes | None = None) -> bytes:
    """Run git in a test repository and return its stdout."""
    done = subprocess.run(
        ["git", "-C", str(cwd), *args],
        input=input_bytes,
        capture_output=True,
        env=SANDBOX_ENV,
        check=True,
    )
    return done.stdout


def git(cwd: Path, *args: str, input_bytes: bytes | None = None) -> str:
    """Run git in a test repository and return its stripped text output."""
    return git_bytes(cwd, *args, input_bytes=input_bytes).decode().strip()


def snapshot(repo: Path) -> tuple[str, str, str, str]:
    """Everything a refused ingestion must leave as it was: refs, objects, HEAD, work tree."""
    return (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        git(repo, "cat-file", "--batch-all-objects", "--batch-check"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "status", "--porcelain", "--ignored"),
    )


def make_target(root: Path) -> Path:
    """The user's repository, with files the sandbox must never see and a symlink."""
    repo = root / "target"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for path, text in TARGET_FILES.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    (repo / "app/run.sh").chmod(0o755)
    (repo / "app/link").symlink_to("../README.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def make_plan(
    repo: Path, policy: Policy, owns: tuple[str, ...] = ("app/", "tests/test_main.py")
) -> MountPlan:
    """The mount plan the controller would compute for the test task."""
    base = resolve_commit(repo, "HEAD")
    task = Task.model_validate(
        {
            "taskKey": KEY,
            "description": "Add the users endpoint.",
            "ownsPaths": list(owns),
            "contextJson": {f"{KEY}-ctx": {"relevant_files": ["docs/readme.md", "docs/absent.md"]}},
        }
    )
    return plan_mounts(task, list_tree(repo, base), policy, base)


class Sandbox:
    """The runner's side: a scratch repo whose base commit holds exactly the staged files."""

    def __init__(
        self, root: Path, target: Path, plan: MountPlan, *, extra_base: dict[str, str] | None = None
    ) -> None:
        self.root = root
        root.mkdir()
        git(root, "init", "-q", "-b", "taskbox")
        blobs = read_blobs(target, [s.oid for s in plan.staged])
        for staged in plan.staged:
            self.write(staged.path, blobs[staged.oid].decode(), executable=staged.executable)
        for path, text in (extra_base or {}).items():
            self.write(path, text)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "base")
        self.base = git(root, "rev-parse", "HEAD")

    def write(self, path: str, text: str, *, executable: bool = False) -> None:
        """Write a file in the scratch work tree."""
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        file.chmod(0o755 if executable else 0o644)

    def commit(self, message: str = SUBJECT) -> str:
        """Commit the work tree on top of the base, as the runner does."""
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def blob(self, content: bytes) -> str:
        """Write a blob and return its id."""
        return git(self.root, "hash-object", "-w", "--stdin", input_bytes=content)

    def mktree(self, entries: dict[bytes, tuple[str, str]]) -> str:
        """Build nested trees from path -> (mode, oid) with git mktree, so any name can be crafted."""
        leaves: list[bytes] = []
        folders: dict[bytes, dict[bytes, tuple[str, str]]] = {}
        for path, (mode, oid) in entries.items():
            head, sep, rest = path.partition(b"/")
            if sep:
                folders.setdefault(head, {})[rest] = (mode, oid)
            else:
                kind = {"160000": "commit", "040000": "tree"}.get(mode, "blob")
                leaves.append(f"{mode} {kind} {oid}\t".encode() + head + b"\0")
        for name, sub in folders.items():
            leaves.append(f"040000 tree {self.mktree(sub)}\t".encode() + name + b"\0")
        return git(self.root, "mktree", "-z", "--missing", input_bytes=b"".join(leaves))

    def base_entries(self) -> dict[bytes, tuple[str, str]]:
        """The base commit's files as mktree input."""
        out = git_bytes(self.root, "ls-tree", "-r", "-z", self.base)
        entries: dict[bytes, tuple[str, str]] = {}
        for record in filter(None, out.split(b"\0")):
            meta, _, path = record.partition(b"\t")
            mode, _kind, oid = meta.decode().split(" ")
            entries[path] = (mode, oid)
        return entries

    def crafted_commit(self, extra: dict[bytes, tuple[str, str]], message: str = SUBJECT) -> str:
        """A work commit whose tree is the base plus crafted entries, set as the branch tip."""
        tree = self.mktree({**self.base_entries(), **extra})
        commit = git(self.root, "commit-tree", tree, "-p", self.base, "-m", message)
        git(self.root, "update-ref", BUNDLE_REF, commit)
        return commit

    def bundle(self, *revs: str) -> bytes:
        """A bundle of the given revisions (default: the runner's single ref)."""
        path = self.root.parent / f"{self.root.name}-{len(list(self.root.parent.iterdir()))}.bundle"
        git(self.root, "bundle", "create", "-q", str(path), *(revs or (BUNDLE_REF,)))
        return path.read_bytes()


def runner_result(**overrides: Any) -> bytes:
    """A runner's result.json; its file lists are deliberately wrong."""
    data: dict[str, Any] = {
        "task_key": KEY,
        "status": "succeeded",
        "files_created": ["made/up.py"],
        "files_modified": ["README.md"],
        "git_commit": "f" * 40,
        "summary": "Implemented the users endpoint.",
        "test_results": {
            "total": 3,
            "passed": 3,
            "failed": 0,
            "skipped": 0,
            "coverage_percent": 91.5,
        },
        "missing_context": [],
        "constraints": [{"id": 1, "name": "contract first", "passed": True, "evidence": []}],
    }
    data.update(overrides)
    return json.dumps(data).encode()


class World:
    """One target repository, its plan under a policy, a sandbox and a workspace."""

    def __init__(self, root: Path, policy: Policy) -> None:
        self.root = root
        self.target = make_target(root)
        self.policy = policy
        self.plan = make_plan(self.target, policy)
        self.workspace = root / "workspace"
        self.workspace.mkdir()
        self._sandboxes = 0

    def sandbox(self, **kwargs: Any) -> Sandbox:
        """A fresh scratch repo for this world's plan."""
        self._sandboxes += 1
        return Sandbox(self.root / f"sandbox{self._sandboxes}", self.target, self.plan, **kwargs)

    def with_policy(self, policy: Policy) -> None:
        """Switch to another policy (and re-plan under it, as the controller would)."""
        self.policy = policy
        self.plan = make_plan(self.target, policy)

    def ingest(
        self, bundle: bytes | None, result: bytes | None = None, **overrides: Any
    ) -> IngestedResult:
        """Run ingestion with this world's defaults."""
        arguments: dict[str, Any] = {
            "repo": self.target,
            "plan": self.plan,
            "policy": self.policy,
            "task_key": KEY,
            "result_bytes": runner_result() if result is None else result,
            "bundle_bytes": bundle,
            "workspace": self.workspace,
            "identity": IDENTITY,
            "commit_date": WHEN,
            "subject": SUBJECT,
            "judge": claim_judge,
        }
        arguments.update(overrides)
        return ingest(**arguments)

    def assert_refused(self, reason: str, run: Callable[[], object]) -> IngestionError:
        """``run`` raises IngestionError for ``reason`` and the target repository is untouched."""
        before = snapshot(self.target)
        with pytest.raises(IngestionError, match=f"^{reason}: ") as caught:
            run()
        assert snapshot(self.target) == before
        assert not list(self.workspace.iterdir())
        return caught.value


@pytest.fixture
def policy() -> Policy:
    """The be-python policy, as shipped."""
    return load_policy(ROOT / "policies", "be-python")


@pytest.fixture
def world(tmp_path: Path, policy: Policy) -> World:
    """A fresh world per test."""
    return World(tmp_path, policy)


def allow(policy: Policy, **ingestion: Any) -> Policy:
    """The policy with some ingestion switches turned on."""
    return policy.model_copy(
        update={"ingestion": Ingestion(**{**policy.ingestion.model_dump(), **ingestion})}
    )


# --------------------------------------------------------------------------- happy paths


def test_happy_path_writes_the_commit_on_the_real_base(world: World) -> None:
    """Created and modified files land on taskbox/<key> on top of the real base, with hidden files kept."""
    box = world.sandbox()
    box.write("app/users.py", "def users() -> list[str]:\n    return []\n")
    box.write("app/main.py", "print('main with users')\n")
    box.write("tests/test_main.py", "def test_ok() -> None:\n    assert True\n")
    box.write("app/run.sh", "#!/bin/sh\necho run faster\n", executable=True)
    box.commit()
    base = resolve_commit(world.target, "main")

    done = world.ingest(box.bundle())

    assert done.branch == f"taskbox/{KEY}"
    assert done.result.status == "succeeded"
    assert done.result.reason is None
    assert done.result.files_created == ["app/users.py", "tests/test_main.py"]
    assert done.result.files_modified == ["app/main.py", "app/run.sh"]
    assert done.files_deleted == []
    commit = done.result.git_commit
    assert commit is not None
    assert git(world.target, "rev-parse", f"refs/heads/taskbox/{KEY}") == commit
    assert git(world.target, "rev-parse", f"{commit}^") == base
    assert git(
        world.target, "log", "-1", "--format=%s%n%an <%ae>%n%cn%n%at %ai", commit
    ).splitlines() == [
        SUBJECT,
        "Taskbox <taskbox@example.invalid>",
        "Taskbox",
        f"{int(WHEN.timestamp())} 2025-03-04 05:06:07 +0000",
    ]
    final = list_tree(world.target, commit)
    before = list_tree(world.target, base)
    for hidden in (
        "app/.env",
        "app/link",
        "other/keep.txt",
        "secrets/token",
        "README.md",
        "docs/readme.md",
    ):
        assert final[hidden] == before[hidden]
    assert final["app/run.sh"].mode == "100755"
    assert git(world.target, "show", f"{commit}:app/users.py").startswith("def users()")
    assert git(world.target, "rev-parse", "main") == base  # HEAD's branch untouched
    assert git(world.target, "status", "--porcelain") == ""  # work tree and index untouched
    assert not list(world.workspace.iterdir())


def test_runner_fields_are_kept_and_missing_context_merged(world: World) -> None:
    """The agent's summary is kept as its claim, escapes stripped; the plan's refusals are missing context."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    result = runner_result(
        summary="done \x1b[31mred\x1b[0m", missing_context=["app/models.py — needed"]
    )

    done = world.ingest(box.bundle(), result)

    assert done.result.agent is not None
    assert done.result.agent.summary == "done [31mred[0m"
    assert done.result.summary.startswith("judge: ")
    assert done.result.test_results.passed == 3
    assert done.result.missing_context[-1] == "app/models.py — needed"
    assert any(item.startswith("docs/absent.md") for item in done.result.missing_context)
    assert done.sandbox_commit == git(box.root, "rev-parse", "HEAD")


def test_deletions_are_reported_separately(world: World) -> None:
    """A removed owned file is reported in files_deleted and gone from the final tree."""
    box = world.sandbox()
    (box.root / "app/util.py").unlink()
    box.write("app/users.py", "x = 1\n")
    box.commit()

    done = world.ingest(box.bundle())

    assert done.files_deleted == ["app/util.py"]
    assert done.result.files_created == ["app/users.py"]
    assert done.result.git_commit is not None
    assert "app/util.py" not in list_tree(world.target, done.result.git_commit)


def test_file_replaced_by_folder_of_the_same_name(world: World) -> None:
    """An owned file may become a folder: the deletion frees the name before the new files are added."""
    box = world.sandbox()
    (box.root / "app/util.py").unlink()
    box.write("app/util.py/__init__.py", "")
    box.commit()

    done = world.ingest(box.bundle())

    assert done.files_deleted == ["app/util.py"]
    assert done.result.files_created == ["app/util.py/__init__.py"]


def test_replay_gives_the_same_commit_and_leaves_the_branch(world: World) -> None:
    """The same bundle, identity and date give the same commit id; a second ingestion is a no-op."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    bundle = box.bundle()

    first = world.ingest(bundle)
    refs = git(world.target, "for-each-ref")
    second = world.ingest(bundle)

    assert first.result.git_commit == second.result.git_commit
    assert git(world.target, "for-each-ref") == refs


def test_commit_date_time_zone_is_kept(world: World) -> None:
    """A date in another zone is written with its own offset."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    when = datetime(2025, 3, 4, 7, 36, 7, tzinfo=timezone(timedelta(hours=2, minutes=30)))

    done = world.ingest(box.bundle(), commit_date=when)

    assert git(
        world.target, "log", "-1", "--format=%ad", "--date=raw", done.result.git_commit or ""
    ) == (f"{int(when.timestamp())} +0230")


def test_existing_branch_elsewhere_is_refused(world: World) -> None:
    """A taskbox/<key> branch that points elsewhere is never overwritten."""
    git(world.target, "branch", f"taskbox/{KEY}", "main")
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    refs = git(world.target, "for-each-ref", "--format=%(refname) %(objectname)")

    with pytest.raises(IngestionError, match=r"^branch_exists: "):
        world.ingest(box.bundle())

    assert git(world.target, "for-each-ref", "--format=%(refname) %(objectname)") == refs


def test_base_only_bundle_means_no_change(world: World) -> None:
    """A bundle with just the base commit is accepted; a claimed success becomes a failure and no branch is made."""
    box = world.sandbox()
    before = snapshot(world.target)

    done = world.ingest(box.bundle())

    assert done.result.status == "failed"
    assert done.result.reason == "the sandbox committed no change"
    assert done.branch is None
    assert done.result.git_commit is None
    assert done.result.files_created == done.result.files_modified == []
    assert snapshot(world.target) == before


def test_empty_work_commit_means_no_change(world: World) -> None:
    """A work commit with the base's tree counts as no change."""
    box = world.sandbox()
    box.commit()

    done = world.ingest(box.bundle())

    assert done.result.status == "failed"
    assert done.branch is None


def test_no_bundle_with_success_claimed_becomes_failed(world: World) -> None:
    """Without a bundle a success claim is downgraded and nothing is written."""
    before = snapshot(world.target)

    done = world.ingest(None)

    assert done.result.status == "failed"
    assert done.result.files_created == []
    assert done.result.git_commit is None
    assert snapshot(world.target) == before


def test_failed_constraints_and_tests_downgrade_success(world: World) -> None:
    """A success claim with a failed constraint or test is reported as failed, and no branch is written."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    result = runner_result(
        constraints=[{"id": 4, "name": "coverage", "passed": False, "evidence": []}],
        test_results={"total": 3, "passed": 2, "failed": 1, "skipped": 0},
    )
    before = snapshot(world.target)

    done = world.ingest(box.bundle(), result)

    assert done.result.status == "failed"
    assert done.result.reason == "the claimed checks failed"
    assert done.branch is None
    assert done.result.git_commit is None
    assert done.candidate_commit is not None  # judged, written to the objects, on no branch
    assert done.result.files_created == ["app/users.py"]  # still recomputed from the checked diff
    refs, _objects, head, status = snapshot(world.target)
    assert (refs, head, status) == (before[0], before[2], before[3])


def test_status_claimed_by_the_sandbox_is_reported_as_its_claim(world: World) -> None:
    """Only the controller sets 'timeout': a sandbox that claims it is failed, its words quoted."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()

    done = world.ingest(box.bundle(), runner_result(status="timeout", reason="budget spent"))

    assert (done.result.status, done.branch) == ("failed", None)
    assert done.result.reason == (
        "the judge's checks passed, but reported by the sandbox: timeout: budget spent"
    )


def test_failed_run_is_still_checked(world: World) -> None:
    """A failed run's bundle is checked all the same: a hostile one is refused, not waved through."""
    box = world.sandbox()
    box.write("README.md", "defaced\n")
    box.commit()
    world.assert_refused(
        "outside_owned_paths", lambda: world.ingest(box.bundle(), runner_result(status="failed"))
    )


def test_symlink_inside_the_repository_allowed_by_policy(world: World, policy: Policy) -> None:
    """With allow_symlinks, a relative link that stays in the repository is accepted."""
    world.with_policy(allow(policy, allow_symlinks=True))
    box = world.sandbox()
    (box.root / "app/alias.py").symlink_to("main.py")
    box.commit()

    done = world.ingest(box.bundle())

    assert list_tree(world.target, done.result.git_commit or "")["app/alias.py"].mode == "120000"


def test_executable_allowed_by_policy(world: World, policy: Policy) -> None:
    """With allow_executable, a new executable file is accepted with its bit."""
    world.with_policy(allow(policy, allow_executable=True))
    box = world.sandbox()
    box.write("app/tool.sh", "#!/bin/sh\n", executable=True)
    box.commit()

    done = world.ingest(box.bundle())

    assert list_tree(world.target, done.result.git_commit or "")["app/tool.sh"].mode == "100755"


def test_commit_message_is_the_hosts_subject(world: World) -> None:
    """The sandbox's message is never read: a body forging trailers does not reach the commit."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit(f"{SUBJECT}\n\nSigned-off-by: Someone Else <else@example.invalid>\n")

    done = world.ingest(box.bundle())

    assert git(world.target, "log", "-1", "--format=%B", done.result.git_commit or "") == SUBJECT


# --------------------------------------------------------------------------- hostile paths


def test_path_outside_owned_paths_is_refused(world: World) -> None:
    """A change to a read-only relevant file is refused."""
    box = world.sandbox()
    box.write("docs/readme.md", "rewritten\n")
    box.commit()
    world.assert_refused("outside_owned_paths", lambda: world.ingest(box.bundle()))


def test_new_file_outside_owned_paths_is_refused(world: World) -> None:
    """A new file next to, but not under, the owned paths is refused."""
    box = world.sandbox()
    box.write("tests/conftest.py", "import os\n")
    box.commit()
    world.assert_refused("outside_owned_paths", lambda: world.ingest(box.bundle()))


def test_deny_rule_under_an_owned_folder_is_refused(world: World) -> None:
    """A file matching a deny rule inside an owned folder is refused (deny beats allow)."""
    box = world.sandbox()
    box.write("app/secrets/token.txt", "stolen\n")
    box.commit()
    world.assert_refused("denied", lambda: world.ingest(box.bundle()))


def test_dotenv_under_an_owned_folder_is_refused(world: World) -> None:
    """Writing a .env file the sandbox was never shown is refused by the deny rule."""
    box = world.sandbox()
    box.write("app/.env.local", "X=1\n")
    box.commit()
    world.assert_refused("denied", lambda: world.ingest(box.bundle()))


def test_symlink_is_refused(world: World) -> None:
    """A symbolic link is refused when the policy allows none."""
    box = world.sandbox()
    (box.root / "app/passwd").symlink_to("/etc/passwd")
    box.commit()
    world.assert_refused("symlink", lambda: world.ingest(box.bundle()))


def test_symlink_leaving_the_repository_is_refused_even_when_allowed(
    world: World, policy: Policy
) -> None:
    """With allow_symlinks, a link that points outside the repository is still refused."""
    world.with_policy(allow(policy, allow_symlinks=True))
    box = world.sandbox()
    (box.root / "app/up").symlink_to("../../outside")
    box.commit()
    world.assert_refused("symlink", lambda: world.ingest(box.bundle()))


def test_executable_bit_is_refused(world: World) -> None:
    """A new file with the executable bit is refused when the policy allows none."""
    box = world.sandbox()
    box.write("app/tool.sh", "#!/bin/sh\n", executable=True)
    box.commit()
    world.assert_refused("executable", lambda: world.ingest(box.bundle()))


def test_submodule_is_refused(world: World) -> None:
    """A gitlink (submodule) entry is refused, whatever the policy."""
    box = world.sandbox()
    box.crafted_commit({b"app/vendor": ("160000", "a" * 40)})
    world.assert_refused("submodule", lambda: world.ingest(box.bundle()))


@pytest.mark.parametrize(
    "name",
    [
        b"app/evil\rname.py",
        b"app/evil\nname.py",
        b"app/caf\xe9.py",
        b"app/bidi\xe2\x80\xaeyp.py",
        b"app/back\\slash.py",
    ],
    ids=["carriage-return", "newline", "invalid-utf8", "bidi-override", "backslash"],
)
def test_odd_path_names_are_refused(world: World, name: bytes) -> None:
    """Names with CR, LF, invalid UTF-8, bidi overrides or backslashes are refused."""
    box = world.sandbox()
    box.crafted_commit({name: ("100644", box.blob(b"x\n"))})
    world.assert_refused("invalid_path", lambda: world.ingest(box.bundle()))


@pytest.mark.parametrize(
    "name",
    [b"app/../README.md", b"app/.git/config", b"app/.GIT/hooks/post-checkout"],
    ids=["dotdot", "dotgit", "dotgit-case"],
)
def test_traversal_and_git_folders_are_refused_by_fsck(world: World, name: bytes) -> None:
    """Tree entries named '..' or '.git' (any case) are refused when the objects are checked."""
    box = world.sandbox()
    box.crafted_commit({name: ("100644", box.blob(b"[core]\n\tfsmonitor = touch /tmp/pwned\n"))})
    world.assert_refused("objects_invalid", lambda: world.ingest(box.bundle()))


@pytest.mark.parametrize(
    "name", ["app/.gitattributes", "app/.gitmodules", "app/sub/.GitAttributes"]
)
def test_git_control_files_are_refused(world: World, name: str) -> None:
    """Files that steer git itself (.gitattributes, .gitmodules) may not be added."""
    box = world.sandbox()
    box.write(name, "* filter=evil\n")
    box.commit()
    world.assert_refused("git_metadata", lambda: world.ingest(box.bundle()))


def test_odd_mode_is_refused_by_fsck(world: World) -> None:
    """A tree entry with a non-canonical mode (100664) is refused when the objects are checked."""
    box = world.sandbox()
    blob = bytes.fromhex(box.blob(b"x\n"))
    raw_tree = b"100664 odd.py\0" + blob
    odd = git(
        box.root, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", input_bytes=raw_tree
    )
    box.crafted_commit({b"app/odd": ("040000", odd)})
    world.assert_refused("objects_invalid", lambda: world.ingest(box.bundle()))


def test_case_collision_within_the_work_is_refused(world: World) -> None:
    """A new name that differs only in case from an existing one is refused."""
    box = world.sandbox()
    box.crafted_commit({b"app/Main.py": ("100644", box.blob(b"x\n"))})
    world.assert_refused("case_collision", lambda: world.ingest(box.bundle()))


@pytest.mark.parametrize("name", ["app/.ENV", "app/SECRETS/token.txt", "app/server.PEM"])
def test_case_variant_of_a_denied_name_is_refused(world: World, name: str) -> None:
    """Deny rules also match the case-folded path, as a case-insensitive checkout would see it."""
    box = world.sandbox()
    box.write(name, "SECRET=overwritten\n")
    box.commit()
    world.assert_refused("denied", lambda: world.ingest(box.bundle()))


def test_case_variant_of_a_hidden_file_is_refused(world: World) -> None:
    """'app/LINK' collides with the hidden symlink app/link the sandbox was never shown."""
    box = world.sandbox()
    box.write("app/LINK", "shadowing the link\n")
    box.commit()
    world.assert_refused("case_collision", lambda: world.ingest(box.bundle()))


def test_unicode_normalisation_collision_is_refused(world: World) -> None:
    """Two names equal under NFC (as macOS sees them) are refused."""
    box = world.sandbox()
    box.crafted_commit(
        {
            "app/caf\u00e9.py".encode(): ("100644", box.blob(b"a\n")),
            "app/cafe\u0301.py".encode(): ("100644", box.blob(b"b\n")),
        }
    )
    world.assert_refused("case_collision", lambda: world.ingest(box.bundle()))


def test_file_at_a_hidden_path_is_refused(world: World) -> None:
    """Writing where the base has a symlink the sandbox was not shown is refused."""
    box = world.sandbox()
    box.write("app/link", "not a link any more\n")
    box.commit()
    world.assert_refused("hidden_path", lambda: world.ingest(box.bundle()))


def test_file_under_a_hidden_file_is_refused(world: World) -> None:
    """A new file below a name that is a hidden file at the base is refused."""
    box = world.sandbox()
    box.write("app/link/inside.py", "x = 1\n")
    box.commit()
    world.assert_refused("hidden_path", lambda: world.ingest(box.bundle()))


def test_oversized_file_is_refused(world: World, policy: Policy) -> None:
    """A blob larger than the sandbox's own file-size limit is refused."""
    limits = Limits(**{**policy.limits.model_dump(), "file_size_mb": 1})
    world.with_policy(policy.model_copy(update={"limits": limits}))
    box = world.sandbox()
    box.write("app/big.txt", "x" * (1024 * 1024 + 1))
    box.commit()
    world.assert_refused("file_too_large", lambda: world.ingest(box.bundle()))


# --------------------------------------------------------------------------- hostile history


def test_extra_file_smuggled_into_the_base_is_refused(world: World) -> None:
    """A base commit with a file that was not staged does not match the planned tree."""
    box = world.sandbox(extra_base={"README.md": "defaced\n"})
    box.write("app/users.py", "x = 1\n")
    box.commit()
    error = world.assert_refused("base_tree_mismatch", lambda: world.ingest(box.bundle()))
    assert "extra 'README.md'" in str(error)


def test_read_only_file_changed_in_the_base_is_refused(world: World) -> None:
    """Changing a read-only file inside the base commit (so the diff hides it) is refused."""
    box = world.sandbox(extra_base={"docs/readme.md": "rewritten in the base\n"})
    box.commit()
    error = world.assert_refused("base_tree_mismatch", lambda: world.ingest(box.bundle()))
    assert "different 'docs/readme.md'" in str(error)


def test_three_commits_are_refused(world: World) -> None:
    """More than one work commit on the base is refused."""
    box = world.sandbox()
    box.write("app/a.py", "a = 1\n")
    box.commit()
    box.write("app/b.py", "b = 1\n")
    box.commit()
    world.assert_refused("history", lambda: world.ingest(box.bundle()))


def test_merge_commit_is_refused(world: World) -> None:
    """A work commit with two parents is refused."""
    box = world.sandbox()
    other = git(
        box.root, "commit-tree", git(box.root, "rev-parse", "HEAD^{tree}"), "-m", "other root"
    )
    tree = git(box.root, "rev-parse", "HEAD^{tree}")
    merge = git(box.root, "commit-tree", tree, "-p", box.base, "-p", other, "-m", SUBJECT)
    git(box.root, "update-ref", BUNDLE_REF, merge)
    world.assert_refused("history", lambda: world.ingest(box.bundle()))


def test_work_commit_without_the_base_is_refused(world: World) -> None:
    """A single root commit that already holds the work does not match the planned base tree."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    git(box.root, "add", "-A")
    tree = git(box.root, "write-tree")
    root_commit = git(box.root, "commit-tree", tree, "-m", SUBJECT)
    git(box.root, "update-ref", BUNDLE_REF, root_commit)
    world.assert_refused("base_tree_mismatch", lambda: world.ingest(box.bundle()))


# --------------------------------------------------------------------------- hostile bundles


def test_thin_bundle_with_prerequisites_is_refused(world: World) -> None:
    """A bundle that needs the base from elsewhere is refused: it must be self-contained."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    world.assert_refused(
        "bundle_prerequisites", lambda: world.ingest(box.bundle(f"{box.base}..{BUNDLE_REF}"))
    )


def test_bundle_with_an_extra_ref_is_refused(world: World) -> None:
    """A second ref (here a tag) next to the expected one is refused."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    git(box.root, "tag", "extra")
    world.assert_refused(
        "bundle_refs", lambda: world.ingest(box.bundle(BUNDLE_REF, "refs/tags/extra"))
    )


def test_bundle_with_head_only_is_refused(world: World) -> None:
    """A bundle whose only ref is HEAD is refused: the ref name must be exact."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    world.assert_refused("bundle_refs", lambda: world.ingest(box.bundle("HEAD")))


@pytest.mark.parametrize("ref", [b"refs/heads/../x", b"refs/heads/taskbox2", b"refs/heads/Taskbox"])
def test_bundle_with_an_odd_ref_name_is_refused(world: World, ref: bytes) -> None:
    """A rewritten header naming any other ref is refused before git reads it."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    bundle = box.bundle().replace(BUNDLE_REF.encode() + b"\n", ref + b"\n", 1)
    world.assert_refused("bundle_refs", lambda: world.ingest(bundle))


def test_partial_bundle_capability_is_refused(world: World) -> None:
    """A v3 header asking for a filter (a partial bundle) is refused."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    bundle = box.bundle().replace(b"# v2 git bundle\n", b"# v3 git bundle\n@filter=blob:none\n", 1)
    world.assert_refused("bundle_invalid", lambda: world.ingest(bundle))


@pytest.mark.parametrize(
    "data",
    [b"", b"not a bundle at all\n", b"PK\x03\x04zipfile", b"# v2 git bundle\n" + b"a" * 70_000],
    ids=["empty", "text", "zip", "endless-header"],
)
def test_not_a_bundle_is_refused(world: World, data: bytes) -> None:
    """Bytes that are not a git bundle are refused."""
    world.assert_refused("bundle_invalid", lambda: world.ingest(data))


def test_corrupt_pack_is_refused(world: World) -> None:
    """A valid header followed by a damaged pack is refused by git."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    bundle = box.bundle()
    header_end = bundle.index(b"\n\nPACK") + 2
    damaged = bundle[: header_end + 12] + bytes(len(bundle) - header_end - 12)
    world.assert_refused("bundle_invalid", lambda: world.ingest(damaged))


def test_oversized_bundle_is_refused(world: World, policy: Policy) -> None:
    """A bundle over the policy's size cap is refused before it is written anywhere."""
    world.with_policy(allow(policy, max_bundle_bytes=100))
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    world.assert_refused("bundle_too_large", lambda: world.ingest(box.bundle()))


def test_hostile_repository_config_is_never_read(world: World) -> None:
    """fsmonitor, hooksPath, pager, filters and include in the sandbox repo (around the workspace too) never run."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    bundle = box.bundle()
    marker = world.root / "pwned"
    trap = f"touch {marker} #"  # '#' swallows the arguments git appends
    hooks = box.root / "hooks"
    hooks.mkdir()
    for hook in (
        "pre-commit",
        "post-checkout",
        "reference-transaction",
        "pre-auto-gc",
        "post-index-change",
    ):
        (hooks / hook).write_text(f"#!/bin/sh\n{trap}\n")
        (hooks / hook).chmod(0o755)
    (box.root / "included.cfg").write_text(f"[core]\n\tsshCommand = {trap}\n")
    with (box.root / ".git/config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {trap}\n\thooksPath = {hooks}\n\tpager = {trap}\n"
            f'[filter "evil"]\n\tclean = {trap}\n\tsmudge = {trap}\n\tprocess = {trap}\n'
            f'[diff "evil"]\n\ttextconv = {trap}\n\tcommand = {trap}\n'
            f"[include]\n\tpath = {box.root / 'included.cfg'}\n"
        )
    (box.root / ".git/info/attributes").write_text("* filter=evil diff=evil\n")
    # The trap is armed: an ordinary git command in that repository springs it.
    subprocess.run(
        ["git", "-C", str(box.root), "status"], capture_output=True, env=SANDBOX_ENV, check=False
    )
    assert marker.exists()
    marker.unlink()
    # The workspace sits inside the hostile work tree, so any git that searched upwards would find it.
    world.workspace = box.root / "out"
    world.workspace.mkdir()

    done = world.ingest(bundle)

    assert done.result.status == "succeeded"
    assert not marker.exists()


# --------------------------------------------------------------------------- commit message


@pytest.mark.parametrize(
    "message",
    [
        "add users",
        "feat(users): add users [BE-999]",
        "feat(users): add users [skip ci] [BE-123]",
        "feat(users): add \x1b[31musers [BE-123]",
        "feat(users):  [BE-123]",
        f"feat(users): {'x' * 300} [BE-123]",
    ],
    ids=["free-form", "other-key", "skip-ci", "escape", "empty-description", "too-long"],
)
def test_sandbox_commit_message_never_reaches_the_commit(world: World, message: str) -> None:
    """Whatever the sandbox's work commit says, the landed commit's message is the host's subject."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit(message)

    done = world.ingest(box.bundle())

    assert done.result.status == "succeeded"
    assert git(world.target, "log", "-1", "--format=%B", done.result.git_commit or "") == SUBJECT


def test_subject_that_is_not_one_clean_line_is_a_callers_bug(world: World) -> None:
    """A subject with a newline or an escape is refused before anything is read or written."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    for subject in (f"{SUBJECT}\nSigned-off-by: x", "feat(a): \x1b[2J [BE-123]", ""):
        with pytest.raises(ValueError, match="one clean line"):
            world.ingest(box.bundle(), subject=subject)


# --------------------------------------------------------------------------- hostile result.json


def nested(depth: int) -> bytes:
    """A result.json nested ``depth`` levels deep inside the summary's place."""
    return (
        b'{"task_key": "BE-123", "status": "succeeded", "summary": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (runner_result(summary="x" * 2_000_000), "over the"),
        (nested(100_000), "nested"),
        (nested(40), "nested deeper"),
        (
            b'{"task_key": "BE-123", "status": "succeeded", "test_results": {"coverage_percent": NaN}}',
            "NaN",
        ),
        (b'{"task_key": "BE-123", "status": "succeeded", "status": "failed"}', "duplicate key"),
        (b'{"task_key": "BE-123", "status": "succeeded", "extra\\u001b[31m": 1}', "schema"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "schema"),
    ],
    ids=[
        "huge",
        "deep",
        "deeper-than-cap",
        "nan",
        "duplicate-key",
        "extra-key",
        "not-utf8",
        "not-an-object",
    ],
)
def test_hostile_result_json_is_refused(world: World, raw: bytes, detail: str) -> None:
    """A huge, deep, NaN, duplicate-key or off-schema result.json is refused before the bundle is looked at."""
    error = world.assert_refused("result_invalid", lambda: world.ingest(b"garbage", raw))
    assert detail in str(error)
    assert "\x1b" not in str(error)


def test_result_for_another_task_is_refused(world: World) -> None:
    """A result.json naming another task key is refused."""
    world.assert_refused(
        "task_mismatch", lambda: world.ingest(None, runner_result(task_key="BE-999"))
    )


def test_plan_under_another_policy_is_refused(world: World, policy: Policy) -> None:
    """Ingesting with a policy other than the plan's is refused (the checks would differ from the plan)."""
    other = allow(policy, allow_symlinks=True)
    world.assert_refused("plan_mismatch", lambda: world.ingest(None, policy=other))


def test_missing_workspace_is_refused(world: World) -> None:
    """A workspace that is not a folder is refused before anything is written."""
    box = world.sandbox()
    box.commit()
    bundle = box.bundle()
    before = snapshot(world.target)
    with pytest.raises(IngestionError, match=r"^workspace: "):
        world.ingest(bundle, workspace=world.root / "absent")
    assert snapshot(world.target) == before


def test_host_git_identity_never_leaks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's git identity variables never leak into the commit."""
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Host User")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "host@example.invalid")
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()

    done = world.ingest(box.bundle())

    assert git(world.target, "log", "-1", "--format=%an %ce", done.result.git_commit or "") == (
        "Taskbox taskbox@example.invalid"
    )


# --------------------------------------------------------------------------- second layer and target


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"app/../x.py", "invalid_path"),
        (b"app//x.py", "invalid_path"),
        (b"app/./x.py", "invalid_path"),
        (b"app/.git/config", "git_metadata"),
        (b"app/GIT~1/config", "git_metadata"),
        (b"app/.git. /config", "git_metadata"),
        (b"app/.gitmodules.", "git_metadata"),
        ("app/.g\u200cit/config".encode(), "invalid_path"),
        (b"app/" + b"x" * 256, "invalid_path"),
    ],
    ids=[
        "dotdot",
        "empty",
        "dot",
        "dotgit",
        "short-name",
        "trailing-dot-space",
        "gitmodules-dot",
        "zero-width",
        "long",
    ],
)
def test_path_rules_behind_fsck(raw: bytes, reason: str) -> None:
    """The path rules refuse on their own what fsck also catches, so neither layer stands alone."""
    with pytest.raises(IngestionError, match=f"^{reason}: "):
        ingest_paths.decoded_path(raw)


def test_pre_existing_case_clash_does_not_block(tmp_path: Path, policy: Policy) -> None:
    """A case clash the repository already had (App/ and app/) does not refuse new files under app/."""
    world = World(tmp_path, policy)
    (world.target / "App").mkdir()
    (world.target / "App/legacy.py").write_text("old = 1\n")
    git(world.target, "add", "-A")
    git(world.target, "commit", "-q", "-m", "legacy folder")
    world.with_policy(policy)
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()

    done = world.ingest(box.bundle())

    assert done.result.files_created == ["app/users.py"]


def test_target_repository_hooks_never_run(world: World) -> None:
    """Writing the commit and the branch runs none of the target repository's own hooks."""
    marker = world.root / "hook-ran"
    hooks = world.target / ".git/hooks"
    for hook in (
        "reference-transaction",
        "post-index-change",
        "pre-commit",
        "post-commit",
        "post-rewrite",
    ):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()

    done = world.ingest(box.bundle())

    assert done.branch == f"taskbox/{KEY}"
    assert not marker.exists()
    git(world.target, "update-ref", "refs/heads/probe", "main")  # the hook is live for plain git
    assert marker.exists()


def test_naive_commit_date_is_rejected_before_any_work(world: World) -> None:
    """A commit date without a time zone is a caller's bug, reported before anything is read or written."""
    before = snapshot(world.target)
    with pytest.raises(ValueError, match="time zone"):
        world.ingest(None, commit_date=datetime(2025, 1, 1))  # noqa: DTZ001 - the naive date is the point
    assert snapshot(world.target) == before


# --------------------------------------------------------------------------- delta bombs and host memory


def hand_bundle(box: Sandbox, extra: list[Entry] | None = None) -> bytes:
    """The sandbox's objects in a pack written by hand (``extra`` entries first), as a v2 bundle."""
    objects = repository_objects(box.root / ".git", SANDBOX_ENV)
    return packforge.bundle(git(box.root, "rev-parse", "HEAD"), pack([*(extra or []), *objects]))


def test_a_hand_written_bundle_is_accepted(world: World) -> None:
    """The control: a pack written by hand, as a sandbox may, passes the pack walk and lands."""
    box = world.sandbox()
    box.write("app/users.py", "USERS: list[str] = []\n")
    box.commit()

    done = world.ingest(hand_bundle(box))

    assert done.result.status == "succeeded"
    assert done.result.files_created == ["app/users.py"]


def test_a_delta_bomb_is_refused_before_host_git_reads_the_bundle(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 17 KB-class bundle whose delta rebuilds 1.5 GiB is refused on the delta's header; no git command sees it."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    bomb = hand_bundle(box, delta_bomb_entries(result_size=3 * GIB // 2))
    assert len(bomb) < 20_000
    commands: list[str] = []
    real_run_git = ingest_git.run_git

    def spy(prefix: Any, args: Any, **kwargs: Any) -> Any:
        commands.append(args[0])
        return real_run_git(prefix, args, **kwargs)

    monkeypatch.setattr(ingest_git, "run_git", spy)

    error = world.assert_refused("file_too_large", lambda: world.ingest(bomb))

    assert "delta rebuilds" in str(error)
    assert str(3 * GIB // 2) in str(error)
    assert not {"init", "bundle", "fetch", "index-pack", "fsck"} & set(commands)


def test_a_delta_result_over_the_policys_file_limit_is_refused(
    world: World, policy: Policy
) -> None:
    """The cap is the policy's file limit: a 2 MiB delta result under a 1 MiB limit is refused, unreferenced or not."""
    limits = Limits(**{**policy.limits.model_dump(), "file_size_mb": 1})
    world.with_policy(policy.model_copy(update={"limits": limits}))
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    data = hand_bundle(box, delta_bomb_entries(result_size=2 * 1024 * 1024, base_size=1000))
    with pytest.raises(
        IngestionError, match=r"^file_too_large: .*delta rebuilds .*file limit, 1 MiB"
    ):
        ingest_bundle.bundle_tip(data, world.policy)


def test_a_pack_declaring_billions_of_objects_is_refused(world: World) -> None:
    """A pack header claiming 4 billion objects is refused before git could size its tables by it."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    objects = repository_objects(box.root / ".git", SANDBOX_ENV)
    data = packforge.bundle(git(box.root, "rev-parse", "HEAD"), pack(objects, count=2**32 - 1))
    world.assert_refused("bundle_too_large", lambda: world.ingest(data))


def test_host_git_runs_under_a_memory_limit(world: World, tmp_path: Path) -> None:
    """With the pack walk bypassed, git fetching the bomb dies at its memory limit instead of taking 1.5 GiB."""
    box = world.sandbox()
    box.write("app/users.py", "x = 1\n")
    box.commit()
    path = tmp_path / "bomb.bundle"
    path.write_bytes(hand_bundle(box, delta_bomb_entries(result_size=3 * GIB // 2)))
    repo = ingest_git.IngestRepo.create(tmp_path / "ingest.git", world.policy)

    with pytest.raises(IngestionError, match=r"(?i)^bundle_invalid: .*out of memory"):
        ingest_bundle.fetch_bundle(repo, path, git(box.root, "rev-parse", "HEAD"))


# --------------------------------------------------------------------------- names other systems cannot check out


@pytest.mark.parametrize(
    "name",
    [
        "app/aux.py",
        "app/CON",
        "app/nul.txt",
        "app/com1.py",
        "app/Lpt9",
        "app/con .txt",
        "app/a:b.py",
        "app/name.",
        "app/name ",
        "app/x<y.py",
        "app/x>y.py",
        'app/say"hi".py',
        "app/p|p.py",
        "app/what?.py",
        "app/star*.py",
        "app/Aux/inner.py",
        "app/dots./inner.py",
        "app/SECRET~1.TXT",
    ],
)
def test_names_other_systems_cannot_check_out_are_refused(world: World, name: str) -> None:
    """A name Windows or macOS cannot check out as itself (device names, ':<>"|?*', a trailing dot or space) is refused with its rule."""
    box = world.sandbox()
    box.write(name, "x = 1\n")
    box.commit()
    error = world.assert_refused("invalid_path", lambda: world.ingest(box.bundle()))
    assert "Windows" in str(error)


@pytest.mark.parametrize(
    "name", ["app/SECRETS./token", "app/secrets /token", "app/Secrets. ./token", "app/.ENV."]
)
def test_windows_forms_of_a_denied_name_are_denied(world: World, name: str) -> None:
    """'SECRETS.' and 'secrets ' are 'secrets' on Windows: the deny rule refuses them as it does the plain name."""
    box = world.sandbox()
    box.write(name, "SECRET=overwritten\n")
    box.commit()
    world.assert_refused("denied", lambda: world.ingest(box.bundle()))


def test_a_name_the_repository_already_has_may_change(tmp_path: Path, policy: Policy) -> None:
    """An 'aux.py' already at the base is the repository's own: a task may modify it."""
    world = World(tmp_path, policy)
    (world.target / "app/aux.py").write_text("old = 1\n")
    git(world.target, "add", "-A")
    git(world.target, "commit", "-q", "-m", "a legacy name")
    world.with_policy(policy)
    box = world.sandbox()
    box.write("app/aux.py", "new = 2\n")
    box.commit()

    done = world.ingest(box.bundle())

    assert done.result.files_modified == ["app/aux.py"]
