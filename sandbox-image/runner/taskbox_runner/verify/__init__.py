"""The verification harness that runs inside the sandbox: the worker brief's ten constraints.

``verify(VerifyContext) -> VerificationReport`` runs ruff once and pytest (with
coverage) once under harness-owned settings, then the ten checks:

    1 no SQL injection        ruff S608 + AST (f-string/concat/%/format reaching execute/text/raw/extra)
    2 no hard-coded secrets   ruff S105-S107 + detect-secrets (default plugins, allowlist pragma ignored)
    3 type hints              ruff ANN0xx/ANN2xx over owned non-test code
    4 coverage >= threshold   coverage JSON totals over owned non-test code
    5 all tests pass          junit; >= 1 ran; model skips, deselected and removed tests fail
    6 contract compliance     app.openapi() (subprocess) vs the OpenAPI file
    7 pydantic validation     FastAPI body params are BaseModels; DRF serializers; no pydantic.v1
    8 no print()              ruff T201/T203 over owned non-test code
    9 ruff check clean        the project's own (base) ruff rules, else E/F/W/I/UP/B
   10 async consistency       async endpoints, no blocking calls in async code

Harness rule codes are ``TB`` + two-digit constraint + two-digit number (TB0101 ...).
Call :func:`index_tests` on the base tree before the model writes anything and
pass it as ``VerifyContext.base_tests`` so removed tests are caught.
"""

from taskbox_runner.verify.harness import verify
from taskbox_runner.verify.models import (
    CheckOutcome,
    Finding,
    Framework,
    VerificationReport,
    VerifyContext,
)
from taskbox_runner.verify.suite_index import index_tests

__all__ = [
    "CheckOutcome",
    "Finding",
    "Framework",
    "VerificationReport",
    "VerifyContext",
    "index_tests",
    "verify",
]
