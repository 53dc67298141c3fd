"""The verification harness that runs inside the sandbox: the worker brief's ten constraints.

``verify_static(VerifyContext) -> VerificationReport`` runs ruff, detect-secrets
and the AST checks and never imports or runs a file of the repository;
``verify(VerifyContext)`` adds pytest (with coverage) once under harness-owned
settings, the contract run and Django's migration check, and merges both phases
per constraint. The judge splits the two: ``static_checks`` + ``static_report``
first (it seals that report before any model code runs), then
``verify_dynamic(ctx, static)``, which runs only what needs the code to run.
``check_fail_to_pass(ctx, base_workdir=..., test_files=[...])`` runs the
model's new and changed tests on the base tree (one must fail there). The ten checks:

    1 no SQL injection        intra-module data flow: run-time text reaching execute/text/raw/extra
                              through f-strings, %, .format, +, join or a helper's return (S608 agrees)
    2 no hard-coded secrets   detect-secrets + values rebuilt from literals (joined, decoded, reversed);
                              name rules fire only on credential-looking values
    3 type hints              ruff ANN0xx/ANN2xx + ``Any`` annotations over owned non-test code
    4 coverage >= threshold   coverage JSON totals over owned non-test code; no pragma honoured
    5 all tests pass          junit; >= 1 ran; model skips, deselected and removed tests fail;
                              statically: verdict-changing pytest hooks, tests that cannot fail
    6 contract compliance     app.openapi() and app.routes (subprocess) vs the OpenAPI file, then
                              requests built from the contract sent through ASGI, answers validated
    7 pydantic validation     body types through aliases are BaseModels; no hand-read request body
                              reachable from an endpoint; DRF serializers; no pydantic.v1
    8 no print()              ruff T201/T203 + sys.stdout/stderr writes + print/pprint aliases
    9 ruff check clean        the project's own (base) ruff config, else ruff's defaults; no noqa honoured
   10 async consistency       async endpoints; a call graph through owned sync helpers to blocking calls

Findings read ``path:line: RULE message``: ruff's own codes, or harness codes
``TB`` + two-digit constraint + two-digit number:

    TB0101 SQL built from run-time strings reaches a SQL call    TB0102 ruff could not run
    TB0201 detect-secrets finding                                TB0202 ruff could not run
    TB0203 credential-named constant rebuilt from literals       TB0204 rebuilt value of a known shape
    TB0301 ruff could not run                                    TB0302 ``Any`` as a parameter or return type
    TB0401 lines never run (coverage under the threshold)       TB0402 owned file not measured
    TB0501 test failed   TB0502 test error   TB0503 no test ran   TB0504 skipped by the model
    TB0505 test removed or renamed out of collection since the base
    TB0506 defined but not run   TB0507 pytest did not finish
    TB0508 Django models changed without a migration
    TB0509 pytest hook or patch that can change the verdict   TB0510 test that cannot fail
    TB0511 assertion swallowed by a broad except   TB0512 tests in a file pytest does not collect
    TB0513 new tests pass on the base too   TB0514 no new or changed test
    TB0515 fail-to-pass not decided (pytest did not finish on the base)
    TB0601 operation missing from the app   TB0602 operation not in the contract
    TB0603 operation differs   TB0604 app not found / not importable   TB0605 contract unreadable
    TB0606 route hidden from the OpenAPI document (static)   TB0607 answer refused by the contract
    TB0701 body not a pydantic model   TB0702 body read by hand   TB0703 pydantic v1 API
    TB0704 Django/Flask view reads the body without a serializer/model
    TB0801 / TB0901 ruff could not run
    TB0802 write to sys.stdout/sys.stderr   TB0803 alias of print/pprint
    TB1001 sync FastAPI endpoint   TB1002 blocking call in async code
    TB1003 sync ORM in async code   TB1004 AsyncSession call not awaited

Known limits: a Django app is not compared with the contract (a warning says
so); a Flask app is compared by methods and paths only, with no requests sent;
code the tests import (conftest.py included) runs inside the pytest session, so
the dynamic results are claims of code under test: the static phase refuses the
hooks and patches that could forge them, and every conftest.py the model wrote
is named in the warnings.
Call :func:`index_tests` on the base tree before the model writes anything and
pass it as ``VerifyContext.base_tests`` so removed tests are caught.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskbox_runner.verify.fail_to_pass import check_fail_to_pass
    from taskbox_runner.verify.harness import (
        StaticPhase,
        static_checks,
        static_report,
        verify,
        verify_dynamic,
        verify_static,
    )
    from taskbox_runner.verify.models import (
        CheckOutcome,
        Finding,
        Framework,
        VerificationReport,
        VerifyContext,
    )
    from taskbox_runner.verify.suite_index import index_tests

#: Where each public name lives. The package imports them on first use (PEP 562), so a
#: light submodule (``process``, ``pytest_boot``) can be imported without the checks and
#: pydantic: the judge starts its warm pytest interpreters before it loads the verifier.
_HOMES = {
    "check_fail_to_pass": "fail_to_pass",
    "StaticPhase": "harness",
    "static_checks": "harness",
    "static_report": "harness",
    "verify": "harness",
    "verify_dynamic": "harness",
    "verify_static": "harness",
    "CheckOutcome": "models",
    "Finding": "models",
    "Framework": "models",
    "VerificationReport": "models",
    "VerifyContext": "models",
    "index_tests": "suite_index",
}

__all__ = [
    "CheckOutcome",
    "Finding",
    "Framework",
    "StaticPhase",
    "VerificationReport",
    "VerifyContext",
    "check_fail_to_pass",
    "index_tests",
    "static_checks",
    "static_report",
    "verify",
    "verify_dynamic",
    "verify_static",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value
