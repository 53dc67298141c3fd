"""Image building logic that needs no engine: declared dependencies, wheel tags, cache keys."""

from __future__ import annotations

from controller.image import (
    PythonTarget,
    RepoDependencies,
    deps_tag,
    image_for_repo,
    repo_dependencies,
)
from tests.conftest import RepoFactory, git

PYPROJECT = """
[project]
name = "demo"
dependencies = ["fastapi>=0.110", "pydantic>=2"]

[project.optional-dependencies]
test = ["pytest-mock"]
postgres = ["psycopg[binary]"]

[dependency-groups]
dev = ["freezegun", {include-group = "test"}]
"""

REQUIREMENTS = """\
# pinned runtime
PyJWT==2.9.0  # tokens
-r other.txt
--index-url https://example.invalid/simple
evil @ https://example.invalid/evil.whl
not a requirement !!
"""


def test_declared_dependencies_are_read_from_the_commit(make_repo: RepoFactory) -> None:
    """pyproject dependencies and test/dev extras and groups, plus requirements.txt lines, at the commit."""
    repo, commit = make_repo({"pyproject.toml": PYPROJECT, "requirements.txt": REQUIREMENTS})
    (repo / "requirements.txt").write_text("django\n")  # the live checkout does not count
    deps = repo_dependencies(repo, commit)
    assert deps.requirements == sorted(
        ["fastapi>=0.110", "pydantic>=2", "pytest-mock", "freezegun", "PyJWT==2.9.0"]
    )
    assert deps.sources == ["pyproject.toml", "requirements.txt"]
    ignored = "\n".join(deps.ignored)
    assert "-r other.txt — pip options are not followed" in ignored
    assert "--index-url" in ignored
    assert "direct URL references are not installed" in ignored
    assert "not a valid requirement" in ignored
    assert "include-group" in ignored
    assert "psycopg" not in " ".join(deps.requirements)


def test_a_repository_without_declarations_needs_no_layer(make_repo: RepoFactory) -> None:
    """A repository with neither file declares nothing."""
    repo, commit = make_repo({"app.py": "x = 1\n"})
    assert repo_dependencies(repo, commit) == RepoDependencies(
        requirements=[], sources=[], ignored=[]
    )


def test_symlinked_requirements_file_is_not_read(make_repo: RepoFactory) -> None:
    """A requirements.txt that is a symlink in the repository is ignored, not followed."""
    repo, commit = make_repo({"real.txt": "flask\n"}, symlinks={"requirements.txt": "real.txt"})
    assert repo_dependencies(repo, commit).requirements == []


def test_deps_tag_depends_on_declarations_and_sandbox_image(make_repo: RepoFactory) -> None:
    """The tag changes when the declarations or the sandbox image change, and only then."""
    repo, first = make_repo({"requirements.txt": "flask\n"})
    deps = repo_dependencies(repo, first)
    tag = deps_tag(deps, "sha256:aaa")
    assert tag.startswith("taskbox-sandbox:deps-")
    assert len(tag.rpartition("-")[2]) == 12
    assert deps_tag(deps, "sha256:aaa") == tag
    assert deps_tag(deps, "sha256:bbb") != tag
    (repo / "requirements.txt").write_text("flask\nrequests\n")
    git(repo, "commit", "-qam", "more")
    second = git(repo, "rev-parse", "HEAD").strip()
    assert deps_tag(repo_dependencies(repo, second), "sha256:aaa") != tag


def test_platform_tags_cover_every_manylinux_the_glibc_loads() -> None:
    """glibc 2.36 on x86_64 accepts manylinux_2_5 up to 2_36 and the legacy aliases."""
    target = PythonTarget(version="3.12", machine="x86_64", glibc="2.36")
    tags = target.platforms()
    assert target.abi == "cp312"
    assert tags[0] == "manylinux_2_36_x86_64"
    assert tags[-4] == "manylinux_2_5_x86_64"
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags


class FakeImages:
    """Knows a fixed set of image ids; enough for image_for_repo's lookups."""

    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids

    def image_id(self, ref: str) -> str | None:
        return self.ids.get(ref)


def test_image_for_repo_finds_the_dependency_image_of_the_current_sandbox(
    make_repo: RepoFactory,
) -> None:
    """The deps tag is used only when it was built for these declarations on the current sandbox image."""
    repo, commit = make_repo({"requirements.txt": "flask\n"})
    tag = deps_tag(repo_dependencies(repo, commit), "sha256:current")
    engine = FakeImages({"taskbox-sandbox:latest": "sha256:current", tag: "sha256:deps"})
    assert image_for_repo(repo, commit, engine=engine) == tag  # type: ignore[arg-type]
    stale = FakeImages({"taskbox-sandbox:latest": "sha256:rebuilt", tag: "sha256:deps"})
    assert image_for_repo(repo, commit, engine=stale) is None  # type: ignore[arg-type]
    bare, bare_commit = make_repo({"app.py": ""}, name="bare")
    assert image_for_repo(bare, bare_commit, engine=engine) is None  # type: ignore[arg-type]
