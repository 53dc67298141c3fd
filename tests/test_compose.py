"""compose.yaml: the controller service as developers run it, written to the Compose Specification."""

from __future__ import annotations

from typing import Any

import yaml

from controller.settings import PROJECT_ROOT


def load() -> dict[str, Any]:
    data = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_controller_service_uses_the_built_image_and_loopback_port() -> None:
    """The service runs the controller image, serves on loopback only and keeps no restart loop."""
    service = load()["services"]["controller"]
    assert service["image"] == "taskbox-controller:latest"
    # Loopback only; the host port may change (TASKBOX_HOST_PORT), the container's may not.
    assert service["ports"] == ["127.0.0.1:${TASKBOX_HOST_PORT:-8080}:8080"]
    assert service["restart"] == "no"
    assert "version" not in load()  # the Compose Specification has no version key


def test_controller_service_is_hardened_and_keeps_secrets_out_of_the_file() -> None:
    """Capabilities dropped but the three staging needs; tokens and keys only from the environment."""
    service = load()["services"]["controller"]
    assert service["cap_drop"] == ["ALL"]
    assert set(service["cap_add"]) == {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
    assert "no-new-privileges:true" in service["security_opt"]
    for value in service["environment"].values():
        assert value.startswith("${"), value
    assert "${PWD}:${PWD}" in service["volumes"]  # staging paths identical inside and out


def readme_compose_section() -> str:
    """The README's "Docker Compose" section, up to the next heading."""
    text = (PROJECT_ROOT / "README.md").read_text()
    start = text.index("## Docker Compose")
    return text[start : text.index("\n## ", start + 1)]


def commands(section: str, tool: str) -> list[str]:
    """The arguments of every line of ``section`` that starts with ``tool``, comments cut off."""
    prefix = f"{tool} "
    return [
        line.split("#", 1)[0].strip().removeprefix(prefix)
        for line in section.splitlines()
        if line.startswith(prefix)
    ]


def test_readme_gives_every_compose_step_for_both_tools() -> None:
    """Each compose step of the README is shown for Compose v2 and for docker-compose 1.29, with the same arguments."""
    section = readme_compose_section()
    v2 = commands(section, "docker compose")
    assert v2 == commands(section, "docker-compose")
    assert {"up -d", "down"} <= set(v2)
    assert "run --rm controller reproduce var/runs/<run-id>" in v2
