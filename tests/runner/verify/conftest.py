"""Fixtures for the verifier's tests: example projects staged in a temporary folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from taskbox_runner.verify import VerifyContext, index_tests
from taskbox_runner.verify.ruff_run import RuffRun, run_ruff
from taskbox_runner.verify.workspace import Workspace

# The example projects carry their own tests; they are data for the verifier, not ours to run.
collect_ignore = ["data"]

DATA = Path(__file__).parent / "data"
CONFIG_FILES = ("pyproject.toml", "ruff.toml", "setup.cfg", "pytest.ini", "requirements.txt")


@dataclass
class Staged:
    """A copied example project: the work tree, its base configs and base test index."""

    workdir: Path
    base_config_dir: Path
    scratch_dir: Path
    base_tests: dict[str, list[str]]
    changed: list[str]

    def context(
        self,
        *,
        owns: Sequence[str] = ("app/", "tests/"),
        openapi_path: str | None = "openapi.yaml",
        changed: Sequence[str] | None = None,
        threshold: float = 80.0,
    ) -> VerifyContext:
        """A VerifyContext as the loop would build it for this project."""
        return VerifyContext(
            workdir=self.workdir,
            owns_paths=list(owns),
            openapi_path=openapi_path,
            coverage_threshold=threshold,
            base_config_dir=self.base_config_dir,
            scratch_dir=self.scratch_dir,
            changed_files=list(self.changed if changed is None else changed),
            base_tests=self.base_tests,
        )

    def space(self, owns: Sequence[str] = ("app/", "tests/")) -> Workspace:
        """The workspace the checks see."""
        return Workspace.load(self.workdir, owns, self.changed)

    def ruff(self, owns: Sequence[str] = ("app/", "tests/")) -> tuple[Workspace, RuffRun]:
        """The workspace and the one real ruff run over its owned files."""
        space = self.space(owns)
        return space, run_ruff(space, space.owned_python, self.base_config_dir, self.scratch_dir)

    def write(self, rel: str, text: str) -> None:
        """Write a file as the model would, and count it as changed."""
        path = self.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel not in self.changed:
            self.changed.append(rel)


Stage = Callable[..., Staged]


@pytest.fixture
def stage(tmp_path: Path) -> Stage:
    """Copy ``project`` to a temporary folder, record its base, then lay ``overlay`` on top."""

    def make(project: str = "good_fastapi", overlay: str | None = None) -> Staged:
        work = tmp_path / "work"
        shutil.copytree(DATA / project, work)
        base = tmp_path / "base-config"
        base.mkdir()
        for name in CONFIG_FILES:
            if (work / name).is_file():
                shutil.copy(work / name, base / name)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        staged = Staged(work, base, scratch, index_tests(work), [])
        if overlay is not None:
            for source in sorted((DATA / overlay).rglob("*")):
                if source.is_file():
                    rel = source.relative_to(DATA / overlay).as_posix()
                    staged.write(rel, source.read_text(encoding="utf-8"))
        return staged

    return make
