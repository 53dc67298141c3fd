"""Fixtures every test folder may use: real git repositories made in a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}

RepoFactory = Callable[..., tuple[Path, str]]

EXAMPLE_REPO = Path(__file__).resolve().parents[1] / "examples" / "hello-api"


def git(repo: Path, *args: str, input_bytes: bytes | None = None) -> str:
    """Run git in ``repo`` with a fixed identity and no user config; return stdout."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input_bytes,
        capture_output=True,
        env=GIT_ENV,
        check=True,
    )
    return done.stdout.decode()


@pytest.fixture
def make_repo(tmp_path: Path) -> RepoFactory:
    """Make a git repository with the given files, symlinks and executables; return (path, commit)."""

    def factory(
        files: Mapping[str, str | bytes],
        *,
        symlinks: Mapping[str, str] | None = None,
        executables: tuple[str, ...] = (),
        name: str = "repo",
    ) -> tuple[Path, str]:
        repo = tmp_path / name
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        for rel, content in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        for rel in executables:
            (repo / rel).chmod(0o755)
        for rel, target in (symlinks or {}).items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "base")
        return repo, git(repo, "rev-parse", "HEAD").strip()

    return factory


def copy_example_repo(where: Path) -> Path:
    """A git repository made from examples/hello-api at ``where``, as scripts/demo makes it."""
    shutil.copytree(EXAMPLE_REPO, where)
    git(where, "init", "-q", "-b", "main")
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "hello-api")
    return where
