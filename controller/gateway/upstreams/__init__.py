"""Upstreams of the model gateway, chosen by a string: ``anthropic``, ``scripted:FILE``, ``replay:RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

from controller.errors import GatewayError
from controller.gateway.upstreams.anthropic_api import AnthropicUpstream
from controller.gateway.upstreams.base import (
    MessageReply,
    StreamReply,
    Upstream,
    UpstreamCall,
    UpstreamReply,
)
from controller.gateway.upstreams.replay import ReplayUpstream
from controller.gateway.upstreams.scripted import ScriptedUpstream
from controller.settings import Settings, get_settings

__all__ = [
    "AnthropicUpstream",
    "MessageReply",
    "ReplayUpstream",
    "ScriptedUpstream",
    "StreamReply",
    "Upstream",
    "UpstreamCall",
    "UpstreamReply",
    "make_upstream",
]


def make_upstream(spec: str, settings: Settings | None = None) -> Upstream:
    """The upstream a spec names; a bad spec, script or recording raises ``GatewayError``.

    - ``anthropic``: the real API at ``settings.anthropic_base_url`` with ``settings.anthropic_api_key``.
    - ``scripted:FILE``: canned turns from a JSON Lines file, validated now.
    - ``replay:RUN_DIR``: the transcript of an earlier run, strict about request hashes;
      ``replay-lenient:RUN_DIR`` replays even when a request differs (and logs it).
    """
    kind, _, argument = spec.partition(":")
    if kind == "anthropic" and not argument:
        settings = settings or get_settings()
        if settings.anthropic_api_key is None or not settings.anthropic_api_key.get_secret_value():
            raise GatewayError("the anthropic upstream needs TASKBOX_ANTHROPIC_API_KEY")
        return AnthropicUpstream(
            base_url=settings.anthropic_base_url, api_key=settings.anthropic_api_key
        )
    if kind == "scripted" and argument:
        return ScriptedUpstream.from_file(Path(argument).expanduser())
    if kind in ("replay", "replay-lenient") and argument:
        return ReplayUpstream.from_run_dir(Path(argument).expanduser(), strict=kind == "replay")
    raise GatewayError(
        f"unknown model upstream {spec!r}: expected 'anthropic', 'scripted:FILE' or 'replay:RUN_DIR'"
    )
