"""Validation of Messages API requests, refusing bad ones with the real API's 400 messages.

The envelope (which top-level fields exist and their scalar types) is a
pydantic model with ``extra="forbid"``, like the API itself, so ``temperature``
gets the API's own "Extra inputs are not permitted". The nested parts
(messages, system, tools, tool_choice, cache_control) are checked by hand:
they are unions the API reports with its own wording, and anything the gateway
does not understand inside them is forwarded untouched for the upstream to judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.gateway.wire import ApiError

MAX_CACHE_CONTROL_BLOCKS = 4
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
_CACHE_TTLS = ("5m", "1h")

#: Typed tools the runner executes itself. Every other typed tool (web search,
#: web fetch, code execution, ...) runs on the provider's side and would reach
#: the network on the sandbox's behalf, so the gateway refuses it.
CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "memory_")


class _CountTokensEnvelope(BaseModel):
    """Top-level fields of ``POST /v1/messages/count_tokens``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    messages: list[Any]
    system: Any = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    thinking: dict[str, Any] | None = None
    cache_control: Any = None
    output_config: dict[str, Any] | None = None
    speed: str | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None


class _MessagesEnvelope(_CountTokensEnvelope):
    """Top-level fields of ``POST /v1/messages`` (the SDK 2.x parameter set plus ``stream``)."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None
    container: Any = None
    diagnostics: Any = None
    inference_geo: str | None = None
    service_tier: str | None = None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the gateway's policy needs to know of a valid request."""

    model: str
    max_tokens: int | None
    stream: bool


def check_messages_request(body: dict[str, Any]) -> RequestFacts:
    """Validate a ``/v1/messages`` body; raise ``ApiError`` (400, or 403 for a server tool)."""
    envelope = _envelope(_MessagesEnvelope, body)
    assert isinstance(envelope, _MessagesEnvelope)  # noqa: S101 - narrows the type for mypy
    _check_contents(body)
    return RequestFacts(envelope.model, envelope.max_tokens, envelope.stream)


def check_count_tokens_request(body: dict[str, Any]) -> RequestFacts:
    """Validate a ``/v1/messages/count_tokens`` body; raise ``ApiError`` on the first problem."""
    envelope = _envelope(_CountTokensEnvelope, body)
    _check_contents(body)
    return RequestFacts(envelope.model, None, stream=False)


def _envelope(model: type[_CountTokensEnvelope], body: dict[str, Any]) -> _CountTokensEnvelope:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError.invalid_request(
            f"{where}: {first['msg']}" if where else first["msg"]
        ) from None


def _check_contents(body: dict[str, Any]) -> None:
    cache_blocks = 1 if body.get("cache_control") is not None else 0
    if body.get("cache_control") is not None:
        _check_cache_control(body["cache_control"], "cache_control")
    cache_blocks += _check_system(body.get("system"))
    cache_blocks += _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"))
    cache_blocks += _check_messages(body["messages"])
    if cache_blocks > MAX_CACHE_CONTROL_BLOCKS:
        raise ApiError.invalid_request(
            f"A maximum of {MAX_CACHE_CONTROL_BLOCKS} blocks with cache_control may be provided. "
            f"Found {cache_blocks}."
        )


def _check_cache_control(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ApiError.invalid_request(f"{where}: Input should be a valid dictionary or object")
    extra = sorted(set(value) - {"type", "ttl"})
    if extra:
        raise ApiError.invalid_request(f"{where}.{extra[0]}: Extra inputs are not permitted")
    if value.get("type") != "ephemeral":
        raise ApiError.invalid_request(f"{where}.type: Input should be 'ephemeral'")
    if "ttl" in value and value["ttl"] not in _CACHE_TTLS:
        raise ApiError.invalid_request(f"{where}.ttl: Input should be '5m' or '1h'")


def _block_cache_control(block: dict[str, Any], where: str) -> int:
    if block.get("cache_control") is None:
        return 0
    _check_cache_control(block["cache_control"], f"{where}.cache_control")
    return 1


def _check_system(system: Any) -> int:
    if system is None or isinstance(system, str):
        return 0
    if not isinstance(system, list):
        raise ApiError.invalid_request(
            "system: Input should be a valid string or a list of text blocks"
        )
    found = 0
    for index, block in enumerate(system):
        where = f"system.{index}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ApiError.invalid_request(f"{where}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise ApiError.invalid_request(f"{where}.text: Field required")
        found += _block_cache_control(block, where)
    return found


def _check_tools(tools: list[Any] | None) -> int:
    found = 0
    names: set[str] = set()
    for index, tool in enumerate(tools or []):
        where = f"tools.{index}"
        if not isinstance(tool, dict):
            raise ApiError.invalid_request(f"{where}: Input should be a valid dictionary or object")
        kind = tool.get("type")
        if kind is None or kind == "custom":
            _check_custom_tool(tool, f"{where}.custom")
        elif not isinstance(kind, str):
            raise ApiError.invalid_request(f"{where}.type: Input should be a valid string")
        elif not kind.startswith(CLIENT_TOOL_PREFIXES):
            raise ApiError(
                403,
                "permission_error",
                f"{where}: tool type {kind!r} runs on the provider's side and is not allowed "
                "through the Taskbox gateway",
            )
        elif not isinstance(tool.get("name"), str):
            raise ApiError.invalid_request(f"{where}.name: Field required")
        name = tool.get("name")
        if name in names:
            raise ApiError.invalid_request("tools: Tool names must be unique.")
        names.add(str(name))
        found += _block_cache_control(tool, where)
    return found


def _check_custom_tool(tool: dict[str, Any], where: str) -> None:
    name = tool.get("name")
    if not isinstance(name, str):
        raise ApiError.invalid_request(f"{where}.name: Field required")
    if not _TOOL_NAME.match(name):
        raise ApiError.invalid_request(
            f"{where}.name: String should match pattern '{_TOOL_NAME.pattern}'"
        )
    if "description" in tool and not isinstance(tool["description"], str):
        raise ApiError.invalid_request(f"{where}.description: Input should be a valid string")
    schema = tool.get("input_schema")
    if schema is None:
        raise ApiError.invalid_request(f"{where}.input_schema: Field required")
    if not isinstance(schema, dict):
        raise ApiError.invalid_request(
            f"{where}.input_schema: Input should be a valid dictionary or object"
        )
    if schema.get("type") != "object":
        raise ApiError.invalid_request(f"{where}.input_schema.type: Input should be 'object'")


def _check_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise ApiError.invalid_request("tool_choice: Input should be a valid dictionary or object")
    kind = choice.get("type")
    if kind not in _TOOL_CHOICE_TYPES:
        raise ApiError.invalid_request(
            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
        )
    allowed = {"type"} | ({"name"} if kind == "tool" else set())
    allowed |= {"disable_parallel_tool_use"} if kind != "none" else set()
    extra = sorted(set(choice) - allowed)
    if extra:
        raise ApiError.invalid_request(
            f"tool_choice.{kind}.{extra[0]}: Extra inputs are not permitted"
        )
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise ApiError.invalid_request("tool_choice.tool.name: Field required")
    if not isinstance(choice.get("disable_parallel_tool_use", False), bool):
        raise ApiError.invalid_request(
            f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean"
        )


def _check_messages(messages: list[Any]) -> int:
    if not messages:
        raise ApiError.invalid_request("messages: at least one message is required")
    found = 0
    blocks_by_message: list[list[dict[str, Any]]] = []
    for index, message in enumerate(messages):
        blocks, cached = _check_message(message, index, last=index == len(messages) - 1)
        blocks_by_message.append(blocks)
        found += cached
    _check_tool_pairing(messages, blocks_by_message)
    return found


def _check_message(message: Any, index: int, *, last: bool) -> tuple[list[dict[str, Any]], int]:
    where = f"messages.{index}"
    if not isinstance(message, dict):
        raise ApiError.invalid_request(f"{where}: Input should be a valid dictionary or object")
    extra = sorted(set(message) - {"role", "content"})
    if extra:
        raise ApiError.invalid_request(f"{where}.{extra[0]}: Extra inputs are not permitted")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise ApiError.invalid_request(f"{where}.role: Input should be 'user' or 'assistant'")
    if "content" not in message:
        raise ApiError.invalid_request(f"{where}.content: Field required")
    content = message["content"]
    empty_allowed = last and role == "assistant"
    if isinstance(content, str):
        if not content and not empty_allowed:
            raise ApiError.invalid_request(
                f"{where}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        return [{"type": "text", "text": content}], 0
    if not isinstance(content, list):
        raise ApiError.invalid_request(f"{where}.content: Input should be a valid string or list")
    if not content and not empty_allowed:
        raise ApiError.invalid_request(
            f"{where}: all messages must have non-empty content except for the optional "
            "final assistant message"
        )
    found = 0
    for position, block in enumerate(content):
        found += _check_block(block, f"{where}.content.{position}")
    return content, found


def _check_block(block: Any, where: str) -> int:
    if not isinstance(block, dict):
        raise ApiError.invalid_request(f"{where}: Input should be a valid dictionary or object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise ApiError.invalid_request(f"{where}.type: Field required")
    if kind == "text" and not isinstance(block.get("text"), str):
        raise ApiError.invalid_request(f"{where}.text.text: Field required")
    if kind == "tool_use":
        for field, expected in (("id", str), ("name", str), ("input", dict)):
            if not isinstance(block.get(field), expected):
                raise ApiError.invalid_request(f"{where}.tool_use.{field}: Field required")
    found = _check_tool_result(block, f"{where}.tool_result") if kind == "tool_result" else 0
    return found + _block_cache_control(block, where)


def _check_tool_result(block: dict[str, Any], where: str) -> int:
    """Check a ``tool_result`` block; return the ``cache_control`` markers inside its content."""
    if not isinstance(block.get("tool_use_id"), str):
        raise ApiError.invalid_request(f"{where}.tool_use_id: Field required")
    if not isinstance(block.get("is_error", False), bool):
        raise ApiError.invalid_request(f"{where}.is_error: Input should be a valid boolean")
    inner = block.get("content")
    if inner is None or isinstance(inner, str):
        return 0
    if not isinstance(inner, list):
        raise ApiError.invalid_request(f"{where}.content: Input should be a valid string or list")
    return sum(_check_block(nested, f"{where}.content.{i}") for i, nested in enumerate(inner))


def _check_tool_pairing(messages: list[Any], blocks: list[list[dict[str, Any]]]) -> None:
    """Every ``tool_use`` is answered in the next message, and every ``tool_result`` answers one."""
    for index, message in enumerate(messages):
        previous_ids = (
            [b["id"] for b in blocks[index - 1] if b.get("type") == "tool_use"]
            if index > 0 and messages[index - 1]["role"] == "assistant"
            else []
        )
        if message["role"] == "user":
            for position, block in enumerate(blocks[index]):
                if block.get("type") == "tool_result" and block["tool_use_id"] not in previous_ids:
                    raise ApiError.invalid_request(
                        f"messages.{index}.content.{position}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                        "must have a corresponding `tool_use` block in the previous message."
                    )
        if message["role"] != "assistant":
            continue
        used = [b["id"] for b in blocks[index] if b.get("type") == "tool_use"]
        answered = (
            {b["tool_use_id"] for b in blocks[index + 1] if b.get("type") == "tool_result"}
            if index + 1 < len(messages) and messages[index + 1]["role"] == "user"
            else set()
        )
        missing = [tool_id for tool_id in used if tool_id not in answered]
        if missing:
            raise ApiError.invalid_request(
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
