"""B1's peers, run in their own venv (var/bench-venv): epicbox2 and llm-sandbox doing ``print(1)``.

Run by bench/b1_start.py, never imported by it: the peers' dependencies stay
out of the project's. Usage::

    var/bench-venv/bin/python bench/peers.py PEER IMAGE REPETITIONS WARMUP OUT_JSON

It writes ``{"peer", "version", "samples": [seconds, ...]}`` to OUT_JSON
(the peers log to stdout, so the answer goes to a file). Each sample is the
peer's minimal documented call, with the same image as every other variant.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

#: The bench label (bench/harness.py); llm-sandbox passes it on, epicbox cannot.
LABELS = {"org.taskbox.bench": "1"}
ARGC = 6


def _epicbox(image: str) -> tuple[str, Any]:
    """epicbox2's documented call: a profile, then ``run`` with limits (network off by default)."""
    epicbox: Any = importlib.import_module("epicbox")
    epicbox.configure(profiles=[epicbox.Profile("py", image)])

    def once() -> None:
        result = epicbox.run("py", "python3 -c 'print(1)'", limits={"cputime": 5, "memory": 256})
        if result["exit_code"] != 0 or result["stdout"].strip() != b"1":
            raise RuntimeError(f"epicbox gave {result!r}")

    return metadata.version("epicbox2"), once


def _llm_sandbox(image: str) -> tuple[str, Any]:
    """llm-sandbox's session: no pip setup, tini so stop is quick, no network, the image kept."""
    session_factory: Any = importlib.import_module("llm_sandbox").SandboxSession

    def once() -> None:
        with session_factory(
            lang="python",
            image=image,
            skip_environment_setup=True,
            keep_template=True,  # never delete the image it did not build
            verbose=False,
            runtime_configs={
                "init": True,
                "network_mode": "none",
                "labels": LABELS,
                # The sandbox image's CMD is the runner, which exits at once without a run.json.
                "command": ["sleep", "infinity"],
            },
        ) as session:
            result = session.run("print(1)")
            if result.exit_code != 0 or result.stdout.strip() != "1":
                raise RuntimeError(f"llm-sandbox gave {result!r}")

    return metadata.version("llm-sandbox"), once


PEERS = {"epicbox2": _epicbox, "llm-sandbox": _llm_sandbox}


def main(argv: list[str]) -> int:
    """Time one peer; the samples go to the JSON file named last."""
    if len(argv) != ARGC or argv[1] not in PEERS:
        sys.stderr.write(__doc__ or "")
        return 2
    peer, image, repetitions, warmup, out = (
        argv[1],
        argv[2],
        int(argv[3]),
        int(argv[4]),
        Path(argv[5]),
    )
    version, once = PEERS[peer](image)
    samples: list[float] = []
    for index in range(warmup + repetitions):
        started = time.perf_counter()
        once()
        elapsed = time.perf_counter() - started
        if index >= warmup:
            samples.append(elapsed)
    out.write_text(json.dumps({"peer": peer, "version": version, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
