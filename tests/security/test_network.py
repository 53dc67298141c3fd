"""Network attacks from inside a real sandbox: reach out, resolve names, open raw sockets, be reached.

The host side listens on every address of this machine (a port the test opened)
as the stand-in for the controller's API; the sandbox tries it through the
engine's bridge gateway and the host's own addresses. Outbound attempts to the
outside are route lookups (a UDP connect sends nothing); TCP, ping and DNS to the
outside are tried only when the sandbox has no route at all (so they cannot send),
and are reported as ``route-exists-not-tried`` otherwise: no packet ever leaves
the machine, even when a weakened sandbox has a network.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tests.security.conftest import LISTENING_LINE, Arena, ProbeRun, session_containers

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.security, pytest.mark.docker]


@dataclass
class HostListener:
    """A TCP listener on all host addresses, counting who connected."""

    port: int
    accepted: list[str] = field(default_factory=list)


@dataclass
class InboundAttempt:
    """What the host saw and tried while the sandbox listened on 8080."""

    inspected: dict[str, Any] = field(default_factory=dict)
    connect: str = "not tried"


def host_addresses(arena: Arena) -> list[str]:
    """The engine's bridge gateway and this machine's own IPv4 addresses (never loopback)."""
    found: set[str] = set()
    with contextlib.suppress(Exception):
        for config in arena.client.networks.get("bridge").attrs["IPAM"]["Config"]:
            if config.get("Gateway"):
                found.add(config["Gateway"])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
        ).stdout
        found |= {line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line}
    found.discard("127.0.0.1")
    return sorted(found)


@pytest.fixture(scope="module")
def listener() -> Iterator[HostListener]:
    """The stand-in controller port: listening on 0.0.0.0 (the test's own socket)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))  # noqa: S104 - reachable from a bridge is exactly what is tested
    server.listen(8)
    server.settimeout(0.2)
    found = HostListener(port=server.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            found.accepted.append(peer[0])
            conn.close()

    thread = threading.Thread(target=serve, name="host-listener", daemon=True)
    thread.start()
    yield found
    stop.set()
    thread.join(2)
    server.close()


@pytest.fixture(scope="module")
def network(arena: Arena, listener: HostListener) -> tuple[ProbeRun, InboundAttempt, list[str]]:
    """The network probe, once; while it listens inside, the host inspects it and tries to connect."""
    inbound = InboundAttempt()
    addresses = host_addresses(arena)
    seen = {"text": ""}

    def on_log(text: str) -> None:
        seen["text"] += text
        if LISTENING_LINE not in seen["text"] or inbound.inspected:
            return
        ids = session_containers(arena.client)
        running = [i for i in ids if arena.client.api.inspect_container(i)["State"]["Running"]]
        inbound.inspected = arena.client.api.inspect_container(running[0])
        ip = inbound.inspected["NetworkSettings"].get("IPAddress") or ""
        if ip:
            try:
                socket.create_connection((ip, 8080), timeout=2).close()
                inbound.connect = "ok"
            except OSError as exc:
                inbound.connect = type(exc).__name__
        else:
            inbound.connect = "no address to connect to"

    run = arena.probe("network", str(listener.port), *addresses, on_log=on_log)
    return run, inbound, addresses


@pytest.mark.invariant(3)
def test_only_a_loopback_interface_and_no_route(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: the sandbox has the lo interface only and an empty routing table."""
    report = network[0].report
    assert report["interfaces"] == ["lo"]
    assert report["routes"] == []


@pytest.mark.invariant(3)
def test_route_lookups_to_the_internet_and_the_metadata_address_fail(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: UDP to a public address, 169.254.169.254 and an IPv6 address finds no route."""
    report = network[0].report
    assert report["udp_internet"] == "ENETUNREACH"
    assert report["udp_metadata"] == "ENETUNREACH"
    assert report["udp6_internet"] in ("ENETUNREACH", "EADDRNOTAVAIL", "EAFNOSUPPORT")


@pytest.mark.invariant(3)
def test_tcp_to_the_internet_and_the_metadata_address_fails(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: TCP to an outside address and to 169.254.169.254 fails at once (no route)."""
    report = network[0].report
    assert report["tcp_internet"] == "ENETUNREACH"
    assert report["tcp_metadata"] == "ENETUNREACH"


@pytest.mark.invariant(3)
def test_host_and_controller_port_are_unreachable(
    network: tuple[ProbeRun, InboundAttempt, list[str]], listener: HostListener
) -> None:
    """Invariant 3: the host's listener is unreachable through the bridge gateway and every host address."""
    run, _inbound, addresses = network
    assert addresses, "no host address to attack"
    assert run.report["tcp_host"] == dict.fromkeys(addresses, "ENETUNREACH")
    # 127.0.0.1 inside is the sandbox's own loopback: nothing of the host listens there.
    assert run.report["tcp_own_loopback_controller_port"] == "ECONNREFUSED"
    assert listener.accepted == []


@pytest.mark.invariant(3)
def test_dns_lookups_and_dns_exfiltration_fail(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: neither a public name nor a data-carrying name resolves."""
    report = network[0].report
    assert report["dns_public_name"] == "gaierror"
    assert report["dns_exfiltration"] == "gaierror"


@pytest.mark.invariant(3)
def test_raw_packet_and_icmp_sockets_are_refused(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: AF_PACKET and raw ICMP sockets need capabilities the sandbox lacks; a ping goes nowhere."""
    report = network[0].report
    assert report["raw_packet"] == "EPERM"
    assert report["raw_icmp"] == "EPERM"
    # The engine allows unprivileged ICMP echo sockets (ping_group_range); with no route they send nothing.
    assert report["ping"] in ("ENETUNREACH", "EACCES", "EPERM")


@pytest.mark.invariant(3)
def test_listener_inside_cannot_be_reached(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: a server inside gets no address, no port binding, and no connection."""
    run, inbound, _addresses = network
    assert run.report["inbound"] == {"listen": "ok", "accepted": None}
    inspected = inbound.inspected
    assert inspected, "the host never saw the sandbox listening"
    assert inspected["Config"].get("NetworkDisabled") is True
    assert not inspected["NetworkSettings"].get("IPAddress")
    assert not inspected["NetworkSettings"].get("Networks")
    assert not inspected["NetworkSettings"].get("Ports")
    assert not inspected["HostConfig"].get("PortBindings")
    assert inspected["HostConfig"].get("PublishAllPorts") is False
    assert inbound.connect == "no address to connect to"


@pytest.mark.invariant(3)
def test_no_engine_socket_and_no_docker_host_inside(
    network: tuple[ProbeRun, InboundAttempt, list[str]],
) -> None:
    """Invariant 3: no Unix socket at all (docker.sock above all) and no DOCKER_HOST in a probe sandbox."""
    report = network[0].report
    assert report["unix_sockets"] == []
    assert report["docker_host_env"] is None
