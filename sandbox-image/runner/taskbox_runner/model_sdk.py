"""The model SDK (``anthropic``), imported on a background thread while the run sets itself up.

Importing the SDK costs 1-2 s of CPU (over a thousand pydantic type modules) and nothing
before the first model call needs it, so the runner's entry point starts the import here and
the loop joins it when it makes the client. The import leaves the modules the runner never
uses unexecuted (:mod:`taskbox_runner.lazy_sdk`), which halves its CPU on the sandbox's one
CPU. The judge never imports this module.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time

from taskbox_runner import lazy_sdk

logger = logging.getLogger(__name__)

SDK_MODULE = "anthropic"
#: Set to "0" to import the SDK on the main thread instead (bench B2 compares the two).
PRELOAD_ENV = "TASKBOX_RUNNER_SDK_PRELOAD"
#: Set to "0" to import the whole SDK on the thread instead of lazily (bench B2 compares the two).
LAZY_ENV = "TASKBOX_RUNNER_SDK_LAZY"

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _import_in_background() -> None:
    started = time.perf_counter()
    try:
        if os.environ.get(LAZY_ENV, "1") == "0":
            importlib.import_module(SDK_MODULE)
        else:
            lazy_sdk.import_sdk()
    except Exception:  # the main thread's own import raises it again, with its traceback
        logger.debug("importing %s in the background failed", SDK_MODULE, exc_info=True)
        return
    logger.debug("%s imported in %.3f s", SDK_MODULE, time.perf_counter() - started)


def preload() -> None:
    """Start importing the SDK on a daemon thread; a second call does nothing."""
    global _thread  # noqa: PLW0603 - one import per process, started once
    with _lock:
        if _thread is None:
            _thread = threading.Thread(
                target=_import_in_background, name="taskbox-sdk-import", daemon=True
            )
            _thread.start()


def wait_ready() -> float:
    """Join the background import when one was started; the seconds spent waiting for it.

    The caller then imports the SDK as usual: a dictionary look-up when the thread
    finished it, or the import itself (and its real error) when none ran or it failed.
    """
    with _lock:
        thread = _thread
    if thread is None:
        return 0.0
    started = time.perf_counter()
    thread.join()
    waited = time.perf_counter() - started
    logger.info("model SDK ready (waited %.0f ms for its import)", waited * 1000)
    return waited
