"""The scratch git dir with real git: the base commit, the work commit, the bundle, the base configs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from taskbox_runner.scratch_git import BUNDLE_REF, ScratchGitError, ScratchRepo

from taskbox_wire.contract import commit_subject
from tests.conftest import GIT_ENV
from tests.runner.conftest import blob_id

FILES = {
    "app/main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
    "app/api/routes/users.py": "ROUTES = []\n",
    "scripts/run.sh": "#!/bin/sh\necho hi\n",
    "pyproject.toml": "[tool.ruff]\nline-length = 100\n",
    "requirements-dev.txt": "pytest\n",
}


def git_out(git_dir: Path, *args: str) -> str:
    """Run git against ``git_dir`` with no user config; return stdout."""
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], capture_output=True, env=GIT_ENV, check=True
    )
    return done.stdout.decode()


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A work tree holding FILES plus an empty owned placeholder; the base blob ids of FILES."""
    work = tmp_path / "work"
    for rel, text in FILES.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    (work / "tests").mkdir()
    (work / "tests/test_users.py").touch()
    return work, {rel: blob_id(text.encode()) for rel, text in FILES.items()}


def new_repo(tmp_path: Path, work: Path, name: str = "scratch") -> ScratchRepo:
    """A scratch repo for ``work`` in its own temporary folder."""
    return ScratchRepo.init(tmp_path / name / "scratch.git", work)


def test_base_commit_holds_exactly_the_planned_blobs(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """The base tree lists every base file with its given blob id and mode, and nothing else."""
    work, base = staged
    repo = new_repo(tmp_path, work)
    commit = repo.commit_base(base, {"scripts/run.sh": "100755"}, task_key="BE-1")

    listed = {}
    for line in git_out(repo.git_dir, "ls-tree", "-r", commit).splitlines():
        meta, path = line.split("\t")
        mode, _kind, blob = meta.split()
        listed[path] = (mode, blob)
    expected = {
        rel: ("100755" if rel == "scripts/run.sh" else "100644", blob) for rel, blob in base.items()
    }
    assert listed == expected
    assert "tests/test_users.py" not in listed  # the empty placeholder is not a base file
    assert git_out(repo.git_dir, "rev-list", "--parents", "-n1", commit).split() == [commit]
    assert not (work / ".git").exists()


def test_base_commit_refuses_a_changed_or_missing_file(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """A blob id that does not match, a missing file or a bad mode stops the run before any commit."""
    work, base = staged
    wrong = dict(base, **{"app/main.py": blob_id(b"something else\n")})
    with pytest.raises(ScratchGitError, match=r"app/main\.py: blob"):
        new_repo(tmp_path, work, "a").commit_base(wrong, {}, task_key="BE-1")
    with pytest.raises(ScratchGitError, match="missing"):
        new_repo(tmp_path, work, "b").commit_base(
            dict(base, **{"gone.py": "0" * 40}), {}, task_key="BE-1"
        )
    with pytest.raises(ScratchGitError, match="mode"):
        new_repo(tmp_path, work, "c").commit_base(base, {"app/main.py": "120000"}, task_key="BE-1")


def test_base_file_behind_a_symlink_is_refused(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """A base file that is a symlink is not hashed through its link."""
    work, base = staged
    (work / "app/main.py").unlink()
    (work / "app/main.py").symlink_to(tmp_path / "elsewhere.py")
    (tmp_path / "elsewhere.py").write_text(FILES["app/main.py"])
    with pytest.raises(ScratchGitError, match="not a regular file"):
        new_repo(tmp_path, work).commit_base(base, {}, task_key="BE-1")


def test_git_dir_inside_the_work_tree_is_refused(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """The scratch git dir never lives inside /work."""
    work, _ = staged
    with pytest.raises(ScratchGitError, match="outside"):
        ScratchRepo.init(work / "scratch.git", work)


def test_work_commit_takes_only_the_given_owned_files(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """The work commit adds the written files on the base, skips cache files, and reports created/modified."""
    work, base = staged
    repo = new_repo(tmp_path, work)
    base_commit = repo.commit_base(base, {"scripts/run.sh": "100755"}, task_key="BE-1")
    (work / "app/api/routes/users.py").write_text("ROUTES = ['users']\n")
    (work / "tests/test_users.py").write_text("def test_users() -> None:\n    assert True\n")
    (work / "app/api/routes/__pycache__").mkdir()
    (work / "app/api/routes/__pycache__/users.cpython-312.pyc").write_bytes(b"\x00")
    (work / "app/main.py").write_text("changed by a test run\n")  # not written by the model

    commit = repo.commit_work(
        [
            "app/api/routes/users.py",
            "tests/test_users.py",
            "app/api/routes/__pycache__/users.cpython-312.pyc",
        ],
        message="feat(api): add users [BE-1]",
    )

    assert commit is not None
    assert commit.files_created == ["tests/test_users.py"]
    assert commit.files_modified == ["app/api/routes/users.py"]
    assert git_out(repo.git_dir, "rev-parse", f"{commit.sha}^").strip() == base_commit
    changed = git_out(repo.git_dir, "diff", "--name-only", base_commit, commit.sha).split()
    assert changed == ["app/api/routes/users.py", "tests/test_users.py"]
    assert (
        git_out(repo.git_dir, "log", "-1", "--format=%s", commit.sha).strip()
        == "feat(api): add users [BE-1]"
    )
    modes = git_out(repo.git_dir, "ls-tree", commit.sha, "scripts/run.sh")
    assert modes.startswith("100755")


def test_nothing_changed_gives_no_work_commit(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """Files rewritten with their base content make no commit."""
    work, base = staged
    repo = new_repo(tmp_path, work)
    repo.commit_base(base, {}, task_key="BE-1")
    assert repo.commit_work(["app/api/routes/users.py"], message="feat(x): y [BE-1]") is None


def test_same_inputs_give_the_same_commit_ids(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """Fixed identity and dates make the base and work commit ids depend only on content."""
    work, base = staged
    (work / "app/api/routes/users.py").write_text("ROUTES = ['users']\n")
    shas = []
    for name in ("one", "two"):
        repo = new_repo(tmp_path, work, name)
        repo.commit_base(
            dict(base, **{"app/api/routes/users.py": blob_id(b"ROUTES = ['users']\n")}),
            {},
            task_key="BE-1",
        )
        (work / "tests/test_users.py").write_text("x = 1\n")
        commit = repo.commit_work(["tests/test_users.py"], message="feat(api): add users [BE-1]")
        assert commit is not None
        shas.append((repo.base_commit, commit.sha))
    assert shas[0] == shas[1]


def test_bundle_is_self_contained_with_one_ref(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """The bundle verifies in a fresh repository, lists only refs/heads/taskbox, and carries base and work."""
    work, base = staged
    repo = new_repo(tmp_path, work)
    base_commit = repo.commit_base(base, {}, task_key="BE-1")
    (work / "tests/test_users.py").write_text("x = 1\n")
    commit = repo.commit_work(["tests/test_users.py"], message="feat(tests): x [BE-1]")
    assert commit is not None
    bundle = tmp_path / "out" / "result.bundle"
    bundle.parent.mkdir()
    repo.write_bundle(bundle)

    fresh = tmp_path / "fresh.git"
    subprocess.run(["git", "init", "-q", "--bare", str(fresh)], env=GIT_ENV, check=True)
    verify = subprocess.run(
        ["git", "--git-dir", str(fresh), "bundle", "verify", str(bundle)],
        capture_output=True,
        env=GIT_ENV,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert b"complete history" in verify.stdout + verify.stderr  # no prerequisite commits
    heads = git_out(fresh, "bundle", "list-heads", str(bundle)).split()
    assert heads == [commit.sha, BUNDLE_REF]
    git_out(fresh, "fetch", "-q", str(bundle), f"{BUNDLE_REF}:{BUNDLE_REF}")
    assert git_out(fresh, "rev-list", BUNDLE_REF).split() == [commit.sha, base_commit]


def test_base_configs_come_from_the_base_commit(
    tmp_path: Path, staged: tuple[Path, dict[str, str]]
) -> None:
    """The verifier's config copies hold the base content even after the work tree changed."""
    work, base = staged
    repo = new_repo(tmp_path, work)
    repo.commit_base(base, {}, task_key="BE-1")
    (work / "pyproject.toml").write_text("[tool.ruff]\nselect = []\n")
    dest = tmp_path / "base-config"
    copied = repo.export_base_configs(dest)
    assert sorted(copied) == ["pyproject.toml", "requirements-dev.txt"]
    assert (dest / "pyproject.toml").read_text() == FILES["pyproject.toml"]
    assert not (dest / "app").exists()


def test_git_ignores_hostile_config_in_the_environment(
    tmp_path: Path, staged: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GIT_DIR or global config in the caller's environment does not reach the scratch git."""
    work, base = staged
    evil = tmp_path / "evil.gitconfig"
    evil.write_text("[core]\n\tautocrlf = true\n[user]\n\tname = Evil\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(evil))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "nowhere"))
    repo = new_repo(tmp_path, work)
    commit = repo.commit_base(base, {}, task_key="BE-1")
    author = git_out(repo.git_dir, "log", "-1", "--format=%an <%ae> %at", commit).strip()
    assert author == "Taskbox Runner <runner@taskbox.invalid> 946684800"
    assert os.environ["GIT_DIR"].endswith("nowhere")


@pytest.mark.parametrize(
    ("owns", "description", "expected"),
    [
        (
            ["app/api/routes/"],
            "Add the users endpoint.\nmore",
            "feat(api): Add the users endpoint [BE-9]",
        ),
        (["tests/test_users.py"], "# Fix  the\ttests", "feat(tests): Fix the tests [BE-9]"),
        (["main.py"], "\n\n  ", "feat(main): implement task [BE-9]"),
        (["src/"], "x" * 100, f"feat(src): {'x' * 72} [BE-9]"),
    ],
)
def test_commit_subject(owns: list[str], description: str, expected: str) -> None:
    """The subject is feat(<scope>): <first line> [<key>], cleaned and cut to 72 characters."""
    assert commit_subject("BE-9", description, owns) == expected


@pytest.mark.parametrize(
    ("description", "subject"),
    [
        (
            "Add POST /greetings: takes a name and returns a greeting, as the contract says.",
            "feat(api): Add POST /greetings: takes a name and returns a greeting [BE-1]",
        ),
        ("Add users. Then document them.", "feat(api): Add users [BE-1]"),
        (
            "Implement the user registration endpoint with email validation and password hashing",
            "feat(api): Implement the user registration endpoint with email validation [BE-1]",
        ),
    ],
)
def test_commit_subject_keeps_whole_clauses(description: str, subject: str) -> None:
    """A long description is cut at a clause or word, never leaving a dangling 'and' or 'the'."""
    assert commit_subject("BE-1", description, ["app/api/"]) == subject
