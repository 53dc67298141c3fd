"""Policy files: validation, inheritance, deny rules that only grow, and tasks that try to widen."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import cli
from controller.errors import InvalidTaskError, PolicyError
from controller.policy.loader import effective_policy, list_policies, load_policy, policy_for_worker
from controller.policy.schema import MANDATORY_DENY
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import ResourceRequest

POLICIES = PROJECT_ROOT / "policies"


def test_shipped_policies_validate() -> None:
    """Every policy in policies/ loads, carries the mandatory deny rules and has a digest."""
    policies = list_policies(POLICIES)
    assert {p.name for p in policies} >= {"default", "be-python"}
    for policy in policies:
        assert set(MANDATORY_DENY) <= set(policy.deny)
        assert policy.digest().startswith("sha256:")
        assert policy.uid != 0


def test_worker_policy_extends_default_and_only_adds_deny_rules() -> None:
    """be-python inherits default's deny rules and adds its own; its limits override."""
    default = load_policy(POLICIES, "default")
    worker = load_policy(POLICIES, "be-python")
    assert set(default.deny) < set(worker.deny)
    assert worker.limits.memory_mb == 2048
    assert worker.image == default.image


def test_worker_without_policy_gets_default(tmp_path: Path) -> None:
    """A worker with no policy file of its own runs under the default policy."""
    (tmp_path / "default.yaml").write_text((POLICIES / "default.yaml").read_text())
    assert policy_for_worker(tmp_path, "be-python").name == "default"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_misspelt_key_fails_loudly(tmp_path: Path) -> None:
    """An unknown key is an error that names the key and the file."""
    (tmp_path / "default.yaml").write_text((POLICIES / "default.yaml").read_text())
    write(tmp_path, "typo", "extends: default\nlimts:\n  memory_mb: 1\n")
    with pytest.raises(PolicyError, match=r"typo\.yaml: limts: Extra inputs are not permitted"):
        load_policy(tmp_path, "typo")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("extends: default\nuid: 0\n", "uid: Input should be greater than or equal to 1"),
        ("extends: default\ndeny: ['!.env']\n", "negates"),
        ("extends: default\nlimits: {memory_mb: 99999}\n", "less than or equal to 65536"),
        ("extends: default\nlimits: {pids: 100000}\n", "pids"),
        ("extends: default\ntmpfs: [{path: /var, size_mb: 1}]\n", "tmpfs must include /tmp"),
        (
            "extends: default\ntmpfs: [{path: /tmp, size_mb: 1}, {path: /work, size_mb: 1}]\n",
            "reserved",
        ),
        ("extends: default\nmax: {memory_mb: 512}\n", "limits.memory_mb is above max.memory_mb"),
        ("extends: nowhere\n", "extends unknown policy 'nowhere'"),
        ("extends: loop\n", "loops"),
        ("- a list\n", "must be a mapping"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_policies_are_refused_with_a_reason(
    tmp_path: Path, body: str, message: str
) -> None:
    """Each kind of invalid policy file is refused with a message that says what is wrong."""
    (tmp_path / "default.yaml").write_text((POLICIES / "default.yaml").read_text())
    write(tmp_path, "loop", body)
    with pytest.raises(PolicyError, match=message):
        load_policy(tmp_path, "loop")


def test_child_cannot_drop_mandatory_deny_rules(tmp_path: Path) -> None:
    """A policy whose deny list omits the mandatory rules still has them."""
    (tmp_path / "default.yaml").write_text((POLICIES / "default.yaml").read_text())
    write(tmp_path, "lax", "extends: default\ndeny: ['*.log']\n")
    policy = load_policy(tmp_path, "lax")
    assert set(MANDATORY_DENY) <= set(policy.deny)
    assert "*.log" in policy.deny


def test_task_may_ask_up_to_the_maximum() -> None:
    """A resource request within the policy's max becomes the effective limit."""
    policy = load_policy(POLICIES, "be-python")
    wider = effective_policy(policy, ResourceRequest(memory_mb=4096, wall_clock_seconds=60))
    assert wider.limits.memory_mb == 4096
    assert wider.limits.wall_clock_seconds == 60
    assert wider.digest() != policy.digest()


def test_task_cannot_widen_its_policy() -> None:
    """A request above the policy's max is refused, naming each field and its maximum."""
    policy = load_policy(POLICIES, "be-python")
    with pytest.raises(InvalidTaskError, match=r"memory_mb=999999 \(max 4096\).*pids=100000"):
        effective_policy(policy, ResourceRequest(memory_mb=999_999, pids=100_000))


def test_lint_command_reports_each_file(tmp_path: Path) -> None:
    """`taskbox policy lint` passes good files and fails bad ones with the reason."""
    runner = CliRunner()
    ok = runner.invoke(cli, ["policy", "lint", str(POLICIES / "default.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output
    bad = write(tmp_path, "bad", "name: bad\n")
    result = runner.invoke(cli, ["policy", "lint", str(bad)])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "image: Field required" in result.output
