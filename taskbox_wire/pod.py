"""How files travel to and from a Kubernetes Pod: the stage volume's layout, the in-pod helper's commands, the exchange's paths.

A Pod gets no host bind mount. The controller packs the host folders a Docker
sandbox would have bind-mounted into one tar; the Pod's init container fetches it
once from the controller's exchange (with a single-use token) into the Pod's
``stage`` volume; the main container mounts sub-paths of that volume where the bind
mounts would have been (read-only, the owned paths writable). When the command
ends, the in-pod helper sends the out folder back as one tar, read by the
controller as untrusted bytes. Shared by the controller (manifests, exchange) and
the in-pod helper (``taskbox_runner.podio``); imports neither.
"""

from __future__ import annotations

from taskbox_wire.paths import BASE_DIR, F2P_DIR, OUTDIR, TASKBOX_DIR, WORKDIR

STAGE_VOLUME = "stage"
"""The Pod's emptyDir that holds every staged folder."""
STAGE_DIR = "/stage"
"""Where the init container mounts the stage volume (writable there, and only there)."""

INIT_CONTAINER = "stage-in"
"""The init container that fills the stage volume."""
MAIN_CONTAINER = "sandbox"
"""The container that runs the runner or the judge."""

#: Each in-sandbox folder a Docker sandbox gets as a bind mount, by its sub-folder of the stage volume.
STAGE_SUBDIRS: dict[str, str] = {
    WORKDIR: "work",
    OUTDIR: "out",
    TASKBOX_DIR: "taskbox",
    BASE_DIR: "base",
    F2P_DIR: "f2p",
}

ENV_EXCHANGE_URL = "TASKBOX_EXCHANGE_URL"
"""The init container's environment: the exchange's base URL for this run,
``http://HOST:PORT/exchange/<run id>`` (no secret)."""
ENV_EXCHANGE_TOKEN = "TASKBOX_EXCHANGE_TOKEN"  # noqa: S105 - the variable's name, not a secret
"""The init container's environment: the single-use token that fetches ``in.tar``.
The token for ``out.tar`` is a different one, inside the staged tree (``EXCHANGE_CONFIG``)."""
ENV_RLIMITS = "TASKBOX_RLIMITS"
"""The main container's environment: the resource limits (Docker's ulimit names, JSON) the
in-pod helper sets on the command, since a Pod has no field for them; the helper removes
the variable from the command's environment."""
EXCHANGE_CONFIG = f"{TASKBOX_DIR}/exchange.json"
"""The main container's read-only note of where and with which token ``out.tar`` goes:
``{"url": ..., "token": ...}``."""

EXCHANGE_IN = "in.tar"
"""The staged tree: members ``<subdir>/...`` for each entry of :data:`STAGE_SUBDIRS` in use."""
EXCHANGE_OUT = "out.tar"
"""The out folder's regular files, uploaded once after the command ends."""

STAGE_IN_COMMAND = ("python", "-P", "-m", "taskbox_runner.podio", "stage-in")
"""The init container's command: fetch ``in.tar`` once and extract it under :data:`STAGE_DIR`."""


def stage_subpath(target: str) -> str:
    """The stage volume's sub-path for an in-sandbox folder: ``/work`` -> ``work``, ``/work/app/`` -> ``work/app``."""
    for folder, subdir in STAGE_SUBDIRS.items():
        if target == folder:
            return subdir
        if target.startswith(folder + "/"):
            rest = target[len(folder) + 1 :].strip("/")
            if not rest or ".." in rest.split("/"):
                raise ValueError(f"no stage sub-path for {target!r}")
            return f"{subdir}/{rest}"
    raise ValueError(f"{target!r} is not a staged folder (one of {sorted(STAGE_SUBDIRS)})")


def wrapped_command(command: list[str] | tuple[str, ...]) -> list[str]:
    """The main container's command: run ``command``, then send the out folder back once.

    The helper passes the command's exit status on as its own.
    """
    return ["python", "-P", "-m", "taskbox_runner.podio", "run", "--", *command]


def exchange_path(run_id: str, name: str) -> str:
    """The exchange's path of one file of one run, e.g. ``/exchange/<run id>/in.tar``."""
    if name not in (EXCHANGE_IN, EXCHANGE_OUT):
        raise ValueError(f"no exchange file {name!r}")
    return f"/exchange/{run_id}/{name}"
