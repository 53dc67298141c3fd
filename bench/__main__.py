"""``python -m bench [names]``: run the chosen benchmarks and write ``bench/results/<date>.{json,md}``.

This run's containers are removed after each benchmark and at exit (SIGTERM and
Ctrl-C included), and so are those of a run whose process is gone; a concurrent
run's are left alone. The scratch folder goes too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from docker.errors import DockerException

from bench.harness import (
    PEER_IMAGE_TAG,
    BenchContext,
    BenchResult,
    ResultsFile,
    machine_info,
    remove_bench_containers,
    render_markdown,
    write_results,
)
from controller.errors import SandboxError
from controller.sandbox.docker import DockerImages, docker_client
from controller.settings import Settings

if TYPE_CHECKING:
    from types import FrameType

log = logging.getLogger("bench")

#: Benchmark name -> module with ``run(ctx) -> BenchResult``, in the order they run.
BENCHMARKS: dict[str, str] = {
    "b1": "bench.b1_start",
    "b2": "bench.b2_task",
    "b3": "bench.b3_concurrency",
    "b4": "bench.b4_verify",
    "b5": "bench.b5_api",
    "b6": "bench.b6_memory",
    "b8": "bench.b8_teardown",
    "b9": "bench.b9_verify_change",
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run ({', '.join(BENCHMARKS)}); all by default",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions: a smoke run, not numbers to quote"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the tables but write no results file"
    )
    args = parser.parse_args(argv)
    args.names = [name.lower() for name in args.names]
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (from ``timeout``) unwinds like Ctrl-C, so the cleanup in ``finally`` runs."""
    del frame
    raise SystemExit(128 + signum)


def _run_one(name: str, ctx: BenchContext) -> BenchResult:
    module = importlib.import_module(BENCHMARKS[name])
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    log.info("== %s (load average %.1f)", name.upper(), load_before)
    try:
        result: BenchResult = module.run(ctx)
    except Exception as exc:
        log.exception("%s failed", name.upper())
        return BenchResult(
            key=name.upper(),
            title="failed",
            started_at=started,
            duration_seconds=round((datetime.now(UTC) - started).total_seconds(), 1),
            skipped=f"failed: {type(exc).__name__}: {exc}",
            notes=[traceback.format_exc(limit=3).strip().splitlines()[-1]],
        )
    else:
        result.load_average = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    finally:
        # Peers' containers are found by name only (they carry no label): only B1 runs peers.
        left = remove_bench_containers(ctx.client, peers=name == "b1")
        if left:
            log.warning(
                "%s left %d containers behind (removed): %s",
                name.upper(),
                len(left),
                ", ".join(left),
            )
    return result


def main(argv: list[str]) -> int:
    """Run the benchmarks; exit status 1 when one failed or the image is missing."""
    args = _parse(argv)
    names = [n for n in BENCHMARKS if n in args.names] if args.names else list(BENCHMARKS)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("controller").setLevel(logging.WARNING)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)  # the gateway of every B2 run
    signal.signal(signal.SIGTERM, _terminate)
    settings = Settings()
    try:
        client = docker_client(settings)
        image_id = DockerImages(client).image_id(settings.image)
    except (SandboxError, DockerException) as exc:
        log.error("no Docker engine: %s (try scripts/ensure-docker)", exc)  # noqa: TRY400 - a message, not a crash
        return 1
    if image_id is None:
        log.error(
            "the sandbox image %s is missing: run .venv/bin/taskbox image build", settings.image
        )
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="taskbox-bench-"))
    ctx = BenchContext(
        client=client,
        settings=settings,
        image=settings.image,
        image_id=image_id,
        scratch=scratch,
        quick=args.quick,
    )
    machine = machine_info(client)
    write = not (args.quick or args.no_write)
    results: list[BenchResult] = []
    try:
        for name in names:
            results.append(_run_one(name, ctx))
            if write:
                # After each benchmark: a suite stopped at its time limit keeps what it measured.
                json_path, _ = write_results(results[-1:], machine)
                log.info("%s written to %s (and .md)", name.upper(), json_path)
    finally:
        remove_bench_containers(client, peers="b1" in names)
        # The peers' tag of the image (absent when the peers did not run).
        with contextlib.suppress(DockerException):
            client.api.remove_image(PEER_IMAGE_TAG, noprune=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if not write:
        log.info("results not written (--quick or --no-write)")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    print(
        render_markdown(
            ResultsFile(date=day, machine=machine, benchmarks={r.key: r for r in results})
        )
    )
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
