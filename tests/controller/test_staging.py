"""Staging: exactly the planned files, from the base commit, with writable parts handed over."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from controller.errors import SandboxError
from controller.gitrepo import list_tree
from controller.policy.loader import load_policy
from controller.policy.planner import MountPlan, plan_mounts
from controller.policy.schema import Policy
from controller.settings import PROJECT_ROOT
from controller.staging import remove_staging, stage_run
from taskbox_wire.contract import Task
from tests.conftest import RepoFactory

FILES = {
    "app/main.py": "print('base')\n",
    "app/api/users.py": "USERS = []\n",
    "app/api/.env.local": "TOKEN=nope\n",
    "README.md": "readme\n",
    "secret_plan.txt": "not planned\n",
    ".env": "KEY=nope\n",
    "run.sh": "#!/bin/sh\n",
}


@pytest.fixture
def policy() -> Policy:
    return load_policy(PROJECT_ROOT / "policies", "be-python")


def make_task() -> Task:
    return Task.model_validate(
        {
            "taskKey": "BE-7",
            "description": "d",
            "ownsPaths": ["app/api/", "app/new_module.py"],
            "contextJson": {"BE-7-ctx": {"relevant_files": ["README.md", "run.sh", ".env"]}},
        }
    )


@pytest.fixture
def planned(make_repo: RepoFactory, policy: Policy) -> tuple[Path, MountPlan]:
    repo, commit = make_repo(FILES, executables=("run.sh",))
    return repo, plan_mounts(make_task(), list_tree(repo, commit), policy, commit)


def staged_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_only_planned_files_are_staged(
    planned: tuple[Path, MountPlan], policy: Policy, tmp_path: Path
) -> None:
    """The work folder holds the planned files only: no unplanned, denied or .git file."""
    repo, plan = planned
    paths = stage_run(
        repo=repo, plan=plan, policy=policy, root=tmp_path / "s", run_config_json="{}"
    )
    assert staged_files(paths.work) == {
        "README.md",
        "run.sh",
        "app/api/users.py",
        "app/new_module.py",
    }
    assert (paths.work / "app/new_module.py").read_bytes() == b""  # placeholder of a new owned file


def test_contents_come_from_the_commit_not_the_checkout(
    planned: tuple[Path, MountPlan], policy: Policy, tmp_path: Path
) -> None:
    """A change in the live checkout after the base commit does not reach the sandbox."""
    repo, plan = planned
    (repo / "README.md").write_text("changed in the checkout\n")
    paths = stage_run(
        repo=repo, plan=plan, policy=policy, root=tmp_path / "s", run_config_json="{}"
    )
    assert (paths.work / "README.md").read_text() == "readme\n"
    assert os.access(paths.work / "run.sh", os.X_OK)
    assert not os.access(paths.work / "README.md", os.X_OK)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root")
def test_writable_parts_belong_to_the_sandbox_user(
    planned: tuple[Path, MountPlan], policy: Policy, tmp_path: Path
) -> None:
    """Owned paths and out/ belong to the sandbox uid; the read-only tree stays root's."""
    repo, plan = planned
    paths = stage_run(
        repo=repo, plan=plan, policy=policy, root=tmp_path / "s", run_config_json='{"a": 1}'
    )
    for owned in (
        paths.work / "app/api",
        paths.work / "app/api/users.py",
        paths.work / "app/new_module.py",
        paths.out,
    ):
        assert (owned.stat().st_uid, owned.stat().st_gid) == (policy.uid, policy.gid)
    assert paths.work.stat().st_uid == 0
    assert (paths.work / "README.md").stat().st_uid == 0
    run_json = paths.taskbox / "run.json"
    assert stat.S_IMODE(run_json.stat().st_mode) == 0o400
    assert run_json.stat().st_uid == policy.uid
    assert json.loads(run_json.read_text()) == {"a": 1}


def test_an_existing_staging_folder_is_never_reused(
    planned: tuple[Path, MountPlan], policy: Policy, tmp_path: Path
) -> None:
    """Staging into a folder that exists fails instead of mixing two runs."""
    repo, plan = planned
    (tmp_path / "s").mkdir()
    with pytest.raises(SandboxError, match="already exists"):
        stage_run(repo=repo, plan=plan, policy=policy, root=tmp_path / "s", run_config_json="{}")


def test_removal_does_not_follow_links_planted_inside(
    planned: tuple[Path, MountPlan], policy: Policy, tmp_path: Path
) -> None:
    """A symlink the sandbox left in an owned folder is removed, its target is not."""
    repo, plan = planned
    paths = stage_run(
        repo=repo, plan=plan, policy=policy, root=tmp_path / "s", run_config_json="{}"
    )
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (paths.work / "app/api/evil").symlink_to(victim)
    remove_staging(paths.root)
    assert not paths.root.exists()
    assert (victim / "keep.txt").read_text() == "keep"


def make_chain(top: Path, depth: int, name: str = "d") -> None:
    """A ``depth``-deep chain of folders below ``top``, built by descriptor (deeper than PATH_MAX is fine)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with os.fdopen(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("the end\n")
    finally:
        os.close(fd)


def test_a_1200_deep_folder_chain_is_removed(
    planned: tuple[Path, MountPlan], policy: Policy, tmp_path: Path
) -> None:
    """A 1,200-deep chain in an owned folder (RecursionError for shutil.rmtree on 3.11) is removed."""
    repo, plan = planned
    paths = stage_run(
        repo=repo, plan=plan, policy=policy, root=tmp_path / "s", run_config_json="{}"
    )
    make_chain(paths.work / "app/api", 1200)
    assert remove_staging(paths.root) is True
    assert not paths.root.exists()


def test_a_chain_deeper_than_path_max_with_links_at_the_bottom_is_removed(tmp_path: Path) -> None:
    """5,000 levels (paths far over PATH_MAX), links and a FIFO at the bottom: all removed, no link followed."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    victim_mode = victim.stat().st_mode
    root = tmp_path / "stage"
    root.mkdir()
    make_chain(root, 5000, name="level")
    bottom = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(5000):
        child = os.open("level", os.O_RDONLY | os.O_DIRECTORY, dir_fd=bottom)
        os.close(bottom)
        bottom = child
    try:
        os.symlink(victim, "to-folder", dir_fd=bottom)
        os.symlink(victim / "keep.txt", "to-file", dir_fd=bottom)
        os.mkfifo("fifo", dir_fd=bottom)
        os.mkdir("locked", dir_fd=bottom)
        locked = os.open("locked", os.O_RDONLY | os.O_DIRECTORY, dir_fd=bottom)
        os.close(os.open("inside.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=locked))
        os.fchmod(locked, 0o500)
        os.close(locked)
    finally:
        os.close(bottom)

    assert remove_staging(root) is True

    assert not root.exists()
    assert (victim / "keep.txt").read_text() == "keep"
    assert victim.stat().st_mode == victim_mode


def test_a_staging_root_that_is_a_link_is_unlinked_not_followed(tmp_path: Path) -> None:
    """If the staging path is itself a symbolic link, the link goes and its target stays."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    link = tmp_path / "stage"
    link.symlink_to(victim)
    assert remove_staging(link) is True
    assert not link.is_symlink()
    assert (victim / "keep.txt").read_text() == "keep"


def test_a_missing_staging_folder_is_already_removed(tmp_path: Path) -> None:
    """Removing a staging folder that is not there (a second cleanup) succeeds quietly."""
    assert remove_staging(tmp_path / "never-made") is True


def test_a_removal_that_fails_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleanup the file system refuses returns False and logs why, so the caller keeps its result."""
    root = tmp_path / "stage"
    (root / "work").mkdir(parents=True)

    def refuse(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("controller.staging.remove_tree", refuse)
    with caplog.at_level("WARNING", logger="controller.staging"):
        assert remove_staging(root) is False
    assert "could not remove the staging folder" in caplog.text
    assert root.exists()
