"""Load policy files, resolve ``extends``, apply a task's resource request.

A policy file is YAML. ``extends: NAME`` starts from another policy of the same
folder; mappings merge key by key, lists replace, except ``deny``, which only
ever grows: a child can add deny rules and never remove one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from controller.errors import InvalidTaskError, PolicyError
from controller.policy.schema import POLICY_NAME, Limits, Policy

if TYPE_CHECKING:
    from pathlib import Path

    from taskbox_wire.contract import ResourceRequest

MAX_EXTENDS_DEPTH = 8


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy file must be a mapping")
    return data


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in child.items():
        if key == "deny" and isinstance(value, list):
            merged[key] = list(dict.fromkeys([*base.get("deny", []), *value]))
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def _resolved_data(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if len(seen) > MAX_EXTENDS_DEPTH or path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise PolicyError(f"{path}: 'extends' loops or is too deep: {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not POLICY_NAME.match(parent):
        raise PolicyError(f"{path}: 'extends' must name a policy, got {parent!r}")
    parent_path = path.with_name(f"{parent}.yaml")
    if not parent_path.is_file():
        raise PolicyError(f"{path}: extends unknown policy {parent!r}")
    return _merge(_resolved_data(parent_path, (*seen, path)), data)


def load_policy_file(path: Path) -> Policy:
    """Load one policy file (with its ``extends`` chain) into a validated :class:`Policy`."""
    data = _resolved_data(path)
    data.setdefault("name", path.stem)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise PolicyError(f"{path}: {problems}") from exc
    if policy.name != path.stem:
        raise PolicyError(f"{path}: name {policy.name!r} does not match the file name")
    return policy


def load_policy(policies_dir: Path, name: str) -> Policy:
    """Load the policy called ``name`` from ``policies_dir``."""
    if not POLICY_NAME.match(name):
        raise PolicyError(f"{name!r} is not a policy name")
    path = policies_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in policies_dir.glob("*.yaml"))) or "none"
        raise PolicyError(f"no policy named {name!r} in {policies_dir} (known: {known})")
    return load_policy_file(path)


def policy_for_worker(policies_dir: Path, worker: str, override: str | None = None) -> Policy:
    """The policy a task of ``worker`` runs under: ``override``, else the worker's own, else ``default``."""
    if override is not None:
        return load_policy(policies_dir, override)
    if (policies_dir / f"{worker}.yaml").is_file():
        return load_policy(policies_dir, worker)
    return load_policy(policies_dir, "default")


def list_policies(policies_dir: Path) -> list[Policy]:
    """Every policy in the folder, validated; the first invalid file raises."""
    return [load_policy_file(p) for p in sorted(policies_dir.glob("*.yaml"))]


def effective_policy(policy: Policy, request: ResourceRequest | None) -> Policy:
    """Apply a task's resource request: allowed up to ``policy.max``, refused above it.

    A task can lower a limit or raise it up to the maximum; it can never widen
    anything else, because the task contract has no field for anything else.
    """
    if request is None:
        return policy
    wanted = request.model_dump(exclude_none=True)
    too_much = [
        f"{field}={value} (max {getattr(policy.max, field)})"
        for field, value in wanted.items()
        if value > getattr(policy.max, field)
    ]
    if too_much:
        raise InvalidTaskError(
            f"the task asks for more than policy {policy.name!r} allows: {', '.join(too_much)}"
        )
    limits = Limits.model_validate({**policy.limits.model_dump(), **wanted})
    return policy.model_copy(update={"limits": limits})
