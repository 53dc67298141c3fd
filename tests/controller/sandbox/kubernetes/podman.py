"""Run a Kubernetes Pod manifest for real under Debian's podman (``podman kube play --network none``).

The harness of the ``podman`` tests: it writes the manifest, plays it with no
network, waits for the main containers to exit, keeps their logs and inspects,
and removes the Pod (``kube down``, then ``pod rm -f``) and the volumes the play
made, whatever happened. Podman 4.3 (Debian 12's) falls short of a cluster in
two ways and the test has no network, so three helpers adapt a manifest, each
saying what it changed:

- :func:`bind_sub_paths`: podman 4.3 ignores ``volumeMounts[].subPath`` (support
  came in 4.4) and mounts the whole volume, so each sub-path mount of the stage
  volume becomes a mount of its own ``hostPath`` folder or file, and the stage
  ``emptyDir`` a ``hostPath`` folder holding them;
- :func:`without_long_annotations`: podman 4.3 refuses an annotation value longer
  than 63 characters (a label's limit, not an annotation's), so those are left out;
- :func:`stage_from_file`: with no network the init container cannot fetch
  ``in.tar`` from the exchange, so it extracts the same tar from a read-only
  ``hostPath`` folder instead.

Podman cannot run at all (not installed, not root, no image)? The tests skip with
the reason, or fail when ``TASKBOX_REQUIRE_PODMAN=1`` (CI sets it).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

log = logging.getLogger(__name__)

#: Set to 1 to make a missing or broken podman a failure instead of a skip.
REQUIRE_ENV = "TASKBOX_REQUIRE_PODMAN"
SETUP_HINT = "run scripts/ensure-podman as root"
#: Seconds one podman command may take (a play, a wait).
COMMAND_TIMEOUT = 180.0
#: The uid range /etc/subuid must grant podman's user "containers" for `hostUsers: false`.
SUBID_USER = "containers"
#: Where the stage-in substitute finds the tar inside the init container.
EXCHANGE_MOUNT = "/exchange-in"
#: The init container's substitute command: the stage-in's extraction (regular files and
#: folders only, nothing outside the stage, the "data" filter), from a file instead of the exchange.
STAGE_FROM_FILE_CODE = """import sys, tarfile
source, stage = sys.argv[1], sys.argv[2]
with tarfile.open(source) as tar:
    members = tar.getmembers()
    bad = [m.name for m in members if not (m.isfile() or m.isdir())]
    if bad:
        sys.exit(f"stage-in: refused members {bad}")
    tar.extractall(stage, filter="data")
print(f"stage-in: {len(members)} members from {source}", flush=True)
"""

Manifest = dict[str, Any]


class PodmanError(AssertionError):
    """Podman refused a manifest, a Pod did not finish in time, or something was left behind."""


# --------------------------------------------------------------------------- availability


def unavailable_reason(image: str) -> str | None:  # noqa: PLR0911 - one return per reason
    """Why podman cannot run the sandbox's Pods here, or None when it can."""
    executable = shutil.which("podman")
    if executable is None:
        return f"podman is not installed ({SETUP_HINT})"
    if os.geteuid() != 0:
        # Rootless podman on cgroup v1 cannot set memory or pids limits: the probes would fail.
        return "podman runs rootful only here (rootless cannot set memory or pids limits)"
    for ids in ("/etc/subuid", "/etc/subgid"):
        text = Path(ids).read_text() if Path(ids).exists() else ""
        if not any(line.startswith(f"{SUBID_USER}:") for line in text.splitlines()):
            return f"{ids} grants {SUBID_USER!r} no ids for hostUsers: false ({SETUP_HINT})"
    info = subprocess.run(
        [executable, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    if info.returncode != 0:
        return f"podman info failed: {info.stderr.strip()[-300:]}"
    mine = _image_id([executable, "image", "inspect", "--format", "{{.Id}}", image])
    if mine is None:
        return f"podman has no {image} ({SETUP_HINT})"
    docker = shutil.which("docker")
    theirs = (
        _image_id([docker, "image", "inspect", "--format", "{{.Id}}", image]) if docker else None
    )
    if theirs is not None and theirs != mine:
        return f"podman's {image} ({mine[:12]}) is not Docker's ({theirs[:12]}): {SETUP_HINT}"
    return None


def _image_id(command: list[str]) -> str | None:
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip().removeprefix("sha256:") or None


def require_podman(image: str) -> Podman:
    """A harness for the tests: skip with the reason when podman cannot run, or fail under TASKBOX_REQUIRE_PODMAN=1.

    As root, a missing or stale copy of the image (Docker's was rebuilt since setup) is
    brought over once with scripts/ensure-podman, so the Pod runs what the engine would.
    """
    reason = unavailable_reason(image)
    if reason is not None and SETUP_HINT in reason and os.geteuid() == 0:
        script = Path(__file__).resolve().parents[4] / "scripts" / "ensure-podman"
        subprocess.run([str(script), image], check=False, timeout=600)
        reason = unavailable_reason(image)
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return Podman()


# --------------------------------------------------------------------------- manifest helpers


def pod_of(documents: list[Manifest]) -> Manifest:
    """The one Pod among ``documents``."""
    pods = [doc for doc in documents if doc.get("kind") == "Pod"]
    if len(pods) != 1:
        raise PodmanError(f"{len(pods)} Pods among the documents, not one")
    return pods[0]


def _containers(pod: Manifest) -> list[Manifest]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _volume(pod: Manifest, name: str) -> Manifest:
    for volume in pod["spec"].get("volumes", []):
        if volume["name"] == name:
            return dict(volume)
    raise PodmanError(f"the Pod has no volume {name!r}")


def sub_path_volume(volume: str, sub_path: str) -> str:
    """The name of the hostPath volume that stands in for ``volume``'s ``sub_path`` (see :func:`bind_sub_paths`)."""
    slug = "-".join(PurePosixPath(sub_path).parts).lower().replace("_", "-").replace(".", "-")
    return f"{volume}-{slug}"


def bind_sub_paths(pod: Manifest, volume: str, host_root: Path, kinds: dict[str, str]) -> Manifest:
    """A copy of ``pod`` whose ``volume`` is the host folder ``host_root``, one hostPath volume per sub-path mount.

    Podman 4.3 ignores ``subPath`` (it mounts the whole volume there), so each mount
    of ``volume`` with a sub-path becomes a mount, without sub-path, of the volume
    ``<volume>-<sub-path slug>``: a hostPath of ``host_root/<sub-path>``. Podman checks
    a hostPath when the Pod is created, before the init container fills the stage, so
    each sub-path is made here first, as ``kinds`` says (``"dir"`` or ``"file"``; a
    folder when absent, as kubelet does); :meth:`Podman.play` hands the folder to the
    Pod's user. The copy changes nothing else.
    """
    if _volume(pod, volume).get("emptyDir") is None:
        raise PodmanError(f"the volume {volume!r} is not an emptyDir")
    adapted = copy.deepcopy(pod)
    added: dict[str, Manifest] = {}
    for container in _containers(adapted):
        for mount in container.get("volumeMounts", []):
            sub_path = mount.get("subPath")
            if mount["name"] != volume or not sub_path:
                continue
            target = host_root / sub_path
            if kinds.get(sub_path) == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            else:
                target.mkdir(parents=True, exist_ok=True)
            name = sub_path_volume(volume, sub_path)
            added[name] = {"name": name, "hostPath": {"path": str(target)}}
            mount["name"] = name
            del mount["subPath"]
    volumes = adapted["spec"]["volumes"]
    index = next(i for i, v in enumerate(volumes) if v["name"] == volume)
    volumes[index] = {"name": volume, "hostPath": {"path": str(host_root), "type": "Directory"}}
    volumes.extend(added[name] for name in sorted(added))
    return adapted


def stage_from_file(
    pod: Manifest, init_container: str, stage_dir: str, tar_folder: Path
) -> Manifest:
    """A copy of ``pod`` whose init container extracts ``tar_folder/in.tar`` into ``stage_dir`` instead of fetching it.

    Only the init container's command changes, and it gets one more read-only mount
    (``/exchange-in``, a hostPath of ``tar_folder``); its image, user, security
    context, environment and other mounts stay as built.
    """
    adapted = copy.deepcopy(pod)
    init = next(
        (c for c in adapted["spec"].get("initContainers", []) if c["name"] == init_container), None
    )
    if init is None:
        raise PodmanError(f"the Pod has no init container {init_container!r}")
    init["command"] = [
        "python",
        "-P",
        "-c",
        STAGE_FROM_FILE_CODE,
        f"{EXCHANGE_MOUNT}/in.tar",
        stage_dir,
    ]
    init.pop("args", None)
    init.setdefault("volumeMounts", []).append(
        {"name": "exchange-in", "mountPath": EXCHANGE_MOUNT, "readOnly": True}
    )
    adapted["spec"]["volumes"].append(
        {"name": "exchange-in", "hostPath": {"path": str(tar_folder), "type": "Directory"}}
    )
    return adapted


#: Podman 4.3 refuses a Pod whose annotation value is longer than this (Kubernetes allows 256 KiB in all).
PODMAN_ANNOTATION_MAX = 63


def without_long_annotations(pod: Manifest) -> Manifest:
    """A copy of ``pod`` without the annotations podman 4.3 refuses (values over 63 characters).

    Podman applies the label-value limit to annotations, which Kubernetes does not; the
    builder keeps exact label values there (for recovery), which nothing inside reads.
    """
    adapted = copy.deepcopy(pod)
    metadata = adapted["metadata"]
    kept = {
        key: value
        for key, value in (metadata.get("annotations") or {}).items()
        if len(value) <= PODMAN_ANNOTATION_MAX
    }
    if kept:
        metadata["annotations"] = kept
    else:
        metadata.pop("annotations", None)
    return adapted


def with_command(pod: Manifest, container: str, command: list[str]) -> Manifest:
    """A copy of ``pod`` whose ``container`` runs ``command`` (no args); nothing else changes."""
    adapted = copy.deepcopy(pod)
    target = next((c for c in adapted["spec"]["containers"] if c["name"] == container), None)
    if target is None:
        raise PodmanError(f"the Pod has no container {container!r}")
    target["command"] = list(command)
    target.pop("args", None)
    return adapted


def differences(before: Any, after: Any, path: str = "") -> set[str]:
    """The paths (``spec.containers[sandbox].command``) where two manifests differ.

    Lists of objects with distinct ``name`` s are compared by name, so an added volume
    shows as ``spec.volumes[name]`` and does not shift the others; other lists are
    compared whole.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        found: set[str] = set()
        for key in before.keys() | after.keys():
            sub = f"{path}.{key}" if path else str(key)
            if key not in before or key not in after:
                found.add(sub)
            else:
                found |= differences(before[key], after[key], sub)
        return found
    if isinstance(before, list) and isinstance(after, list) and _named(before) and _named(after):
        found = set()
        by_name = {item["name"]: item for item in before}, {item["name"]: item for item in after}
        for name in by_name[0].keys() | by_name[1].keys():
            sub = f"{path}[{name}]"
            if name not in by_name[0] or name not in by_name[1]:
                found.add(sub)
            else:
                found |= differences(by_name[0][name], by_name[1][name], sub)
        return found
    return set() if before == after else {path}


def _named(items: list[Any]) -> bool:
    """Whether each item is an object with a name of its own (volume mounts share names: compared whole)."""
    names = [i.get("name") if isinstance(i, dict) else None for i in items]
    return bool(items) and None not in names and len(set(names)) == len(names)


# --------------------------------------------------------------------------- running


@dataclass
class ContainerRun:
    """One main container of a played Pod, after it exited."""

    exit_code: int
    stdout: str
    stderr: str
    inspect: dict[str, Any]
    seconds: float
    """From the Pod's start to this container's exit, as the harness saw it."""


@dataclass
class PodRun:
    """What one play of a Pod left to look at."""

    name: str
    containers: dict[str, ContainerRun]
    pod_inspect: dict[str, Any]
    play_output: str
    manifest: str
    stage: Path | None = None
    """The host folder that stood in for the stage volume (still there until the test's tmp goes)."""

    def report(self, container: str, prefix: str) -> dict[str, Any]:
        """The JSON after ``prefix`` on ``container``'s last line that starts with it."""
        run = self.containers[container]
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith(prefix)]
        if not lines:
            raise PodmanError(
                f"{container} printed no {prefix!r} line (exit {run.exit_code}): "
                f"{run.stdout[-800:]} {run.stderr[-800:]}"
            )
        report: dict[str, Any] = json.loads(lines[-1][len(prefix) :])
        return report


@dataclass(frozen=True)
class Created:
    """A Pod created and not started: podman's refusal (its error), or the main container's mounts."""

    refusal: str | None
    mounts: list[dict[str, Any]]


@dataclass
class Podman:
    """Plays Pods with ``podman kube play --network none`` and removes everything each play made."""

    executable: str = field(default_factory=lambda: shutil.which("podman") or "podman")
    played: list[str] = field(default_factory=list)

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """One podman command; never raises on its exit status."""
        return subprocess.run(
            [self.executable, *args], capture_output=True, text=True, check=False, timeout=timeout
        )

    def version(self) -> str:
        """podman's version, e.g. ``4.3.1``."""
        return self.run("version", "--format", "{{.Client.Version}}").stdout.strip()

    def play(
        self,
        documents: list[Manifest],
        folder: Path,
        *,
        stage: Path | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> PodRun:
        """Play ``documents`` with no network, wait for every main container, and remove the Pod.

        ``stage`` is a host folder the Pod mounts (see :func:`bind_sub_paths`): after
        the Pod is created and before it starts, it is handed to the Pod's user as
        the Pod's user namespace maps it, as an emptyDir belongs to the Pod.
        """
        pod = pod_of(documents)
        name = pod["metadata"]["name"]
        manifest = folder / f"{name}.yaml"
        text = yaml.safe_dump_all(documents, sort_keys=False)
        manifest.write_text(text)
        volumes = [v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v]
        # Podman 4.3 makes an emptyDir a named volume called after it: one that exists
        # already would be shared with this Pod, so it must not.
        existing = [v for v in volumes if self.run("volume", "exists", v).returncode == 0]
        if existing:
            raise PodmanError(f"podman volumes {existing} exist; an emptyDir would reuse them")
        self.played.append(name)
        try:
            created = self.run("kube", "play", "--start=false", "--network", "none", str(manifest))
            if created.returncode != 0:
                raise PodmanError(f"podman kube play refused the Pod: {created.stderr.strip()}")
            if stage is not None:
                self._hand_over(stage, pod)
            started_at = time.monotonic()
            started = self.run("pod", "start", name, timeout=timeout)
            if started.returncode != 0:
                raise PodmanError(f"the Pod {name} did not start: {started.stderr.strip()}")
            containers = {
                c["name"]: self._finish(f"{name}-{c['name']}", started_at, timeout)
                for c in pod["spec"]["containers"]
            }
            pod_inspect = json.loads(self.run("pod", "inspect", name).stdout or "{}")
            return PodRun(
                name=name,
                containers=containers,
                pod_inspect=pod_inspect,
                play_output=created.stdout + created.stderr + started.stdout + started.stderr,
                manifest=text,
                stage=stage,
            )
        finally:
            self.remove(name, manifest, volumes)

    def create(self, documents: list[Manifest], folder: Path) -> Created:
        """Create the Pod without starting it: podman's refusal, or its first main container's mounts; then remove it."""
        pod = pod_of(documents)
        name = pod["metadata"]["name"]
        manifest = folder / f"{name}-created.yaml"
        manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        volumes = [v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v]
        existing = [v for v in volumes if self.run("volume", "exists", v).returncode == 0]
        if existing:
            raise PodmanError(f"podman volumes {existing} exist; an emptyDir would reuse them")
        self.played.append(name)
        try:
            created = self.run("kube", "play", "--start=false", "--network", "none", str(manifest))
            if created.returncode != 0:
                return Created(refusal=created.stderr.strip(), mounts=[])
            main = pod["spec"]["containers"][0]["name"]
            inspect = json.loads(self.run("container", "inspect", f"{name}-{main}").stdout)
            return Created(refusal=None, mounts=inspect[0]["Mounts"])
        finally:
            self.remove(name, manifest, volumes)

    def _hand_over(self, stage: Path, pod: Manifest) -> None:
        """Give ``stage`` to the Pod's user: runAsUser/runAsGroup, shifted by the Pod's user namespace."""
        spec = pod["spec"]
        context = {
            **spec.get("securityContext", {}),
            **_containers(pod)[0].get("securityContext", {}),
        }
        uid, gid = int(context["runAsUser"]), int(context["runAsGroup"])
        first = _containers(pod)[0]["name"]
        inspect = json.loads(
            self.run("container", "inspect", f"{pod['metadata']['name']}-{first}").stdout
        )
        mappings = inspect[0]["HostConfig"].get("IDMappings") or {}
        host_uid, host_gid = (
            _shift(uid, mappings.get("UidMap") or []),
            _shift(gid, mappings.get("GidMap") or []),
        )
        for parent, dirs, files in os.walk(stage):
            for entry in [Path(parent), *(Path(parent, n) for n in [*dirs, *files])]:
                os.chown(entry, host_uid, host_gid, follow_symlinks=False)

    def _finish(self, container: str, started_at: float, timeout: float) -> ContainerRun:
        waited = self.run("wait", container, timeout=timeout)
        seconds = time.monotonic() - started_at
        if waited.returncode != 0:
            raise PodmanError(f"podman wait {container}: {waited.stderr.strip()}")
        logs_out = self.run("logs", container)
        inspect = json.loads(self.run("container", "inspect", container).stdout)[0]
        return ContainerRun(
            exit_code=int(waited.stdout.strip()),
            stdout=logs_out.stdout,
            stderr=logs_out.stderr,
            inspect=inspect,
            seconds=seconds,
        )

    def remove(self, name: str, manifest: Path, volumes: list[str]) -> None:
        """Remove the Pod and the named volumes its emptyDirs became; PodmanError if the Pod stays."""
        self.run("kube", "down", str(manifest))
        # Right after an exit `pod rm` can meet a busy mount ("device or resource busy"): retry.
        for _ in range(10):
            if self.run("pod", "exists", name).returncode != 0:
                break
            self.run("pod", "rm", "--force", "--ignore", name)
            time.sleep(0.3)
        for volume in volumes:
            self.run("volume", "rm", "--force", volume)
        left = [v for v in volumes if self.run("volume", "exists", v).returncode == 0]
        if self.run("pod", "exists", name).returncode == 0 or left:
            raise PodmanError(f"could not remove the Pod {name} or its volumes {left}")

    def leftovers(self) -> list[str]:
        """The Pods this harness played that still exist."""
        return [name for name in self.played if self.run("pod", "exists", name).returncode == 0]


def _shift(container_id: int, mapping: list[str]) -> int:
    """The host id of ``container_id`` under podman's ``"inside:host:size"`` mapping (itself without one)."""
    for entry in mapping:
        inside, host, size = (int(part) for part in entry.split(":"))
        if inside <= container_id < inside + size:
            return host + container_id - inside
    if mapping:
        raise PodmanError(f"the id {container_id} is not mapped by {mapping}")
    return container_id


def tar_kinds(tar_path: Path) -> dict[str, str]:
    """Each member of a tar by name: ``"dir"`` or ``"file"``."""
    with tarfile.open(tar_path) as tar:
        return {m.name.rstrip("/"): "dir" if m.isdir() else "file" for m in tar.getmembers()}
