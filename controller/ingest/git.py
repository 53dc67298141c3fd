"""The two git repositories ingestion drives: the bare one made per bundle, and the user's.

No config, hooks, filters or replace objects of either are ever honoured; the ingest
repository's git runs under an address-space limit.
"""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from typing import TYPE_CHECKING

from controller.errors import RepositoryError
from controller.gitrepo import (
    GIT_TIMEOUT_SECONDS,
    SAFE_GIT_ENV,
)
from controller.packcheck import BundleCaps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from controller.policy.schema import Policy
from controller.ingest.refusals import IngestRefusal, clean, refuse

#: Config of the ingest repository. fsck runs explicitly too: git before 2.46 does not
#: fsck objects fetched from a bundle, whatever ``fetch.fsckObjects`` says.
INGEST_REPO_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("core.logAllRefUpdates", "false"),
    ("transfer.fsckObjects", "true"),
    ("fetch.fsckObjects", "true"),
    ("receive.fsckObjects", "true"),
    # Odd modes (100664, ...) are only "info" for fsck; the sandbox gets no benefit of the doubt.
    ("fsck.badFilemode", "error"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    # One thread: git runs under an address-space limit, and each thread's stack counts.
    ("pack.threads", "1"),
)


#: ``-c`` settings on every command in the target repository: its own hooks, signing
#: and index tricks stay out of a commit written by plumbing, so a replay gives the same id.
TARGET_REPO_OVERRIDES: tuple[str, ...] = (
    "core.hooksPath=" + os.devnull,
    "core.fsmonitor=false",
    "core.splitIndex=false",
    "commit.gpgSign=false",
    "i18n.commitEncoding=UTF-8",
)


def run_git(
    prefix: Sequence[str],
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    input_bytes: bytes | None,
    memory_limit: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    command = ["git", *prefix, *args]
    if memory_limit is not None:
        # A hard RLIMIT_AS, set by the shell right before it execs git: the kernel refuses
        # git's allocations past it. No preexec_fn (unsafe in a threaded controller); the
        # script is a constant and every argument is passed to it as data.
        limit_kib = str(memory_limit // 1024)
        command = ["/bin/sh", "-c", 'ulimit -v "$0" && exec "$@"', limit_kib, *command]
    try:
        return subprocess.run(
            command,
            input=input_bytes,
            capture_output=True,
            env=dict(env),
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise refuse(
            IngestRefusal.TIMEOUT, f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS}s"
        ) from exc


def git_message(stderr: bytes) -> str:
    """The most telling line of git's stderr: the first error, else the last line."""
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error", "fatal"))]
    chosen = errors[0] if errors else (lines[-1] if lines else "no message")
    return clean(chosen)


class IngestRepo:
    """The bare repository made for one bundle: the only place the sandbox's objects ever land."""

    def __init__(self, git_dir: Path, memory_limit: int) -> None:
        self.git_dir = git_dir
        self.memory_limit = memory_limit
        # GIT_DIR pins the repository: git never searches upwards from here.
        self._env = {**SAFE_GIT_ENV, "GIT_DIR": str(git_dir), "GIT_NO_REPLACE_OBJECTS": "1"}

    @classmethod
    def create(cls, git_dir: Path, policy: Policy) -> IngestRepo:
        """A fresh bare repository whose git runs under the address-space limit for ``policy``."""
        git_dir.mkdir(mode=0o700)
        repo = cls(git_dir, BundleCaps.of(policy).git_memory_limit())
        # An empty --template: no sample hooks, nothing copied from the host's templates.
        repo.git("init", "--quiet", "--bare", "--template=", "--object-format=sha1")
        # The config file is ours (just made); one append replaces a git process per key.
        sections: dict[str, list[str]] = defaultdict(list)
        for key, value in INGEST_REPO_CONFIG:
            section, _, name = key.partition(".")
            sections[section].append(f"\t{name} = {value}\n")
        with (git_dir / "config").open("a", encoding="utf-8") as config:
            config.writelines(
                f"[{section}]\n{''.join(lines)}" for section, lines in sections.items()
            )
        return repo

    def run(
        self, *args: str, input_bytes: bytes | None = None, index: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = self._env if index is None else {**self._env, "GIT_INDEX_FILE": str(index)}
        return run_git(
            ["-C", str(self.git_dir)],
            args,
            env=env,
            input_bytes=input_bytes,
            memory_limit=self.memory_limit,
        )

    def git(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        index: Path | None = None,
        refusal: IngestRefusal | None = None,
    ) -> bytes:
        """Run git; a failure is a refusal when ``refusal`` is given, else a RepositoryError."""
        done = self.run(*args, input_bytes=input_bytes, index=index)
        if done.returncode != 0:
            message = git_message(done.stderr)
            if refusal is not None:
                raise refuse(refusal, f"git {args[0]}: {message}")
            raise RepositoryError(f"git {args[0]} failed in the ingest repository: {message}")
        return done.stdout


class TargetRepo:
    """The user's repository: read freely, written only once every check has passed."""

    def __init__(self, repo: Path) -> None:
        self.path = repo
        self._prefix = ["-C", str(repo)]
        for setting in TARGET_REPO_OVERRIDES:
            self._prefix += ["-c", setting]
        self._env = {**SAFE_GIT_ENV, "GIT_NO_REPLACE_OBJECTS": "1"}

    def run(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**self._env, **(extra_env or {})}
        return run_git(self._prefix, args, env=env, input_bytes=input_bytes)

    def git(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> bytes:
        done = self.run(*args, input_bytes=input_bytes, extra_env=extra_env)
        if done.returncode != 0:
            message = git_message(done.stderr)
            raise refuse(IngestRefusal.TARGET, f"git {args[0]} failed in {self.path}: {message}")
        return done.stdout

    def require_sha1(self) -> None:
        """TaskResult.git_commit is a 40-hex id, so a SHA-256 repository cannot be served."""
        done = self.run("rev-parse", "--show-object-format")
        if done.returncode != 0:
            raise RepositoryError(f"{self.path} is not a git repository")
        if done.stdout.strip() != b"sha1":
            raise RepositoryError(f"{self.path} uses {clean(done.stdout.decode())} object ids")
