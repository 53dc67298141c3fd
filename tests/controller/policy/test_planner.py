"""The mount planner: what a task may see and write, and every reason a path is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.gitrepo import list_tree
from controller.policy.loader import load_policy
from controller.policy.planner import MountPlan, RefusalReason, Role, plan_mounts
from controller.policy.schema import Policy
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task
from tests.conftest import RepoFactory, git

POLICY: Policy = load_policy(PROJECT_ROOT / "policies", "be-python")

FILES = {
    "pyproject.toml": "[project]\nname='x'\n",
    "app/__init__.py": "",
    "app/main.py": "app = None\n",
    "app/api/users.py": "# users\n",
    "app/api/.env.local": "TOKEN=x\n",
    "app/api/certs/server.pem": "-----BEGIN-----\n",
    "tests/test_main.py": "def test(): pass\n",
    "secrets/prod.yaml": "password: x\n",
    ".env": "KEY=x\n",
    "docs/readme.md": "hi\n",
    "contracts/openapi.json": "{}\n",
}


def make_task(owns: list[str], relevant: list[str], contract: str | None = None) -> Task:
    context: dict[str, Any] = {"T-1-ctx": {"relevant_files": relevant}}
    if contract is not None:
        context["T-1-contract"] = {"openapi_path": contract}
    return Task.model_validate(
        {"taskKey": "T-1", "description": "d", "ownsPaths": owns, "contextJson": context}
    )


@pytest.fixture
def repo(make_repo: RepoFactory) -> tuple[Path, str]:
    return make_repo(FILES, symlinks={"app/link.py": "/etc/passwd", "linkdir": "app"})


def plan_for(repo: tuple[Path, str], task: Task) -> MountPlan:
    path, commit = repo
    return plan_mounts(task, list_tree(path, commit), POLICY, commit)


def reasons(plan: MountPlan) -> dict[str, RefusalReason]:
    return {r.path: r.reason for r in plan.refused}


def test_relevant_files_are_read_only_and_owned_paths_writable(repo: tuple[Path, str]) -> None:
    """Relevant files are planned read-only, owned paths read-write, and only they are staged."""
    plan = plan_for(repo, make_task(["app/main.py"], ["pyproject.toml", "tests/test_main.py"]))
    assert [e.path for e in plan.read_only] == ["pyproject.toml", "tests/test_main.py"]
    assert [(e.path, e.kind) for e in plan.read_write] == [("app/main.py", "file")]
    assert {s.path for s in plan.staged} == {"pyproject.toml", "tests/test_main.py", "app/main.py"}
    assert plan.refused == []
    assert plan.invalid_reasons == []


def test_directory_owns_everything_below_it_except_denied_files(repo: tuple[Path, str]) -> None:
    """A directory in ownsPaths stages its files; denied files inside it are left out and reported."""
    plan = plan_for(repo, make_task(["app/api/"], []))
    assert [(e.path, e.kind, e.exists_at_base) for e in plan.read_write] == [
        ("app/api", "dir", True)
    ]
    assert {s.path for s in plan.staged} == {"app/api/users.py"}
    excluded = {r.path: r.reason for r in plan.refused if r.role is Role.EXCLUDED}
    assert excluded == {
        "app/api/.env.local": RefusalReason.DENIED,
        "app/api/certs/server.pem": RefusalReason.DENIED,
    }
    assert plan.invalid_reasons == []  # exclusions inside an owned folder do not invalidate it


def test_new_owned_paths_are_planned_as_absent(repo: tuple[Path, str]) -> None:
    """Owned paths that do not exist yet are planned (file or folder by the trailing slash)."""
    plan = plan_for(repo, make_task(["app/schemas/", "tests/test_new.py"], []))
    assert [(e.path, e.kind, e.exists_at_base) for e in plan.read_write] == [
        ("app/schemas", "dir", False),
        ("tests/test_new.py", "file", False),
    ]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", RefusalReason.ABSOLUTE),
        ("~/.ssh/id_rsa", RefusalReason.ABSOLUTE),
        ("../outside.py", RefusalReason.OUTSIDE),
        ("app/../../x", RefusalReason.OUTSIDE),
        ("app/../pyproject.toml", RefusalReason.TRAVERSAL),
        ("app/link.py", RefusalReason.SYMLINK),
        ("linkdir/main.py", RefusalReason.SYMLINK),
        (".env", RefusalReason.DENIED),
        ("secrets/prod.yaml", RefusalReason.DENIED),
        (".git/config", RefusalReason.DENIED),
        ("app/api/certs/server.pem", RefusalReason.DENIED),
        ("missing.py", RefusalReason.ABSENT),
        ("app/bad\nname.py", RefusalReason.INVALID),
        ("app\\main.py", RefusalReason.INVALID),
        ("a/" + "x" * 300, RefusalReason.INVALID),
        (".", RefusalReason.OUTSIDE),
    ],
)
def test_every_refusal_reason_for_relevant_files(
    repo: tuple[Path, str], path: str, reason: RefusalReason
) -> None:
    """Each kind of bad relevant path is refused with its own reason and becomes missing context."""
    plan = plan_for(repo, make_task(["app/main.py"], [path]))
    assert reasons(plan) == {path: reason}
    assert plan.read_only == []
    assert len(plan.missing_context) == 1
    assert plan.missing_context[0].startswith(path)
    assert plan.invalid_reasons == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/tmp/x", RefusalReason.ABSOLUTE),
        ("../x", RefusalReason.OUTSIDE),
        ("app/link.py", RefusalReason.SYMLINK),
        ("linkdir/", RefusalReason.SYMLINK),
        ("linkdir/new.py", RefusalReason.SYMLINK),
        (".git/hooks/", RefusalReason.DENIED),
        ("secrets/", RefusalReason.DENIED),
        ("config/.env.prod", RefusalReason.DENIED),
        ("app/main.py/x.py", RefusalReason.CONFLICT),
    ],
)
def test_a_refused_owned_path_makes_the_task_invalid(
    repo: tuple[Path, str], path: str, reason: RefusalReason
) -> None:
    """A refused ownsPaths entry is not mounted and makes the plan invalid."""
    plan = plan_for(repo, make_task([path], []))
    assert reasons(plan) == {path: reason}
    assert plan.read_write == []
    assert plan.invalid_reasons


def test_overlapping_owned_paths_are_refused(repo: tuple[Path, str]) -> None:
    """Two owned paths where one holds the other would make nested writable mounts: refused."""
    plan = plan_for(repo, make_task(["app/", "app/api/users.py"], []))
    owned_refusals = {r.path: r.reason for r in plan.refused if r.role is Role.OWNS}
    assert owned_refusals == {"app/api/users.py": RefusalReason.CONFLICT}


def test_relevant_file_inside_owned_folder_is_writable_not_duplicated(
    repo: tuple[Path, str],
) -> None:
    """A relevant file under an owned folder is simply part of the writable mount."""
    plan = plan_for(repo, make_task(["app/"], ["app/main.py"]))
    assert plan.read_only == []
    assert "app/main.py" in {s.path for s in plan.staged}


def test_contract_is_read_only_and_recorded(repo: tuple[Path, str]) -> None:
    """The contract file is mounted read-only and named in the plan."""
    plan = plan_for(repo, make_task(["app/api/"], [], contract="contracts/openapi.json"))
    assert [(e.path, e.role) for e in plan.read_only] == [("contracts/openapi.json", Role.CONTRACT)]
    assert plan.contract == "contracts/openapi.json"


def test_missing_contract_is_missing_context(repo: tuple[Path, str]) -> None:
    """A contract path absent at the base commit is reported, not silently dropped."""
    plan = plan_for(repo, make_task(["app/api/"], [], contract="contracts/nope.json"))
    assert plan.contract is None
    assert plan.missing_context == [
        f"contracts/nope.json — does not exist at {plan.base_commit[:12]}"
    ]


def test_relevant_directory_stages_its_visible_files(repo: tuple[Path, str]) -> None:
    """A relevant folder is read-only as a whole, minus its denied files."""
    plan = plan_for(repo, make_task(["docs/"], ["app/"]))
    staged = {s.path for s in plan.staged}
    assert "app/main.py" in staged
    assert "app/api/.env.local" not in staged
    assert "app/link.py" not in staged
    excluded = {r.path: r.reason for r in plan.refused if r.role is Role.EXCLUDED}
    assert excluded["app/link.py"] is RefusalReason.SYMLINK


def test_submodule_is_refused(make_repo: RepoFactory) -> None:
    """A gitlink (submodule) in the tree is never mounted, nor anything below it."""
    path, base = make_repo({"a.py": "x\n"})
    git(path, "update-index", "--add", "--cacheinfo", f"160000,{base},vendor/lib")
    git(path, "commit", "-q", "-m", "add submodule")
    commit = git(path, "rev-parse", "HEAD").strip()
    task = make_task(["vendor/lib/new.py"], ["vendor/lib"])
    plan = plan_mounts(task, list_tree(path, commit), POLICY, commit)
    assert reasons(plan) == {
        "vendor/lib/new.py": RefusalReason.SUBMODULE,
        "vendor/lib": RefusalReason.SUBMODULE,
    }


def test_deny_rules_also_match_case_folded_paths(make_repo: RepoFactory) -> None:
    """'.ENV' is '.env' on a case-insensitive checkout, so the rule for '.env*' refuses it."""
    path, commit = make_repo({"config/.ENV": "KEY=x\n", "Secrets/key.txt": "x\n", "a.py": ""})
    plan = plan_mounts(
        make_task(["a.py"], ["config/.ENV", "Secrets/key.txt"]),
        list_tree(path, commit),
        POLICY,
        commit,
    )
    assert reasons(plan) == {
        "config/.ENV": RefusalReason.DENIED,
        "Secrets/key.txt": RefusalReason.DENIED,
    }


@pytest.mark.parametrize(
    "owned",
    ["SECRETS./", "secrets /", "Secrets. ./", "SECRETS./new.yaml", "app/api/KEY.PEM.", ".ENV. "],
)
def test_windows_forms_of_a_denied_owned_path_are_denied(
    repo: tuple[Path, str], owned: str
) -> None:
    """'SECRETS./' and 'secrets /' are 'secrets/' on Windows: the deny rule refuses them as it does the plain name."""
    plan = plan_for(repo, make_task([owned], []))
    assert reasons(plan) == {owned: RefusalReason.DENIED}
    assert plan.read_write == []
    assert plan.invalid_reasons


@pytest.mark.parametrize(
    "owned",
    [
        "app/aux.py",
        "app/CON",
        "app/nul.txt",
        "app/com1.py",
        "app/lpt9",
        "app/Prn.Md",
        "app/con .txt",
        "app/lpt\u00b9.log",
        "app/a:b.py",
        "app/name.",
        "app/name ",
        "app/dir./",
        "app/x<y.py",
        "app/x>y.py",
        'app/say"hi".py',
        "app/pipe|.py",
        "app/what?.py",
        "app/star*.py",
        "app/PROGRA~1/",
        "app/we\u200dird.py",
    ],
)
def test_owned_names_other_systems_cannot_check_out_are_refused(
    repo: tuple[Path, str], owned: str
) -> None:
    """Reserved device names, forbidden characters, trailing dots or spaces and short-name forms make an owned path invalid, with a reason."""
    plan = plan_for(repo, make_task([owned], []))
    assert reasons(plan) == {owned: RefusalReason.INVALID}
    assert plan.read_write == []
    (reason,) = plan.invalid_reasons
    assert any(word in reason for word in ("Windows", "macOS")), reason


@pytest.mark.parametrize(
    "owned",
    ["app/auxiliary.py", "app/console/", "app/com10.py", "app/nul_check.py", "app/v1.2.py"],
)
def test_names_that_only_look_reserved_are_planned(repo: tuple[Path, str], owned: str) -> None:
    """Names that merely start like a device name, or hold dots inside, stay valid owned paths."""
    plan = plan_for(repo, make_task([owned], []))
    assert plan.refused == []
    assert [e.path for e in plan.read_write] == [owned.rstrip("/")]


def test_windows_forms_of_a_denied_relevant_file_are_denied(make_repo: RepoFactory) -> None:
    """A relevant file under 'SECRETS.' (committed on Linux) is denied like one under 'secrets/'."""
    path, commit = make_repo({"SECRETS./db.yaml": "password: x\n", "a.py": ""})
    plan = plan_mounts(
        make_task(["a.py"], ["SECRETS./db.yaml"]), list_tree(path, commit), POLICY, commit
    )
    assert reasons(plan) == {"SECRETS./db.yaml": RefusalReason.DENIED}
    assert {s.path for s in plan.staged} == {"a.py"}
