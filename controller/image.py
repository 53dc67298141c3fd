"""Build the sandbox image with no registry: local base image, host-made wheelhouse, classic builder.

``build_sandbox_image`` makes ``taskbox-sandbox:latest`` from sandbox-image/Dockerfile.
When the base image (``python:3.12-slim``) cannot be pulled it makes one from
Debian packages with ``mmdebstrap`` and ``docker import``, with CPython 3.12
copied from this machine's pyenv build when that build runs there, else
Debian's own python3. Python packages come from a wheelhouse downloaded on
the host for the image's Python. ``build_repo_image`` adds a thin layer with
the dependencies a repository declares; ``image_for_repo`` finds it for a run.
Everything slow is cached under ``var/cache/image`` or as a tagged image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict

from controller.errors import ImageBuildError
from controller.gitrepo import MODE_EXECUTABLE, MODE_FILE, list_tree, read_blobs
from controller.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

SANDBOX_IMAGE = "taskbox-sandbox:latest"
CONTROLLER_IMAGE = "taskbox-controller:latest"
DEFAULT_BASE_IMAGE = "python:3.12-slim"
LOCAL_BASE_REPOSITORY = "taskbox-base"
DEBIAN_SUITE = "bookworm"
IMAGE_DIR = PROJECT_ROOT / "sandbox-image"
CACHE_DIR = PROJECT_ROOT / "var" / "cache" / "image"
#: A CPython 3.12 built on this machine (pyenv); copied into the local base when it runs there.
PYENV_PYTHON = Path(os.environ.get("TASKBOX_IMAGE_PYTHON", "/root/.pyenv/versions/3.12.1"))

LABEL_BASE_RECIPE = "org.taskbox.base-recipe"
LABEL_BASE_IMAGE = "org.taskbox.base-image"
LABEL_BASE_IMAGE_ID = "org.taskbox.base-image-id"
LABEL_PYTHON = "org.taskbox.python"
LABEL_REQUIREMENTS = "org.taskbox.requirements-sha256"
LABEL_PROJECT = "org.taskbox.project-sha256"
LABEL_REPO_DEPS = "org.taskbox.repo-deps-sha256"

#: Debian packages of the local base. Shared libraries are the ones the pyenv build's
#: extension modules link against (found with ldd; tkinter and nis are left out).
BASE_PACKAGES = (
    "ca-certificates",
    "git",
    "netbase",
    "tzdata",
    "libbz2-1.0",
    "libffi8",
    "liblzma5",
    "libncursesw6",
    "libreadline8",
    "libsqlite3-0",
    "libssl3",
    "libuuid1",
    "zlib1g",
)
DEBIAN_PYTHON_PACKAGES = ("python3", "python3-venv")

#: Parts of the pyenv tree a sandbox never needs (tests, IDLE, Tk, the static library).
_PYTHON_EXCLUDES = (
    "lib/python3.12/test",
    "lib/python3.12/idlelib",
    "lib/python3.12/tkinter",
    "lib/python3.12/turtledemo",
    "lib/python3.12/site-packages/*",
    "lib/python3.12/lib-dynload/_tkinter*",
    "lib/python3.12/lib-dynload/nis.*",
    "lib/python3.12/config-3.12-*/*.a",
    "*.opt-1.pyc",
    "*.opt-2.pyc",
)

#: Files whose declarations become a repository's dependency layer.
REQUIREMENTS_FILES = ("requirements.txt", "requirements-dev.txt", "requirements-test.txt")
#: Extras / dependency groups of pyproject.toml that hold what the tests need.
TEST_GROUPS = ("test", "tests", "testing", "dev")


class ImageEngine(Protocol):
    """What image building needs from the engine (``controller.sandbox.docker.DockerImages``)."""

    def image_id(self, ref: str) -> str | None: ...
    def image_labels(self, ref: str) -> dict[str, str]: ...
    def try_pull(self, ref: str) -> bool: ...
    def import_rootfs(self, tarball: Path, ref: str, changes: list[str]) -> str: ...
    def build(
        self,
        context: Path,
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        network: bool = False,
        on_output: Callable[[str], None] | None = None,
    ) -> str: ...
    def run_probe(self, image: str, command: list[str], *, timeout_seconds: int = 60) -> str: ...


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PythonTarget(_Model):
    """The Python of an image, as ``pip download`` must see it."""

    version: str
    """``major.minor``, e.g. ``3.12``."""
    machine: str
    """``platform.machine()``, e.g. ``x86_64``."""
    glibc: str
    """glibc version, e.g. ``2.36``; bounds the manylinux tags."""

    @property
    def abi(self) -> str:
        """The CPython ABI tag, e.g. ``cp312``."""
        return "cp" + self.version.replace(".", "")

    def platforms(self) -> list[str]:
        """Every manylinux tag this image can load, newest first."""
        major, minor = (int(p) for p in self.glibc.split(".")[:2])
        if major != 2:  # noqa: PLR2004 - glibc 2.x is the only series manylinux knows
            raise ImageBuildError(f"unexpected glibc version {self.glibc}")
        tags = [f"manylinux_2_{m}_{self.machine}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{self.machine}" for m, name in legacy.items() if m <= minor]
        return tags

    def key(self) -> str:
        """Stable text for cache keys."""
        return f"cp{self.version}-{self.machine}-glibc{self.glibc}"


class ImageBuildResult(_Model):
    """What a build made; the CLI prints it and runs record ``image_id``."""

    tag: str
    image_id: str
    base_image: str
    base_image_id: str
    python: str
    seconds: float
    cached: bool = False
    """Nothing was built: an image for exactly these inputs existed already."""


class RepoDependencies(_Model):
    """The dependencies a repository declares at one commit."""

    requirements: list[str]
    """Normalised PEP 508 requirement strings, sorted and unique."""
    sources: list[str]
    """The files they were read from."""
    ignored: list[str]
    """Declarations left out, each ``file: text — reason``."""

    def digest(self) -> str:
        """sha256 over the requirement list."""
        return hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()


# --- small helpers --------------------------------------------------------------------------


def _sha256_files(root: Path, paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _run(cmd: list[str], *, what: str, env: Mapping[str, str] | None = None) -> str:
    """Run a build step; ImageBuildError with the tail of its output when it fails."""
    log.debug("running %s", " ".join(cmd))
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ImageBuildError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _say(on_output: Callable[[str], None] | None, text: str) -> None:
    log.info("%s", text)
    if on_output is not None:
        on_output(text + "\n")


# --- the image's Python ---------------------------------------------------------------------

_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
    "'machine': platform.machine(), 'glibc': platform.libc_ver()[1]}))"
)
#: Modules whose C extensions need the base's shared libraries; a base that cannot import
#: them is refused.
_PROBE_IMPORTS = "import ssl, sqlite3, ctypes, uuid, zlib, bz2, lzma, hashlib, decimal, venv"


def probe_python(engine: ImageEngine, image: str, cache_dir: Path = CACHE_DIR) -> PythonTarget:
    """Ask ``image`` for its Python version, machine and glibc (cached by image id)."""
    image_id = engine.image_id(image)
    cache = cache_dir / "probes.json"
    known: dict[str, Any] = {}
    if cache.is_file():
        known = json.loads(cache.read_text())
    if image_id is not None and image_id in known:
        return PythonTarget.model_validate(known[image_id])
    out = engine.run_probe(image, ["python3", "-c", f"{_PROBE_IMPORTS}; {_PROBE}"])
    target = PythonTarget.model_validate_json(out.strip().splitlines()[-1])
    if image_id is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        known[image_id] = target.model_dump()
        cache.write_text(json.dumps(known, indent=2, sort_keys=True))
    return target


# --- the local base image -------------------------------------------------------------------


def pyenv_python_runs(root: Path = PYENV_PYTHON) -> str | None:
    """Why the pyenv build cannot be used, or None when it can.

    It is relocatable when ``ldd`` finds every library: libpython sits in its own
    ``lib`` (copied to /usr/local/lib, found through ldconfig) and the rest are
    Debian libraries the base installs.
    """
    exe = root / "bin" / "python3.12"
    if not exe.is_file():
        return f"{exe} does not exist"
    if shutil.which("ldd") is None:
        return "ldd is not available to check its libraries"
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=False).stdout
    if "not found" in out:
        return f"{exe} misses libraries: {out.strip()}"
    return None


def _ensure_mmdebstrap(on_output: Callable[[str], None] | None) -> None:
    if shutil.which("mmdebstrap"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageBuildError(
            "mmdebstrap is needed to make a base image offline: apt-get install mmdebstrap"
        )
    _say(on_output, "installing mmdebstrap (apt-get)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], what="apt-get update", env=env)
    _run(
        ["apt-get", "install", "-y", "--no-install-recommends", "mmdebstrap"],
        what="apt-get install mmdebstrap",
        env=env,
    )


def _python_tarball(root: Path, workdir: Path) -> Path:
    """The pyenv tree as /usr/local content: trimmed, shared objects stripped of debug info."""
    staged = workdir / "python"
    staged.mkdir()
    excludes = [f"--exclude={pattern}" for pattern in _PYTHON_EXCLUDES]
    members = ["bin/python3.12", "bin/python3", "bin/python", "lib"]
    pack = subprocess.Popen(
        ["tar", "-C", str(root), "-cf", "-", *excludes, *members], stdout=subprocess.PIPE
    )
    unpack = subprocess.run(
        ["tar", "-C", str(staged), "-xf", "-"], stdin=pack.stdout, capture_output=True, check=False
    )
    if pack.stdout is not None:
        pack.stdout.close()
    if pack.wait() != 0 or unpack.returncode != 0:
        raise ImageBuildError(f"copying the Python of {root} failed: {unpack.stderr.decode()}")
    if shutil.which("strip"):
        shared = [
            *staged.glob("lib/libpython*.so.*"),
            *staged.glob("lib/python3.12/lib-dynload/*.so"),
        ]
        _run(["strip", "--strip-unneeded", *map(str, shared)], what="strip")
    tarball = workdir / "python.tar"
    _run(
        ["tar", "-C", str(staged), "--owner=0", "--group=0", "-cf", str(tarball), "."],
        what="packing the Python",
    )
    return tarball


def _base_recipe(python: str) -> str:
    packages = BASE_PACKAGES + (DEBIAN_PYTHON_PACKAGES if python == "debian" else ())
    text = json.dumps(
        {"suite": DEBIAN_SUITE, "packages": packages, "python": python, "version": 1},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_local_base(
    engine: ImageEngine,
    *,
    python: str | None = None,
    mirror: str | None = None,
    on_output: Callable[[str], None] | None = None,
) -> str:
    """Make (or reuse) ``taskbox-base:bookworm-py3.X`` from Debian packages; returns its tag.

    ``python`` is ``"pyenv"`` (CPython 3.12 from PYENV_PYTHON) or ``"debian"``
    (Debian's python3, 3.11); by default pyenv when it runs here. A pyenv base that
    cannot import its own C extensions is dropped for the Debian one.
    """
    if python is None:
        why_not = pyenv_python_runs()
        python = "pyenv" if why_not is None else "debian"
        if why_not is not None:
            _say(on_output, f"base: using Debian's python3, not pyenv's 3.12: {why_not}")
    tag = f"{LOCAL_BASE_REPOSITORY}:{DEBIAN_SUITE}-py{'3.12' if python == 'pyenv' else '3.11'}"
    recipe = _base_recipe(python)
    if engine.image_labels(tag).get(LABEL_BASE_RECIPE) == recipe:
        _say(on_output, f"base: {tag} (cached)")
        return tag
    _ensure_mmdebstrap(on_output)
    started = time.monotonic()
    _say(on_output, f"base: making {tag} with mmdebstrap (Debian {DEBIAN_SUITE}, minbase)")
    with tempfile.TemporaryDirectory(prefix="taskbox-base-") as tmp:
        workdir = Path(tmp)
        packages = list(BASE_PACKAGES)
        hooks: list[str] = []
        if python == "pyenv":
            hooks += [f"tar-in {_python_tarball(PYENV_PYTHON, workdir)} /usr/local"]
        else:
            packages += DEBIAN_PYTHON_PACKAGES
            hooks += ['ln -s /usr/bin/python3 "$1/usr/local/bin/python"']
        hooks += ['chroot "$1" ldconfig']
        rootfs = workdir / "rootfs.tar"
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            '--aptopt=Acquire::Languages "none"',
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            *(f"--customize-hook={hook}" for hook in hooks),
            DEBIAN_SUITE,
            str(rootfs),
            *([mirror] if mirror else []),
        ]
        _run(cmd, what="mmdebstrap")
        engine.import_rootfs(
            rootfs,
            tag,
            [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                f"LABEL {LABEL_BASE_RECIPE}={recipe}",
                'CMD ["python3"]',
            ],
        )
    try:
        probe_python(engine, tag)
    except ImageBuildError as exc:
        if python == "pyenv":
            _say(on_output, f"base: the pyenv Python does not run in {tag} ({exc}); using Debian's")
            return make_local_base(engine, python="debian", mirror=mirror, on_output=on_output)
        raise
    _say(on_output, f"base: {tag} made in {time.monotonic() - started:.1f} s")
    return tag


def resolve_base_image(
    engine: ImageEngine,
    base_image: str | None,
    *,
    on_output: Callable[[str], None] | None = None,
) -> tuple[str, bool]:
    """The base image to build FROM, and whether its build steps need the network.

    An explicit ``base_image`` must exist or be pullable (a ``taskbox-base:`` tag is
    made on demand). By default ``python:3.12-slim`` is used when present or
    pullable, else a local base is made from Debian packages.
    """
    if base_image is not None and base_image.startswith(f"{LOCAL_BASE_REPOSITORY}:"):
        python = "debian" if base_image.endswith("py3.11") else "pyenv"
        return make_local_base(engine, python=python, on_output=on_output), False
    wanted = base_image or DEFAULT_BASE_IMAGE
    if engine.image_id(wanted) is not None or engine.try_pull(wanted):
        _say(on_output, f"base: {wanted}")
        return wanted, True
    if base_image is not None:
        raise ImageBuildError(f"base image {base_image!r} is not here and cannot be pulled")
    _say(on_output, f"base: {wanted} cannot be pulled; making a local base image")
    return make_local_base(engine, on_output=on_output), False


# --- wheels ---------------------------------------------------------------------------------


def download_wheelhouse(
    requirements: str,
    target: PythonTarget,
    cache_dir: Path = CACHE_DIR,
    *,
    on_output: Callable[[str], None] | None = None,
) -> Path:
    """Binary wheels for ``requirements`` (requirements-file text) and ``target``; cached.

    ``pip download`` runs on the host with the image's Python version, ABI and
    manylinux tags, so nothing is downloaded inside a build.
    """
    key = hashlib.sha256(f"{target.key()}\n{requirements}".encode()).hexdigest()[:16]
    house = cache_dir / "wheelhouse" / key
    marker = house / ".complete"
    if marker.is_file():
        _say(on_output, f"wheelhouse: {house} (cached)")
        return house
    if house.exists():
        shutil.rmtree(house)
    house.mkdir(parents=True)
    (house / "requirements.txt").write_text(requirements)
    started = time.monotonic()
    platforms = [arg for tag in target.platforms() for arg in ("--platform", tag)]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--python-version",
            target.version,
            "--implementation",
            "cp",
            "--abi",
            target.abi,
            *platforms,
            "--dest",
            str(house),
            "--requirement",
            str(house / "requirements.txt"),
        ],
        what="pip download (Taskbox installs binary wheels only)",
    )
    marker.write_text(key)
    count = len(list(house.glob("*.whl")))
    _say(on_output, f"wheelhouse: {count} wheels in {time.monotonic() - started:.1f} s")
    return house


def _project_sources(project_root: Path) -> list[Path]:
    files = [project_root / "pyproject.toml"]
    readme = project_root / "README.md"
    if readme.is_file():
        files.append(readme)
    # The controller is in the wheel (the controller image installs it too); the sandbox
    # image's Dockerfile keeps only the runner and the wire package.
    packages = (
        project_root / "controller",
        project_root / "taskbox_wire",
        project_root / "sandbox-image" / "runner",
    )
    for package in packages:
        files += [
            p
            for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    return files


def build_project_wheel(project_root: Path = PROJECT_ROOT, cache_dir: Path = CACHE_DIR) -> Path:
    """A wheel of Taskbox itself (``pip wheel --no-deps``), built from a copy; cached by content."""
    sources = _project_sources(project_root)
    key = _sha256_files(project_root, sources)[:16]
    out = cache_dir / "project" / key
    existing = sorted(out.glob("*.whl"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory(prefix="taskbox-wheel-") as tmp:
        src = Path(tmp, "src")
        for path in sources:
            dest = src / path.relative_to(project_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        if not (src / "README.md").exists():
            (src / "README.md").write_text("Taskbox\n")  # pyproject names it; the wheel needs one
        built = Path(tmp, "dist")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--disable-pip-version-check",
                "--wheel-dir",
                str(built),
                str(src),
            ],
            what="pip wheel of the Taskbox project",
            # A fixed date makes the same sources give the same wheel bytes (and build cache hits).
            env={"SOURCE_DATE_EPOCH": "315532800"},
        )
        wheel = next(built.glob("taskbox-*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheel.name
        shutil.move(wheel, final)
    return final


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        dest.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dest)


# --- the sandbox image ----------------------------------------------------------------------


def build_sandbox_image(
    engine: ImageEngine,
    *,
    base_image: str | None = None,
    tag: str = SANDBOX_IMAGE,
    project_root: Path = PROJECT_ROOT,
    cache_dir: Path = CACHE_DIR,
    on_output: Callable[[str], None] | None = None,
) -> ImageBuildResult:
    """Build the sandbox image from sandbox-image/Dockerfile, offline when it must be."""
    image_dir = project_root / "sandbox-image"
    return _build_with_wheelhouse(
        engine,
        dockerfile=image_dir / "Dockerfile",
        requirements=(image_dir / "requirements.txt").read_text(),
        extra_dirs={},
        base_image=base_image,
        tag=tag,
        project_root=project_root,
        cache_dir=cache_dir,
        on_output=on_output,
    )


def controller_requirements(project_root: Path = PROJECT_ROOT) -> str:
    """The controller's runtime dependencies, as requirements-file text, from pyproject.toml."""
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    return "".join(f"{dep}\n" for dep in project["dependencies"])


def build_controller_image(
    engine: ImageEngine,
    *,
    base_image: str | None = None,
    tag: str = CONTROLLER_IMAGE,
    project_root: Path = PROJECT_ROOT,
    cache_dir: Path = CACHE_DIR,
    on_output: Callable[[str], None] | None = None,
) -> ImageBuildResult:
    """Build the controller image (the root Dockerfile) for compose, offline when it must be."""
    return _build_with_wheelhouse(
        engine,
        dockerfile=project_root / "Dockerfile",
        requirements=controller_requirements(project_root),
        extra_dirs={"policies": project_root / "policies"},
        base_image=base_image,
        tag=tag,
        project_root=project_root,
        cache_dir=cache_dir,
        on_output=on_output,
    )


def _build_with_wheelhouse(
    engine: ImageEngine,
    *,
    dockerfile: Path,
    requirements: str,
    extra_dirs: Mapping[str, Path],
    base_image: str | None,
    tag: str,
    project_root: Path,
    cache_dir: Path,
    on_output: Callable[[str], None] | None,
) -> ImageBuildResult:
    """Build ``dockerfile`` from a context of requirements, a host-made wheelhouse and Taskbox's wheel."""
    started = time.monotonic()
    base, network = resolve_base_image(engine, base_image, on_output=on_output)
    base_id = engine.image_id(base) or ""
    target = probe_python(engine, base, cache_dir)
    house = download_wheelhouse(requirements, target, cache_dir, on_output=on_output)
    wheel = build_project_wheel(project_root, cache_dir)
    with tempfile.TemporaryDirectory(prefix="taskbox-context-") as tmp:
        context = Path(tmp)
        shutil.copy2(dockerfile, context / "Dockerfile")
        (context / "requirements.txt").write_text(requirements)
        (context / "wheels").mkdir()
        for whl in house.glob("*.whl"):
            _link_or_copy(whl, context / "wheels" / whl.name)
        (context / "dist").mkdir()
        shutil.copy2(wheel, context / "dist" / wheel.name)
        for name, folder in extra_dirs.items():
            shutil.copytree(folder, context / name)
        _say(on_output, f"docker build: {tag} FROM {base}")
        image_id = engine.build(
            context,
            tag=tag,
            buildargs={"BASE_IMAGE": base},
            labels={
                LABEL_BASE_IMAGE: base,
                LABEL_BASE_IMAGE_ID: base_id,
                LABEL_PYTHON: target.version,
                LABEL_REQUIREMENTS: hashlib.sha256(requirements.encode()).hexdigest(),
                LABEL_PROJECT: wheel.parent.name,
            },
            network=network,
            on_output=on_output,
        )
    return ImageBuildResult(
        tag=tag,
        image_id=image_id,
        base_image=base,
        base_image_id=base_id,
        python=target.version,
        seconds=round(time.monotonic() - started, 2),
    )


# --- a repository's dependencies ------------------------------------------------------------


def _requirement(text: str, source: str, ignored: list[str]) -> str | None:
    """A normalised requirement, or None (recorded in ``ignored``) when it is not a plain one."""
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        ignored.append(f"{source}: {text} — not a valid requirement ({exc})")
        return None
    if req.url:
        # A URL would make the host download from wherever the repository says.
        ignored.append(f"{source}: {text} — direct URL references are not installed")
        return None
    return str(req)


def _from_requirements_file(text: str, source: str, ignored: list[str]) -> list[str]:
    found = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            # Options (-r, -e, --index-url, ...) could point pip anywhere; never passed on.
            ignored.append(f"{source}: {line} — pip options are not followed")
            continue
        req = _requirement(line, source, ignored)
        if req is not None:
            found.append(req)
    return found


def _from_pyproject(text: str, ignored: list[str]) -> list[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        ignored.append(f"pyproject.toml — not valid TOML ({exc})")
        return []
    project = data.get("project") or {}
    declared: list[tuple[str, Any]] = [("dependencies", project.get("dependencies") or [])]
    extras = project.get("optional-dependencies") or {}
    groups = data.get("dependency-groups") or {}
    for name in TEST_GROUPS:
        declared.append((f"optional-dependencies.{name}", extras.get(name) or []))
        declared.append((f"dependency-groups.{name}", groups.get(name) or []))
    found = []
    for where, items in declared:
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, str):
                ignored.append(f"pyproject.toml {where}: {item!r} — only plain requirements")
                continue
            req = _requirement(item, f"pyproject.toml {where}", ignored)
            if req is not None:
                found.append(req)
    return found


def repo_dependencies(repo: Path, commit: str) -> RepoDependencies:
    """What the repository declares at ``commit`` (read with git, never from the checkout).

    pyproject.toml: ``[project].dependencies`` and the test/dev extras and dependency
    groups; requirements*.txt: plain requirement lines. URLs and pip options are
    left out, and said so.
    """
    tree = list_tree(repo, commit)
    names = ["pyproject.toml", *REQUIREMENTS_FILES]
    present = {
        name: tree[name].oid
        for name in names
        if name in tree and tree[name].mode in (MODE_FILE, MODE_EXECUTABLE)
    }
    blobs = read_blobs(repo, list(present.values()))
    requirements: list[str] = []
    ignored: list[str] = []
    for name, oid in present.items():
        text = blobs[oid].decode("utf-8", "replace")
        if name == "pyproject.toml":
            requirements += _from_pyproject(text, ignored)
        else:
            requirements += _from_requirements_file(text, name, ignored)
    return RepoDependencies(
        requirements=sorted(set(requirements)), sources=sorted(present), ignored=ignored
    )


def deps_tag(
    deps: RepoDependencies, sandbox_image_id: str, sandbox_image: str = SANDBOX_IMAGE
) -> str:
    """``taskbox-sandbox:deps-<sha12>``: one tag per (declarations, sandbox image) pair."""
    repository = sandbox_image.rpartition(":")[0] or sandbox_image
    digest = hashlib.sha256(f"{sandbox_image_id}\n{deps.digest()}".encode()).hexdigest()
    return f"{repository}:deps-{digest[:12]}"


def build_repo_image(
    engine: ImageEngine,
    repo: Path,
    commit: str,
    *,
    sandbox_image: str = SANDBOX_IMAGE,
    project_root: Path = PROJECT_ROOT,
    cache_dir: Path = CACHE_DIR,
    on_output: Callable[[str], None] | None = None,
) -> tuple[ImageBuildResult | None, RepoDependencies]:
    """The sandbox image plus ``repo``'s declared dependencies at ``commit``.

    Returns (None, deps) when the repository declares nothing. Skips the build when
    the tag for these declarations on this sandbox image exists.
    """
    started = time.monotonic()
    deps = repo_dependencies(repo, commit)
    for note in deps.ignored:
        _say(on_output, f"deps: ignored {note}")
    if not deps.requirements:
        return None, deps
    sandbox_id = engine.image_id(sandbox_image)
    if sandbox_id is None:
        raise ImageBuildError(f"{sandbox_image} does not exist: run `taskbox image build` first")
    target = probe_python(engine, sandbox_image, cache_dir)
    tag = deps_tag(deps, sandbox_id, sandbox_image)
    existing = engine.image_id(tag)
    if existing is not None:
        _say(on_output, f"deps: {tag} (cached)")
        return ImageBuildResult(
            tag=tag,
            image_id=existing,
            base_image=sandbox_image,
            base_image_id=sandbox_id,
            python=target.version,
            seconds=round(time.monotonic() - started, 2),
            cached=True,
        ), deps
    requirements = "\n".join(deps.requirements) + "\n"
    house = download_wheelhouse(requirements, target, cache_dir, on_output=on_output)
    with tempfile.TemporaryDirectory(prefix="taskbox-deps-") as tmp:
        context = Path(tmp)
        shutil.copy2(project_root / "sandbox-image" / "Dockerfile.deps", context / "Dockerfile")
        (context / "wheels").mkdir()
        for whl in house.glob("*.whl"):
            _link_or_copy(whl, context / "wheels" / whl.name)
        (context / "wheels" / "requirements.txt").write_text(requirements)
        _say(
            on_output,
            f"docker build: {tag} FROM {sandbox_image} ({len(deps.requirements)} requirements)",
        )
        image_id = engine.build(
            context,
            tag=tag,
            buildargs={"SANDBOX_IMAGE": sandbox_image},
            labels={LABEL_BASE_IMAGE_ID: sandbox_id, LABEL_REPO_DEPS: deps.digest()},
            on_output=on_output,
        )
    return ImageBuildResult(
        tag=tag,
        image_id=image_id,
        base_image=sandbox_image,
        base_image_id=sandbox_id,
        python=target.version,
        seconds=round(time.monotonic() - started, 2),
    ), deps


def image_for_repo(
    repo: Path,
    base_commit: str,
    *,
    engine: ImageEngine,
    sandbox_image: str = SANDBOX_IMAGE,
) -> str | None:
    """The dependency image built for ``repo``'s declarations at ``base_commit``, if it exists.

    None when the repository declares nothing, or when no image was built for these
    declarations on the current sandbox image (a warning then says how to build it).
    """
    deps = repo_dependencies(repo, base_commit)
    if not deps.requirements:
        return None
    sandbox_id = engine.image_id(sandbox_image)
    if sandbox_id is None:
        return None
    tag = deps_tag(deps, sandbox_id, sandbox_image)
    if engine.image_id(tag) is None:
        log.warning(
            "%s declares %d dependencies but no image has them for the current %s; "
            "run `taskbox image build --repo %s`",
            repo,
            len(deps.requirements),
            sandbox_image,
            repo,
        )
        return None
    return tag
