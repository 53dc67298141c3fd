"""Result and git ingestion attacks: forged bundles and results fed to ``ingest``, and two real runs.

Every forged variant is something a compromised sandbox could write to /out. The
expected outcome is a refusal with its reason, the target repository byte-for-byte
unchanged (working tree, config, hooks, index, refs) and no hook or hostile config
ever run on the host (a marker file that any of them would create never appears).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from controller.admission import admit
from controller.errors import IngestionError, InvalidTaskError
from controller.ingest import BUNDLE_REF
from controller.ingest import bundle as bundle_module
from controller.ingest import git as ingest_git
from controller.policy.loader import load_policy
from controller.runs import new_run_id
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import commit_subject
from tests import packforge
from tests.packforge import GIB, Entry, delta_bomb_entries, pack, repository_objects
from tests.security.conftest import (
    GIT_ENV,
    PROBE_PATH,
    Arena,
    build_repo,
    editor_create,
    forwarding_test,
    git,
    hostile_script,
    make_task,
    repo_state,
    repository_files,
    write_script,
)
from tests.security.forge import (
    MODE_GITLINK,
    MODE_SYMLINK,
    Forge,
    host_has_no_marker,
    ingest_bundle,
    plant_target_hooks,
    runner_result,
    subject,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.ingest import IngestedResult
    from controller.policy.schema import Policy

pytestmark = [pytest.mark.security]
KEY = "SEC-ING"
MIB = 1024 * 1024


class Target:
    """A target repository with marker hooks, its plan for the ingestion task, and a forge."""

    def __init__(self, root: Path, policies: Path) -> None:
        self.root = root
        self.marker = root / "MARKER-hook-or-config-ran"
        self.repo, self.commit = build_repo(root / "target", repository_files())
        plant_target_hooks(self.repo, self.marker)
        task = make_task(
            KEY, owns=["app/api/", "tests/test_api.py"], relevant=["app/main.py", "pyproject.toml"]
        )
        admission = admit(
            task, repo=self.repo, base_ref="HEAD", policies_dir=policies, policy_name="sec-probe"
        )
        self.policy, self.plan = admission.policy, admission.plan
        self.forge = Forge(root, self.repo, self.plan)
        self.before = repo_state(self.repo)

    def ingest(
        self, bundle: bytes | None, result: bytes | None = None, **kw: Any
    ) -> IngestedResult:
        """Ingest as TaskRunner would."""
        return ingest_bundle(
            repo=self.repo,
            plan=kw.get("plan", self.plan),
            policy=kw.get("policy", self.policy),
            workspace=self.root / "workspace",
            result=result if result is not None else runner_result(KEY),
            bundle=bundle,
        )

    def refused(self, reason: str | tuple[str, ...], run: Callable[[], object]) -> str:
        """``run`` raises IngestionError with ``reason``; the host is untouched; the message."""
        with pytest.raises(IngestionError) as caught:
            run()
        message = str(caught.value)
        reasons = (reason,) if isinstance(reason, str) else reason
        assert message.split(":", 1)[0] in reasons, message
        self.assert_untouched()
        return message

    def assert_untouched(self) -> None:
        """Nothing in the target repository changed and no hook or hostile config ran."""
        assert repo_state(self.repo) == self.before
        assert host_has_no_marker(self.marker)


@pytest.fixture
def target(tmp_path: Path, security_policies: Path) -> Target:
    """A fresh target repository per attack."""
    return Target(tmp_path, security_policies)


# --------------------------------------------------------------------------- hostile git, never run


@pytest.mark.invariant(6)
def test_bundle_from_a_repository_with_hostile_config_and_hooks_runs_nothing(
    target: Target,
) -> None:
    """Invariant 6: a valid bundle made in a repo whose config and hooks all run `touch` is ingested and nothing runs."""
    work = target.forge.work(
        {
            "app/api/users.py": b"USERS = []\n",
            "tests/test_api.py": b"def test_ok() -> None:\n    pass\n",
        }
    )
    bundle = target.forge.bundle(work)
    # Planted after the bundle is made (the forge's own git would run them otherwise): from
    # here on, only a host that ran git in the sandbox's repository could trigger them.
    target.forge.hostile_config(target.marker)
    ingested = target.ingest(bundle)
    assert ingested.result.status == "succeeded"
    assert ingested.branch == f"taskbox/{KEY}"
    assert host_has_no_marker(target.marker)
    after = repo_state(target.repo)
    # Only the new branch appeared: config, hooks, index and working tree are as they were.
    assert {k: v for k, v in after.items() if k != "refs"} == {
        k: v for k, v in target.before.items() if k != "refs"
    }
    assert (
        after["refs"].replace(f"refs/heads/taskbox/{KEY} {ingested.result.git_commit}\n", "")
        == target.before["refs"]
    )


@pytest.mark.invariant(6)
@pytest.mark.parametrize(
    "path",
    [
        b"app/api/.git/config",
        b"app/api/.git/hooks/post-checkout",
        b"app/api/.GIT/config",
        b"app/api/git~1/config",
        b"app/api/.gitmodules",
        b"app/api/.gitattributes",
        b"app/api/.git. /config",
    ],
)
def test_git_metadata_in_the_bundle_is_refused(target: Target, path: bytes) -> None:
    """Invariant 6: .git folders (any case, 8.3 or trailing-dot form), .gitmodules and .gitattributes never land."""
    content = b"[core]\n\tfsmonitor = touch " + str(target.marker).encode() + b"\n"
    work = target.forge.work({path: content})
    target.refused(
        ("git_metadata", "objects_invalid"), lambda: target.ingest(target.forge.bundle(work))
    )


@pytest.mark.invariant(6)
def test_symlinked_git_folder_is_refused(target: Target) -> None:
    """Invariant 6: app/api/.git as a symbolic link (to the host's .git) is refused."""
    work = target.forge.work({"app/api/.git": (MODE_SYMLINK, str(target.repo / ".git").encode())})
    target.refused(
        ("git_metadata", "objects_invalid", "symlink"),
        lambda: target.ingest(target.forge.bundle(work)),
    )


@pytest.mark.invariant(6)
def test_submodule_with_a_carriage_return_path_is_refused(target: Target) -> None:
    """Invariant 6: a gitlink named `sub\\r` (CVE-2025-48384's shape) is refused before any checkout exists."""
    commit = target.commit
    work = target.forge.work({b"app/api/sub\r": (MODE_GITLINK, commit.encode())})
    target.refused(
        ("invalid_path", "submodule", "objects_invalid"),
        lambda: target.ingest(target.forge.bundle(work)),
    )
    work = target.forge.work({b"app/api/sub": (MODE_GITLINK, commit.encode())})
    target.refused(
        ("submodule", "objects_invalid"), lambda: target.ingest(target.forge.bundle(work))
    )


@pytest.mark.invariant(6)
@pytest.mark.parametrize(
    "refs",
    [
        (BUNDLE_REF, "refs/heads/main"),
        ("refs/heads/taskbox/../../main",),
        ("refs/heads/other",),
        ("refs/tags/taskbox",),
    ],
)
def test_bundle_with_extra_or_odd_refs_is_refused(target: Target, refs: tuple[str, ...]) -> None:
    """Invariant 6: a bundle must carry exactly refs/heads/taskbox; extra, other or odd refs are refused."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    if ".." in refs[0]:
        # git itself will not write such a ref: forge the header around a valid bundle.
        data = target.forge.bundle(work).replace(BUNDLE_REF.encode(), refs[0].encode(), 1)
    else:
        data = target.forge.bundle(work, refs=refs)
    target.refused(("bundle_refs", "bundle_invalid"), lambda: target.ingest(data))


@pytest.mark.invariant(6)
def test_thin_bundle_with_prerequisites_is_refused(target: Target) -> None:
    """Invariant 6: a bundle that needs commits it does not carry is refused (nothing is looked up on the host)."""
    base = target.forge.base_commit()
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"}, base=base)
    target.refused(
        "bundle_prerequisites", lambda: target.ingest(target.forge.bundle(work, since=base))
    )


@pytest.mark.invariant(6)
def test_controller_never_clones_or_trusts_a_repository_it_did_not_make() -> None:
    """Invariant 6: no host git in the controller clones, or sets safe.directory, or enables hooks (static guard)."""
    sources = {p: p.read_text() for p in (PROJECT_ROOT / "controller").rglob("*.py")}
    for path, text in sources.items():
        assert not re.search(r"""["']clone["']""", text), f"{path} runs git clone"
        assert "safe.directory" not in text, f"{path} touches safe.directory"
        assert "--recurse-submodules" not in text, f"{path} recurses into submodules"
    ingest_source = sources[PROJECT_ROOT / "controller" / "ingest" / "git.py"]
    for setting in ("core.hooksPath", "core.fsmonitor", "transfer.fsckObjects"):
        assert setting in ingest_source


# --------------------------------------------------------------------------- the bundle's shape


@pytest.mark.invariant(1)
@pytest.mark.parametrize(
    "data",
    [b"", b"not a bundle at all\n", b"PK\x03\x04zip", b"# v2 git bundle\n" + b"\0" * 100],
    ids=["empty", "text", "zip", "header-only"],
)
def test_something_other_than_a_bundle_is_refused(target: Target, data: bytes) -> None:
    """Invariant 1: bytes that are not a complete git bundle are refused before git reads them."""
    target.refused("bundle_invalid", lambda: target.ingest(data))


@pytest.mark.invariant(7)
def test_oversized_bundle_is_refused(target: Target) -> None:
    """Invariant 7: a bundle over the policy's 2 MB cap is refused by size alone."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    data = target.forge.bundle(work) + os.urandom(2_000_001)
    target.refused("bundle_too_large", lambda: target.ingest(data))


@pytest.mark.invariant(7)
def test_file_over_the_size_limit_is_refused(target: Target) -> None:
    """Invariant 7: a blob over the policy's 8 MiB file limit (compressing to nothing) is refused."""
    work = target.forge.work({"app/api/big.bin": b"\0" * (8 * MIB + 1)})
    target.refused("file_too_large", lambda: target.ingest(target.forge.bundle(work)))


@pytest.mark.invariant(1)
def test_base_commit_that_is_not_the_staged_files_is_refused(target: Target) -> None:
    """Invariant 1: a base commit that adds a file (or changes a read-only one) is refused: the base is re-derived."""
    extra = {b".env": ("100644", target.forge.blob(b"SECRET=smuggled\n"))}
    base = target.forge.base_commit(extra)
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"}, base=base)
    target.refused("base_tree_mismatch", lambda: target.ingest(target.forge.bundle(work)))


@pytest.mark.invariant(1)
def test_history_other_than_one_work_commit_on_the_base_is_refused(target: Target) -> None:
    """Invariant 1: two work commits, or a merge, are refused: the shape of the history is checked."""
    first = target.forge.work({"app/api/a.py": b"A = 1\n"})
    tree = target.forge.git("rev-parse", f"{first}^{{tree}}").decode().strip()
    second = target.forge.commit(tree, first, message=subject(KEY) + "\n")
    target.refused("history", lambda: target.ingest(target.forge.bundle(second)))
    merge = target.forge.commit(
        tree, first, target.forge.base_commit(), message=subject(KEY) + "\n"
    )
    target.refused("history", lambda: target.ingest(target.forge.bundle(merge)))


# --------------------------------------------------------------------------- paths and modes


@pytest.mark.invariant(1)
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("pyproject.toml", "outside_owned_paths"),
        ("app/main.py", "outside_owned_paths"),
        ("app/other.py", "outside_owned_paths"),
        ("tests/test_other.py", "outside_owned_paths"),
        ("app/api/.env", "denied"),
        ("app/api/server.pem", "denied"),
        ("app/api/secrets/token", "denied"),
    ],
)
def test_changes_outside_owned_paths_or_denied_are_refused(
    target: Target, path: str, reason: str
) -> None:
    """Invariant 1: every changed path must be under ownsPaths and pass the deny rules."""
    work = target.forge.work({path: b"changed\n"})
    target.refused(reason, lambda: target.ingest(target.forge.bundle(work)))


@pytest.mark.invariant(5)
@pytest.mark.parametrize(
    "path",
    [
        b"app/api/line\nbreak.py",
        b"app/api/carriage\r.py",
        b"app/api/\xff\xfe.py",
        b"app/api/" + b"a" * 256,
        b"app/api/../../pyproject.toml",
        b"app/api/./x.py",
        b"app/api/back\\slash.py",
        "app/api/\u202egnp.py".encode(),
        "app/api/zero\u200bwidth.py".encode(),
        b"app/api/nul\x01.py",
    ],
    ids=[
        "newline",
        "cr",
        "not-utf8",
        "long-component",
        "dotdot",
        "dot",
        "backslash",
        "bidi",
        "zero-width",
        "control",
    ],
)
def test_odd_path_names_are_refused(target: Target, path: bytes) -> None:
    """Invariant 5: names with newlines, CRs, invalid UTF-8, >255 bytes, `..`, backslashes or invisible characters never land."""
    work = target.forge.work({path: b"x = 1\n"})
    target.refused(
        ("invalid_path", "objects_invalid"), lambda: target.ingest(target.forge.bundle(work))
    )


@pytest.mark.invariant(5)
def test_case_and_unicode_collisions_are_refused(target: Target) -> None:
    """Invariant 5: two new names that a case-insensitive or normalising file system would merge are refused."""
    work = target.forge.work({"app/api/Users.py": b"A = 1\n", "app/api/users.py": b"B = 2\n"})
    target.refused("case_collision", lambda: target.ingest(target.forge.bundle(work)))
    work = target.forge.work(
        {"app/api/caf\u00e9.py": b"A = 1\n", "app/api/cafe\u0301.py": b"B = 2\n"}
    )
    target.refused("case_collision", lambda: target.ingest(target.forge.bundle(work)))


@pytest.mark.invariant(5)
@pytest.mark.parametrize(
    ("mode", "content", "reason"),
    [
        (MODE_SYMLINK, b"/etc/passwd", ("symlink",)),
        (MODE_SYMLINK, b"../../.git/config", ("symlink",)),
        ("100755", b"#!/bin/sh\nid\n", ("executable",)),
        ("100664", b"x = 1\n", ("odd_mode", "objects_invalid")),
        ("100600", b"x = 1\n", ("odd_mode", "objects_invalid")),
    ],
    ids=["link-to-host-file", "link-to-git-config", "executable", "group-writable", "private"],
)
def test_links_executables_and_odd_modes_are_refused(
    target: Target, mode: str, content: bytes, reason: tuple[str, ...]
) -> None:
    """Invariant 5: symbolic links, the executable bit and modes git does not make are refused."""
    work = target.forge.work({"app/api/thing": (mode, content)})
    target.refused(reason, lambda: target.ingest(target.forge.bundle(work)))


# --------------------------------------------------------------------------- result.json


def _deep(levels: int) -> bytes:
    return (
        b'{"task_key": "SEC-ING", "status": "failed", "summary": "x", "constraints": '
        + b"[" * levels
        + b"]" * levels
        + b"}"
    )


@pytest.mark.invariant(1)
@pytest.mark.parametrize(
    "raw",
    [
        runner_result(KEY, summary="x" * 300_000),
        _deep(100_000),
        _deep(40),
        runner_result(KEY).replace(b'"coverage_percent": 95.0', b'"coverage_percent": NaN'),
        runner_result(KEY).replace(b'"coverage_percent": 95.0', b'"coverage_percent": Infinity'),
        runner_result(KEY).replace(
            b'"status": "succeeded"', b'"status": "succeeded", "status": "failed"'
        ),
        b'\xff\xfe{"task_key": "SEC-ING"}',
        runner_result("OTHER-1"),
        runner_result(KEY, status="merged"),
        runner_result(KEY, files_created=["x"] * 10_001),
        runner_result(KEY, test_results={"total": 1, "passed": 5, "failed": 0, "skipped": 0}),
        b"[]",
    ],
    ids=[
        "huge",
        "very-deep",
        "deep",
        "nan",
        "infinity",
        "duplicate-key",
        "not-utf8",
        "other-task",
        "odd-status",
        "too-many-paths",
        "inconsistent-counts",
        "not-an-object",
    ],
)
def test_hostile_result_json_is_refused(target: Target, raw: bytes) -> None:
    """Invariant 1: result.json that is huge, deep, NaN, duplicated, not UTF-8, for another task or inconsistent is refused."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    target.refused(
        ("result_invalid", "task_mismatch"), lambda: target.ingest(target.forge.bundle(work), raw)
    )


@pytest.mark.invariant(1)
def test_escape_sequences_in_result_text_are_stripped(target: Target) -> None:
    """Invariant 1: terminal escapes and bidi overrides in the runner's text are removed before anyone sees them."""
    hostile = "\x1b]8;;http://evil.invalid\x07click\x1b]8;;\x07 \x1b[2J\u202eoverride done\x07"
    raw = runner_result(
        KEY, status="failed", reason=hostile, summary=hostile, missing_context=[hostile]
    )
    ingested = target.ingest(None, raw)
    shown = json.dumps(ingested.result.model_dump(mode="json"), ensure_ascii=False)
    for bad in ("\x1b", "\u202e", "\x07"):
        assert bad not in shown
    target.assert_untouched()


@pytest.mark.invariant(1)
def test_runner_claims_are_re_derived_from_the_checked_diff(target: Target) -> None:
    """Invariant 1: files_created, files_modified and git_commit are the controller's, whatever the runner says."""
    raw = runner_result(
        KEY,
        files_created=["/etc/passwd", "../../outside.py", "app/api/never_written.py"],
        files_modified=[".env"],
        git_commit=target.commit,
    )
    work = target.forge.work(
        {
            "app/api/users.py": b"USERS = []\n",
            "tests/test_api.py": b"def test_ok() -> None:\n    pass\n",
        }
    )
    ingested = target.ingest(target.forge.bundle(work), raw)
    result = ingested.result
    assert sorted(result.files_created) == ["app/api/users.py", "tests/test_api.py"]
    assert result.files_modified == []
    assert result.git_commit not in (None, target.commit)
    tree = git(target.repo, "ls-tree", "-r", "--name-only", str(result.git_commit)).decode().split()
    assert set(tree) - set(
        git(target.repo, "ls-tree", "-r", "--name-only", target.commit).decode().split()
    ) == {
        "app/api/users.py",
        "tests/test_api.py",
    }
    assert host_has_no_marker(target.marker)


@pytest.mark.invariant(1)
def test_success_claimed_despite_failures_is_not_believed(target: Target) -> None:
    """Invariant 1: a runner claiming success with failed tests or constraints, or with no commit, gets no branch."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    lie = runner_result(KEY, test_results={"total": 3, "passed": 1, "failed": 2, "skipped": 0})
    ingested = target.ingest(target.forge.bundle(work), lie)
    assert ingested.result.status == "failed"
    assert ingested.branch is None
    assert ingested.result.git_commit is None
    constraints = [{"id": 1, "name": "tests", "passed": False, "evidence": []}]
    ingested = target.ingest(target.forge.bundle(work), runner_result(KEY, constraints=constraints))
    assert ingested.result.status == "failed"
    ingested = target.ingest(None, runner_result(KEY))
    assert ingested.result.status == "failed"
    target.assert_untouched()


@pytest.mark.invariant(11)
@pytest.mark.parametrize(
    "message",
    [
        "feat(api): add\nSigned-off-by: someone else [SEC-ING]",
        "feat(api): \x1b[31mred\x1b[0m [SEC-ING]",
        "fix: something else entirely",
        "feat(api): add the endpoint [skip ci] [SEC-ING]",
        "feat(api): add the endpoint [ci skip]\n\n***NO_CI***\nskip-checks: true",
    ],
    ids=["newline", "escape", "wrong-form", "skip-ci", "ci-directives-in-body"],
)
def test_commit_message_from_the_sandbox_never_reaches_the_subject(
    target: Target, message: str
) -> None:
    """Invariant 11: no text of the sandbox's choosing reaches the landed commit's message."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"}, message=message)
    done = target.ingest(target.forge.bundle(work))
    assert done.result.git_commit is not None
    landed = git(target.repo, "log", "-1", "--format=%B", done.result.git_commit).decode().strip()
    expected = commit_subject(KEY, "Add the users endpoint", target.plan.owns_paths)
    assert landed == expected
    assert "skip" not in landed.lower()
    assert "ci" not in landed.lower().split()


@pytest.mark.invariant(6)
def test_existing_branch_is_never_moved(target: Target) -> None:
    """Invariant 6: a taskbox/<key> branch that already exists elsewhere is left where it is."""
    git(
        target.repo, "-c", f"core.hooksPath={os.devnull}", "branch", f"taskbox/{KEY}", target.commit
    )
    target.before = repo_state(target.repo)
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    target.refused("branch_exists", lambda: target.ingest(target.forge.bundle(work)))


@pytest.mark.invariant(9)
def test_plan_made_under_another_policy_is_refused_at_ingestion(
    target: Target, security_policies: Path, tmp_path: Path
) -> None:
    """Invariant 9: if the policy changed after the plan was audited (its digest differs), nothing is ingested."""
    changed = tmp_path / "changed-policies"
    changed.mkdir()
    text = (
        (security_policies / "sec-probe.yaml")
        .read_text()
        .replace("file_size_mb: 8", "file_size_mb: 9")
    )
    (changed / "sec-probe.yaml").write_text(text)
    widened: Policy = load_policy(changed, "sec-probe")
    assert widened.digest() != target.plan.policy_digest
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    target.refused(
        "plan_mismatch", lambda: target.ingest(target.forge.bundle(work), policy=widened)
    )


# --------------------------------------------------------------------------- real runs


@pytest.mark.docker
@pytest.mark.invariant(6)
def test_hostile_git_files_planted_in_a_real_run_never_reach_the_host(arena: Arena) -> None:
    """Invariant 6: a real run whose model and tests plant .git config, hooks and attributes leaves the host untouched."""
    marker = arena.tmp / f"MARKER-{secrets.token_hex(4)}"
    touch = f"touch {marker}"
    config = f'[core]\n\tfsmonitor = {touch}\n\thooksPath = hooks\n[filter "x"]\n\tsmudge = {touch}\n\tclean = {touch}\n'
    plant = (
        "for root in ('/out', '/work/app/api'):\n"
        "    Path(root, '.git', 'hooks').mkdir(parents=True, exist_ok=True)\n"
        f"    Path(root, '.git', 'config').write_text({config!r})\n"
        f"    Path(root, '.git', 'hooks', 'post-checkout').write_text('#!/bin/sh\\n{touch}\\n')\n"
        "    Path(root, '.git', 'hooks', 'post-checkout').chmod(0o755)\n"
        "Path('/work/app/api/.gitattributes').write_text('* filter=x\\n')\n"
        "Path('/out/HEAD').write_text('ref: refs/heads/main\\n')\n"
    )
    calls = [
        editor_create("app/api/.git/config", config),
        editor_create("app/api/.gitattributes", "* filter=x\n"),
        editor_create("app/api/users.py", '"""Users."""\n\nUSERS: list[str] = []\n'),
        editor_create("tests/test_plant.py", forwarding_test(before=plant)),
    ]
    script = write_script(arena.tmp / "scripts", hostile_script(calls))
    task = make_task(
        "SEC-GIT",
        owns=["app/api/", "tests/test_plant.py"],
        relevant=[PROBE_PATH, "pyproject.toml", "app/__init__.py", "app/main.py"],
    )
    before = repo_state(arena.repo)
    run_id = new_run_id(task.task_key)
    result = arena.runner(f"scripted:{script}").execute(
        run_id=run_id, task=task, repo=arena.repo, base_ref="HEAD", policy_name="sec-run"
    )
    assert host_has_no_marker(marker)
    changed = [*result.files_created, *result.files_modified]
    assert not [p for p in changed if ".git" in p.split("/") or p.endswith(".gitattributes")]
    after = repo_state(arena.repo)
    assert {k: v for k, v in after.items() if k != "refs"} == {
        k: v for k, v in before.items() if k != "refs"
    }
    if result.git_commit is not None:
        names = git(arena.repo, "ls-tree", "-r", "--name-only", result.git_commit).decode().split()
        assert not [n for n in names if "/.git" in n or n.startswith(".git")]
    assert not (arena.runs / run_id / "stage").exists()


@pytest.mark.docker
@pytest.mark.invariant(1)
def test_lying_result_json_from_a_real_sandbox_is_not_believed(arena: Arena) -> None:
    """Invariant 1: hostile test code writes a lying result.json and locks /out so the runner cannot replace it."""
    lie = {
        "task_key": "SEC-LIE",
        "status": "succeeded",
        "files_created": ["/etc/passwd", "../../../root/.ssh/authorized_keys"],
        "files_modified": [".env"],
        "git_commit": arena.commit,
        "summary": "\x1b]8;;http://evil.invalid\x07all good\x1b]8;;\x07",
        "test_results": {
            "total": 5,
            "passed": 5,
            "failed": 0,
            "skipped": 0,
            "coverage_percent": 100.0,
        },
        "constraints": [
            {"id": n, "name": f"c{n}", "passed": True, "evidence": []} for n in range(1, 11)
        ],
    }
    plant = f"Path('/out/result.json').write_text(json.dumps({lie!r}))\nos.chmod('/out', 0o500)\n"
    script = write_script(
        arena.tmp / "scripts",
        hostile_script([editor_create("tests/test_lie.py", forwarding_test(before=plant))]),
    )
    task = make_task(
        "SEC-LIE",
        owns=["app/api/", "tests/test_lie.py"],
        relevant=[PROBE_PATH, "pyproject.toml", "app/__init__.py", "app/main.py"],
    )
    before = repo_state(arena.repo)
    run_id = new_run_id(task.task_key)
    result = arena.runner(f"scripted:{script}").execute(
        run_id=run_id, task=task, repo=arena.repo, base_ref="HEAD", policy_name="sec-run"
    )
    recorded = (arena.runs / run_id / "record" / "sandbox.log").read_text()
    assert "Permission denied" in recorded or "PermissionError" in recorded, (
        "the runner was not locked out"
    )
    assert result.status != "succeeded"
    assert result.git_commit is None
    assert result.files_created == []
    assert result.files_modified == []
    assert "\x1b" not in result.summary
    assert repo_state(arena.repo) == before
    assert (
        subprocess.run(
            [
                "git",
                "-C",
                str(arena.repo),
                "rev-parse",
                "--verify",
                "--quiet",
                "refs/heads/taskbox/SEC-LIE",
            ],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    )


# --------------------------------------------------------------------------- delta bombs, names, cleanup


def _hand_bundle(target: Target, tip: str, extra: list[Entry] | None = None) -> bytes:
    """The forge's objects in a pack written by hand (``extra`` first), wrapped as a v2 bundle of ``tip``."""
    objects = repository_objects(target.forge.git_dir, GIT_ENV)
    return packforge.bundle(tip, pack([*(extra or []), *objects]))


@pytest.mark.invariant(7)
def test_delta_bomb_is_refused_before_host_git_inflates_it(target: Target) -> None:
    """Invariant 7: a bundle of a few KB whose delta rebuilds 1.5 GiB is refused on its header; a hand-made normal one lands."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    bomb = _hand_bundle(target, work, delta_bomb_entries(result_size=3 * GIB // 2))
    assert len(bomb) < 20_000
    message = target.refused("file_too_large", lambda: target.ingest(bomb))
    assert "delta rebuilds" in message
    assert not list((target.root / "workspace").iterdir())  # no ingest repository was made

    done = target.ingest(_hand_bundle(target, work))
    assert done.result.files_created == ["app/api/users.py"]


@pytest.mark.invariant(7)
def test_host_git_reading_a_bomb_stops_at_its_memory_limit(target: Target, tmp_path: Path) -> None:
    """Invariant 7: even past the pack walk, host git reading a delta bomb dies at its memory limit, not 1.5 GiB in."""
    work = target.forge.work({"app/api/users.py": b"USERS = []\n"})
    path = tmp_path / "bomb.bundle"
    path.write_bytes(_hand_bundle(target, work, delta_bomb_entries(result_size=3 * GIB // 2)))
    repo = ingest_git.IngestRepo.create(tmp_path / "ingest.git", target.policy)
    with pytest.raises(IngestionError, match=r"(?i)^bundle_invalid: .*out of memory"):
        bundle_module.fetch_bundle(repo, path, work)


@pytest.mark.invariant(5)
@pytest.mark.parametrize(
    "path",
    [
        "app/api/aux.py",
        "app/api/NUL",
        "app/api/com3.txt",
        "app/api/lpt1 .log",
        "app/api/conin$",
        "app/api/drive:stream.py",
        "app/api/trailing.",
        "app/api/trailing /x.py",
        "app/api/a<b>.py",
        "app/api/pipe|.py",
        "app/api/PROGRA~1/x.py",
    ],
)
def test_names_other_systems_cannot_check_out_never_land(target: Target, path: str) -> None:
    """Invariant 5: device names, ':<>|' and trailing dots or spaces that Linux accepts are refused, with the rule named."""
    work = target.forge.work({path: b"x = 1\n"})
    message = target.refused("invalid_path", lambda: target.ingest(target.forge.bundle(work)))
    assert "Windows" in message


@pytest.mark.invariant(5, 9)
@pytest.mark.parametrize("owned", ["SECRETS./", "secrets /", "app/api/SeCrEtS. /"])
def test_windows_form_of_a_denied_folder_is_refused_as_owned_path_and_commit(
    target: Target, security_policies: Path, owned: str
) -> None:
    """Invariant 9: 'SECRETS./' is 'secrets/' on Windows, so deny beats the owned path and the committed name."""
    task = make_task("SEC-WIN", owns=[owned])
    with pytest.raises(InvalidTaskError, match=r"denied by rule 'secrets/'"):
        admit(
            task,
            repo=target.repo,
            base_ref="HEAD",
            policies_dir=security_policies,
            policy_name="sec-probe",
        )
    work = target.forge.work({"app/api/SECRETS./token": b"leaked\n"})
    target.refused("denied", lambda: target.ingest(target.forge.bundle(work)))


_DEEP_CHAIN = (
    "import os\n"
    "fd = os.open('/work/app/api', os.O_RDONLY | os.O_DIRECTORY)\n"
    "for _ in range(1200):\n"
    "    os.mkdir('d', dir_fd=fd)\n"
    "    child = os.open('d', os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)\n"
    "    os.close(fd)\n"
    "    fd = child\n"
    "os.symlink('/etc', 'etc-link', dir_fd=fd)\n"
    "with open('/proc/1/fd/1', 'w') as log:\n"
    "    log.write('DEEP-CHAIN-MADE 1200\\n')\n"
)


@pytest.mark.docker
@pytest.mark.invariant(7)
def test_a_1200_deep_folder_chain_never_loses_the_result_or_leaves_staging(arena: Arena) -> None:
    """Invariant 7: a real run whose test makes a 1,200-deep chain in its owned folder ends recorded, staging removed."""
    calls = [
        editor_create("app/api/users.py", '"""Users."""\n\nUSERS: list[str] = []\n'),
        editor_create("tests/test_deep.py", forwarding_test(before=_DEEP_CHAIN)),
    ]
    script = write_script(arena.tmp / "scripts", hostile_script(calls))
    task = make_task(
        "SEC-DEEP",
        owns=["app/api/", "tests/test_deep.py"],
        relevant=[PROBE_PATH, "pyproject.toml", "app/__init__.py", "app/main.py"],
    )
    run_id = new_run_id(task.task_key)
    result = arena.runner(f"scripted:{script}").execute(
        run_id=run_id, task=task, repo=arena.repo, base_ref="HEAD", policy_name="sec-run"
    )
    record = arena.runs / run_id / "record"
    assert "DEEP-CHAIN-MADE 1200" in (record / "sandbox.log").read_text()  # the attack ran
    recorded = json.loads((record / "result.json").read_text())
    assert recorded["status"] == result.status
    assert not (arena.runs / run_id / "stage").exists()
    assert Path("/etc/passwd").exists()
