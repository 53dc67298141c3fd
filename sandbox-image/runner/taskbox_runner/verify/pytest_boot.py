"""How a harness pytest process starts: cold, or warm (started ahead, waiting for its command line).

Every harness pytest run is ``python -P -c PYTEST_BOOTSTRAP <pytest arguments>``:
coverage and pytest are imported before pytest puts the repository on
``sys.path``, so a ``pytest.py`` or ``coverage.py`` there cannot stand in.

Importing them (and the allowed plugins) is about 0.3 s of every run in the
sandbox. The judge cannot overlap that with its static checks by starting the
tests early: no file of the repository may run before the static report is
sealed. :class:`WarmPytest` overlaps only the imports: it starts the
interpreter ahead with ``WARM_BOOTSTRAP``, which imports the same modules from
the image's site-packages (never from the repository: ``-P``, and its working
folder is the scratch folder) and then blocks on its stdin. When the run comes,
:meth:`WarmPytest.run` writes the command line, working folder and environment
as one JSON line and closes the pipe; the process sets them and calls
``pytest.console_main()`` exactly as a cold start would. A run no warm process
was started for, or whose command line is not the harness's pytest, starts
cold through :func:`run_bounded`; a warm process never used is ended by
:meth:`WarmPytest.close` (its stdin closes and it exits).

The module imports only the standard library and :mod:`process`, so the judge
can start the warm interpreters before importing the verifier itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from typing import IO, TYPE_CHECKING, Self

from taskbox_runner.verify.process import (
    harness_env,
    kill_group,
    output_paths,
    run_bounded,
    wait_bounded,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from types import TracebackType

    from taskbox_runner.verify.process import Completed

logger = logging.getLogger(__name__)

#: Runs pytest after importing coverage: pytest-cov imports it only once the repository is
#: on sys.path, where a ``coverage.py`` of the project's would otherwise be found first.
PYTEST_BOOTSTRAP = "import coverage, pytest, sys; sys.exit(pytest.console_main())"
#: The start of every harness pytest command line: what a warm process stands in for.
PYTEST_PREFIX = (sys.executable, "-P", "-c", PYTEST_BOOTSTRAP)

#: The harness's pytest runs by label (the names of their output files in the scratch folder):
#: the tests with coverage, and fail-to-pass on the base tree.
TESTS_LABEL = "pytest"
BASE_RUN_LABEL = "fail-to-pass"

#: Plugin modules a warm process imports ahead when installed (pytest-django is left out: it
#: imports Django, which only a Django project's run needs).
WARM_PLUGINS = ("pytest_cov.plugin", "anyio.pytest_plugin", "pytest_asyncio.plugin")

#: The warm interpreter: ``argv[1:]`` names the plugin modules to import ahead; one JSON line
#: on stdin ({"argv", "cwd", "env"}) starts the run; end of input ends the process unused.
#: The interpreter-start settings that the run's environment may change (bytecode writing and
#: its cache folder) are applied by hand, since the interpreter read them at its own start.
WARM_BOOTSTRAP = """\
import importlib, json, os, sys
import coverage, pytest
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
order = sys.stdin.buffer.read()
if not order:
    os._exit(0)
order = json.loads(order)
devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(devnull, 0)
os.close(devnull)
os.environ.clear()
os.environ.update(order["env"])
sys.dont_write_bytecode = bool(order["env"].get("PYTHONDONTWRITEBYTECODE"))
sys.pycache_prefix = order["env"].get("PYTHONPYCACHEPREFIX") or None
os.chdir(order["cwd"])
sys.argv = order["argv"]
sys.exit(pytest.console_main())
"""


class WarmPytest:
    """Harness pytest interpreters started ahead of their runs, one per ``(output_dir, label)``.

    Use as a context manager; :meth:`run` has :func:`run_bounded`'s signature, so it is passed
    where a run is launched.
    """

    def __init__(self, plugins: Sequence[str] = WARM_PLUGINS) -> None:
        self._plugins = tuple(plugins)
        # Each waiting interpreter (started with stdin=PIPE), by the run it stands in for.
        self._waiting: dict[tuple[Path, str], subprocess.Popen[bytes]] = {}
        self.used: list[str] = []
        """Labels of the runs that took a warm interpreter, in order (for the log and tests)."""

    def start(self, output_dir: Path, label: str) -> None:
        """Start the interpreter for the run that will write ``output_dir/<label>.*``.

        When it cannot be started, nothing is kept and that run starts cold.
        """
        output_dir.mkdir(parents=True, exist_ok=True)
        out_path, err_path = output_paths(output_dir, label)
        try:
            with out_path.open("wb") as out, err_path.open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-P", "-c", WARM_BOOTSTRAP, *self._plugins],
                    cwd=output_dir,
                    env=harness_env(),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:  # no warm start: the run starts cold, as it always could
            logger.warning("could not start a warm interpreter for %s: %s", label, exc)
            return
        self._waiting[(output_dir, label)] = proc

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        output_dir: Path,
        label: str,
    ) -> Completed:
        """Hand the run to its warm interpreter; a run with none (or not pytest) starts cold."""
        waiting = self._waiting.pop((output_dir, label), None)
        if (
            waiting is not None
            and tuple(argv[: len(PYTEST_PREFIX)]) == PYTEST_PREFIX
            and _hand_over(waiting, argv[len(PYTEST_PREFIX) :], cwd=cwd, env=env, label=label)
        ):
            self.used.append(label)
            return wait_bounded(waiting, timeout=timeout, output_dir=output_dir, label=label)
        if waiting is not None:
            self._end(waiting)
        return run_bounded(
            argv, cwd=cwd, env=env, timeout=timeout, output_dir=output_dir, label=label
        )

    def close(self) -> None:
        """End every interpreter no run took."""
        for waiting in self._waiting.values():
            self._end(waiting)
        self._waiting.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def _end(waiting: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            _order_pipe(waiting).close()  # end of input: the bootstrap exits on its own
        try:
            waiting.wait(timeout=2)
        except subprocess.TimeoutExpired:  # still importing: nothing of value is lost
            kill_group(waiting)


def _hand_over(
    proc: subprocess.Popen[bytes],
    pytest_args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    label: str,
) -> bool:
    """Write the run's order and close the pipe; False when the interpreter is gone."""
    order = {"argv": ["-c", *pytest_args], "cwd": str(cwd), "env": dict(env)}
    try:
        _order_pipe(proc).write(json.dumps(order).encode("utf-8"))
        _order_pipe(proc).close()
    except OSError as exc:  # it died while waiting: the run starts cold instead
        logger.warning("the warm interpreter for %s was gone (%s); starting cold", label, exc)
        return False
    return True


def _order_pipe(proc: subprocess.Popen[bytes]) -> IO[bytes]:
    """The write end of a warm interpreter's stdin (it was started with ``stdin=PIPE``)."""
    assert proc.stdin is not None  # noqa: S101 - stdin=PIPE always makes one
    return proc.stdin
