"""The model gateway: the only way a sandbox reaches the model, over a Unix socket, with a run token.

It swaps the run's token for the real credential (``anthropic`` upstream only),
pins ``anthropic-version``, forwards only an allowlist of fields, blocks,
sources, headers and the policy's betas (invariant 12: nothing leaves through
the provider), allowlists models, caps ``max_tokens``, meters every upstream
call, enforces the run's budget, bounds bodies, requests in flight,
connections and the transcript, and records every exchange. How the
controller uses it for one run::

    from controller.gateway import GatewayThread, ModelGateway, make_upstream

    token = secrets.token_urlsafe(32)                       # goes into the sandbox's RunConfig
    gateway = ModelGateway(
        upstream=make_upstream(spec, settings),              # "anthropic" | "scripted:FILE" | "replay:RUN_DIR"
        budget=policy.model,                                 # controller.policy.schema.ModelBudget
        token=token,
        transcript=run_dir / "record" / "transcript.jsonl",  # what a later "replay:RUN_DIR" reads
    )
    with GatewayThread(gateway, run_dir / "sock" / "gateway.sock"):
        ...                                                  # run the sandbox with that folder mounted
    record(gateway.usage)                                    # GatewayUsage: requests, tokens, refusals

From async code, ``async with serve_gateway(gateway, socket_path):`` serves in
the running loop instead. Either way, leaving the block removes the socket and
closes the upstream.

Status codes the client sees: 400 invalid request or not on the allowlist
(also: lone surrogate, script or recording exhausted, replay mismatch; never
retried), 401 bad token, 403 model not allowed or provider-side tool, 413 body
over the policy's ``model.max_body_bytes``, 429 budget spent or transcript full
(``x-should-retry: false``), 429 too many requests in flight or connections
(retryable, ``retry-after: 1``), upstream errors after the gateway's own
retries (``x-should-retry: false``), 500 gateway failure (no details in the body).
"""

from __future__ import annotations

from controller.gateway.app import ModelGateway
from controller.gateway.metering import GatewayUsage
from controller.gateway.serve import GatewayThread, bind_tcp, serve_gateway
from controller.gateway.transcript import TranscriptEntry, read_transcript, transcript_path
from controller.gateway.upstreams import (
    AnthropicUpstream,
    ReplayUpstream,
    ScriptedUpstream,
    Upstream,
    make_upstream,
)
from controller.gateway.wire import PINNED_API_VERSION, ApiError

__all__ = [
    "PINNED_API_VERSION",
    "AnthropicUpstream",
    "ApiError",
    "GatewayThread",
    "GatewayUsage",
    "ModelGateway",
    "ReplayUpstream",
    "ScriptedUpstream",
    "TranscriptEntry",
    "Upstream",
    "bind_tcp",
    "make_upstream",
    "read_transcript",
    "serve_gateway",
    "transcript_path",
]
