"""The in-sandbox judge's pieces on the host: the seal, the one-time key, and the dynamic half.

``main`` itself is not run here: it ends with ``kill(-1)``, which on the host would
kill every process of the user; the real-engine tests in tests/security run it whole.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import pytest
from taskbox_runner.judge import run_dynamic, sealed_line, take_key
from taskbox_runner.verify import static_checks, static_report, verify_dynamic

from controller.verdict import JudgeOutputError, open_sealed_report
from taskbox_wire.config import JudgeConfig
from taskbox_wire.paths import JUDGE_KEY_FILE, JUDGE_STATIC_PREFIX
from tests.runner.verify.conftest import DATA, Stage

if TYPE_CHECKING:
    from pathlib import Path

    from taskbox_runner.verify import VerifyContext

KEY = bytes(range(32))

#: A test of the example's GET /users that passes on the base as well: it tests no change.
PASSES_ON_THE_BASE = """from fastapi.testclient import TestClient

from app.main import app


def test_list_answers() -> None:
    assert TestClient(app).get("/users").status_code == 200
"""


def _config(ctx: VerifyContext, f2p: Path, out: Path, test_files: list[str]) -> JudgeConfig:
    return JudgeConfig(
        run_id="BE-1-run",
        owns_paths=ctx.owns_paths,
        changed_files=ctx.changed_files,
        test_files=test_files,
        openapi_path=ctx.openapi_path,
        test_timeout_seconds=120,
        workdir=ctx.workdir,
        base_dir=ctx.base_config_dir or ctx.workdir,
        fail_to_pass_dir=f2p,
        outdir=out,
    )


def test_the_sealed_line_is_what_the_controller_opens_and_only_with_its_key(stage: Stage) -> None:
    """The judge's framed line round-trips through the controller's parser; another key is refused."""
    staged = stage("good_fastapi", overlay="bad_08_print")
    ctx = staged.context()
    report = static_report(ctx, static_checks(ctx))

    line = sealed_line(report, KEY)

    text = line.decode("ascii")
    assert text.startswith(JUDGE_STATIC_PREFIX)
    assert text.count("\n") == 1
    assert text.endswith("\n")
    opened = open_sealed_report(text.rstrip("\n"), key=KEY, max_bytes=1_000_000)
    assert [c.passed for c in opened.constraints] == [c.passed for c in report.constraints]
    assert not opened.constraints[7].passed
    with pytest.raises(JudgeOutputError, match="seal does not match"):
        open_sealed_report(text.rstrip("\n"), key=bytes(32), max_bytes=1_000_000)


def test_the_key_is_read_once_and_its_file_removed(tmp_path: Path) -> None:
    """take_key returns the key and removes the file: no later process of the sandbox finds it."""
    (tmp_path / JUDGE_KEY_FILE).write_text(KEY.hex())

    assert take_key(tmp_path) == KEY
    assert not (tmp_path / JUDGE_KEY_FILE).exists()
    with pytest.raises(OSError, match="No such file"):
        take_key(tmp_path)


def test_a_key_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """The key is never read through a symbolic link (O_NOFOLLOW)."""
    (tmp_path / "elsewhere").write_text(KEY.hex())
    (tmp_path / JUDGE_KEY_FILE).symlink_to(tmp_path / "elsewhere")

    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        take_key(tmp_path)


def test_the_dynamic_report_leaves_the_static_constraints_to_the_static_report(
    stage: Stage,
) -> None:
    """verify_dynamic decides only 4, 5 and 6: a print() (constraint 8) is not its to fail or report."""
    staged = stage("good_fastapi", overlay="bad_08_print")
    ctx = staged.context()
    static = static_checks(ctx)

    dynamic = verify_dynamic(ctx, static)

    assert not static_report(ctx, static).constraints[7].passed
    assert dynamic.constraints[7].passed
    assert dynamic.constraints[7].evidence == []
    for number in (4, 5, 6):
        assert dynamic.constraints[number - 1].evidence, number
    assert dynamic.test_results.total >= 1


def test_fail_to_pass_beside_the_suite_still_fails_tests_that_pass_on_the_base(
    stage: Stage, tmp_path: Path
) -> None:
    """Fail-to-pass runs concurrently with the suite and still fails a new test that passes on the base."""
    staged = stage()
    staged.write("tests/test_more.py", PASSES_ON_THE_BASE)
    f2p = tmp_path / "f2p"
    shutil.copytree(DATA / "good_fastapi", f2p)
    (f2p / "tests" / "test_more.py").write_text(PASSES_ON_THE_BASE)
    ctx = staged.context()
    config = _config(ctx, f2p, tmp_path, ["tests/test_more.py"])

    report = run_dynamic(ctx, config, static_checks(ctx))

    tests = report.constraints[4]
    assert not tests.passed
    evidence = "\n".join(tests.evidence)
    assert "TB0513" in evidence
    assert "tests/test_more.py::test_list_answers" in evidence
    assert str(tmp_path) not in json.dumps(report.model_dump(mode="json"))
