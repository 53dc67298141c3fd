"""Health, readiness, metrics and policies.

``/healthz`` and ``/readyz`` need no token: probes of an orchestrator or a load
balancer carry none, and they answer only ``ok`` or the names of failed
checks (details go to the log). ``/metrics`` and ``/v1/policies`` need one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from controller.api.deps import ContextDep, PrincipalDep  # noqa: TC001 - FastAPI reads them at runtime
from controller.api.errors import NotReadyError, error_responses
from controller.api.models import HealthReport, PolicyList, PolicyView, ReadinessReport
from controller.policy.loader import list_policies

if TYPE_CHECKING:
    from collections.abc import Callable

router = APIRouter()
logger = logging.getLogger(__name__)

#: A probe that does not answer in this time counts as failed.
PROBE_TIMEOUT_SECONDS = 5.0


@router.get("/healthz", tags=["system"], summary="Liveness")
def healthz() -> HealthReport:
    """The process is up and serving HTTP."""
    return HealthReport(status="ok")


@router.get("/readyz", tags=["system"], summary="Readiness", responses=error_responses(500, 503))
async def readyz(context: ContextDep) -> ReadinessReport:
    """Ready to run tasks: the store is writable, the engine answers, the sandbox image is present."""
    service = context.service
    if service is None or not service.accepting:
        raise NotReadyError("not ready: the controller is starting or shutting down")
    checks: dict[str, Callable[[], None]] = {"store": service.store.check_writable}
    checks.update(context.probes)
    failed = []
    for name, probe in checks.items():
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not ready"
            logger.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
            failed.append(name)
    if failed:
        raise NotReadyError(f"not ready: {', '.join(failed)} failed")
    return ReadinessReport(status="ready", checks=dict.fromkeys(checks, "ok"))


@router.get(
    "/metrics",
    tags=["system"],
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "Prometheus text exposition format."},
        **error_responses(401, 500),
    },
)
def metrics(context: ContextDep, _principal: PrincipalDep) -> Response:
    """Tasks by status, queue depth, run durations, model tokens."""
    return Response(context.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/policies",
    tags=["policies"],
    summary="List policies",
    responses=error_responses(401, 500),
)
def policies(context: ContextDep, _principal: PrincipalDep) -> PolicyList:
    """Every policy of the controller, validated, with its digest."""
    loaded = list_policies(context.settings.policies_dir)
    return PolicyList(items=[PolicyView(name=p.name, digest=p.digest(), policy=p) for p in loaded])
