"""Validation of Messages API requests: an allowlist of what may leave through the provider.

Invariant 12: nothing reaches the outside through the gateway. The provider
can fetch URLs, read uploaded files, run containers and call MCP servers on a
request's behalf, and every such feature is a way out for the sandbox's data.
So this module forwards only what it knows: a fixed set of top-level fields,
content block types and their keys, image and document sources that carry
their bytes inline (``base64``, and ``text`` for documents: never ``url`` or
``file``), client-side tools only, a fixed set of request headers, and the
``anthropic-beta`` flags the run's policy names. Anything else is a 400 with a
message that says what is allowed. The envelope is a pydantic model with
``extra="forbid"`` so unknown fields get the API's own "Extra inputs are not
permitted"; the nested parts are checked by hand in the API's wording. Names
taken from a request are shown shortened and escaped in messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.gateway.wire import ApiError

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_CACHE_CONTROL_BLOCKS = 4
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
_CACHE_TTLS = ("5m", "1h")

#: Typed tools the runner executes itself. Every other typed tool (web search,
#: web fetch, code execution, ...) runs on the provider's side and would reach
#: the network on the sandbox's behalf, so the gateway refuses it.
CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "memory_")


class _CountTokensEnvelope(BaseModel):
    """Top-level fields of ``POST /v1/messages/count_tokens`` the gateway forwards.

    Left out on purpose: ``container``, ``mcp_servers``, ``service_tier``,
    ``speed``, ``inference_geo``, ``context_management``, ``output_config`` and
    the rest: they reach other systems, change where or how the request is
    processed, or are simply not needed by the runner.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    messages: list[Any]
    system: Any = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    thinking: Any = None
    cache_control: Any = None


class _MessagesEnvelope(_CountTokensEnvelope):
    """Top-level fields of ``POST /v1/messages`` the gateway forwards."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    metadata: Any = None


#: Request headers the gateway accepts: HTTP's own, the credential, the API version, betas,
#: and the SDK's ``x-stainless-*`` telemetry. None of them is forwarded except the betas.
ALLOWED_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "content-type",
        "content-length",
        "transfer-encoding",
        "user-agent",
        "x-api-key",
        "authorization",
        "anthropic-version",
        "anthropic-beta",
    }
)
ALLOWED_HEADER_PREFIXES = ("x-stainless-",)

#: Keys each content block type may carry; a type not listed here is refused.
_BLOCK_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text", "cache_control"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "document": frozenset({"type", "source", "title", "context", "citations", "cache_control"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}
#: Block types a ``tool_result`` may hold.
_TOOL_RESULT_BLOCKS = ("text", "image", "document")
#: Source types allowed per block type, each with its media types: the bytes travel inline.
_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "image": {"base64": ("image/jpeg", "image/png", "image/gif", "image/webp")},
    "document": {"base64": ("application/pdf",), "text": ("text/plain",)},
}
_CUSTOM_TOOL_KEYS = frozenset(
    {"type", "name", "description", "input_schema", "cache_control", "strict"}
)
_TYPED_TOOL_KEYS = frozenset({"type", "name", "cache_control", "max_characters"})
_THINKING_KEYS = {
    "enabled": frozenset({"type", "budget_tokens"}),
    "disabled": frozenset({"type"}),
    "adaptive": frozenset({"type"}),
}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHOWN_CHARS = 64


def shown(value: object) -> str:
    """A name or value from a request as a message may show it: plain names as they are,
    anything else escaped (``ascii``) and cut to a few dozen characters."""
    text = str(value)
    if _PLAIN_NAME.match(text):
        return text
    quoted = ascii(text)
    return quoted if len(quoted) <= _SHOWN_CHARS else quoted[: _SHOWN_CHARS - 3] + "..."


def quoted(value: object) -> str:
    """``shown(value)`` in quotes (an escaped value already carries its own)."""
    text = shown(value)
    return text if text != str(value) else f"'{text}'"


def _not_allowed(where: str, what: str, allowed: Iterable[str]) -> ApiError:
    return ApiError.invalid_request(
        f"{where}: {what} is not allowed through the Taskbox gateway "
        f"(allowed: {', '.join(allowed) or 'none'})"
    )


def check_headers(names: Iterable[str], betas: list[str], allowed_betas: Iterable[str]) -> None:
    """Refuse a header outside ``ALLOWED_HEADERS`` and a beta flag the policy does not name."""
    for name in names:
        lowered = name.lower()
        if lowered not in ALLOWED_HEADERS and not lowered.startswith(ALLOWED_HEADER_PREFIXES):
            raise _not_allowed(
                "headers",
                f"header {shown(lowered)}",
                [*sorted(ALLOWED_HEADERS), *(p + "*" for p in ALLOWED_HEADER_PREFIXES)],
            )
    allowed = list(allowed_betas)
    for beta in betas:
        if beta not in allowed:
            raise ApiError.invalid_request(
                f"anthropic-beta: {shown(beta)} is not allowed by this run's policy "
                f"(policy model.allowed_betas: {', '.join(allowed) or 'none'})"
            )


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
        where = ".".join(shown(part) for part in first["loc"])
        message = f"{where}: {first['msg']}" if where else first["msg"]
        if first["type"] == "extra_forbidden":
            message += f" (the Taskbox gateway forwards only: {', '.join(model.model_fields)})"
        raise ApiError.invalid_request(message) from None


def _check_keys(value: dict[str, Any], allowed: frozenset[str], where: str, what: str) -> None:
    extra = sorted(set(value) - allowed, key=str)
    if extra:
        raise ApiError.invalid_request(
            f"{where}.{shown(extra[0])}: Extra inputs are not permitted "
            f"(the Taskbox gateway allows {what} with: {', '.join(sorted(allowed))})"
        )


def _check_options(body: dict[str, Any]) -> None:
    """``metadata`` (only ``user_id``) and ``thinking`` (enabled, disabled or adaptive)."""
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ApiError.invalid_request("metadata: Input should be a valid dictionary or object")
        _check_keys(metadata, frozenset({"user_id"}), "metadata", "metadata")
        if not isinstance(metadata.get("user_id", ""), str | None):
            raise ApiError.invalid_request("metadata.user_id: Input should be a valid string")
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in _THINKING_KEYS:
        raise ApiError.invalid_request(
            "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"
        )
    _check_keys(thinking, _THINKING_KEYS[thinking["type"]], "thinking", "thinking")
    if thinking["type"] == "enabled" and not isinstance(thinking.get("budget_tokens"), int):
        raise ApiError.invalid_request("thinking.enabled.budget_tokens: Field required")


def _check_contents(body: dict[str, Any]) -> None:
    _check_options(body)
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
    extra = sorted(set(value) - {"type", "ttl"}, key=str)
    if extra:
        raise ApiError.invalid_request(f"{where}.{shown(extra[0])}: Extra inputs are not permitted")
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
        _check_keys(block, _BLOCK_KEYS["text"], where, "system text blocks")
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
            _check_keys(tool, _CUSTOM_TOOL_KEYS, where, "custom tools")
        elif not isinstance(kind, str):
            raise ApiError.invalid_request(f"{where}.type: Input should be a valid string")
        elif not kind.startswith(CLIENT_TOOL_PREFIXES):
            raise ApiError(
                403,
                "permission_error",
                f"{where}: tool type {quoted(kind)} runs on the provider's side and is not "
                "allowed through the Taskbox gateway",
            )
        elif not isinstance(tool.get("name"), str):
            raise ApiError.invalid_request(f"{where}.name: Field required")
        else:
            _check_keys(tool, _TYPED_TOOL_KEYS, where, "client tools")
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
    _check_schema_refs(schema, f"{where}.input_schema")


#: JSON Schema keywords that point at another document; only local ones ("#...") may pass.
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _check_schema_refs(schema: dict[str, Any], where: str) -> None:
    """Refuse a ``$ref`` to anything but this schema: a URL there is one the provider could fetch."""
    stack: list[Any] = [schema]
    while stack:  # a loop, not recursion: the schema may be nested as deep as JSON allows
        node = stack.pop()
        if isinstance(node, dict):
            for keyword in _REF_KEYWORDS:
                target = node.get(keyword)
                if target is not None and not (isinstance(target, str) and target.startswith("#")):
                    raise _not_allowed(
                        f"{where}: {keyword}",
                        f"a reference to {quoted(target)} (only local '#...' references)",
                        ["#/..."],
                    )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


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
    extra = sorted(set(choice) - allowed, key=str)
    if extra:
        raise ApiError.invalid_request(
            f"tool_choice.{kind}.{shown(extra[0])}: Extra inputs are not permitted"
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
    extra = sorted(set(message) - {"role", "content"}, key=str)
    if extra:
        raise ApiError.invalid_request(f"{where}.{shown(extra[0])}: Extra inputs are not permitted")
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


def _check_block(block: Any, where: str, allowed: Iterable[str] = tuple(_BLOCK_KEYS)) -> int:
    if not isinstance(block, dict):
        raise ApiError.invalid_request(f"{where}: Input should be a valid dictionary or object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise ApiError.invalid_request(f"{where}.type: Field required")
    allowed = tuple(allowed)
    if kind not in allowed:
        raise _not_allowed(f"{where}.type", f"a {quoted(kind)} block", allowed)
    _check_block_fields(block, kind, where)
    found = _check_tool_result(block, f"{where}.tool_result") if kind == "tool_result" else 0
    return found + _block_cache_control(block, where)


def _check_block_fields(block: dict[str, Any], kind: str, where: str) -> None:
    """The keys and fields of one block of an allowed type (``tool_result`` content aside)."""
    _check_keys(block, _BLOCK_KEYS[kind], where, f"{kind} blocks")
    if kind == "text" and not isinstance(block.get("text"), str):
        raise ApiError.invalid_request(f"{where}.text.text: Field required")
    if kind == "tool_use":
        for field, expected in (("id", str), ("name", str), ("input", dict)):
            if not isinstance(block.get(field), expected):
                raise ApiError.invalid_request(f"{where}.tool_use.{field}: Field required")
    if kind in _SOURCES:
        _check_source(block.get("source"), kind, f"{where}.{kind}.source")
    if kind == "document":
        _check_document_extras(block, f"{where}.document")
    if kind in ("thinking", "redacted_thinking"):
        for field in _BLOCK_KEYS[kind] - {"type"}:
            if not isinstance(block.get(field), str):
                raise ApiError.invalid_request(f"{where}.{kind}.{field}: Field required")


def _check_source(source: Any, kind: str, where: str) -> None:
    """An image or document source: its bytes inline, never a URL or a Files API id."""
    if not isinstance(source, dict):
        raise ApiError.invalid_request(f"{where}: Field required")
    allowed = _SOURCES[kind]
    source_type = source.get("type")
    if source_type not in allowed:
        raise _not_allowed(
            f"{where}.type",
            f"source type {quoted(source_type)} (the provider would fetch it from elsewhere)",
            allowed,
        )
    _check_keys(source, frozenset({"type", "media_type", "data"}), where, f"{source_type} sources")
    if source.get("media_type") not in allowed[source_type]:
        raise _not_allowed(
            f"{where}.media_type",
            f"media type {quoted(source.get('media_type'))}",
            allowed[source_type],
        )
    if not isinstance(source.get("data"), str):
        raise ApiError.invalid_request(f"{where}.data: Field required")


def _check_document_extras(block: dict[str, Any], where: str) -> None:
    for field in ("title", "context"):
        if not isinstance(block.get(field, ""), str | None):
            raise ApiError.invalid_request(f"{where}.{field}: Input should be a valid string")
    citations = block.get("citations")
    if citations is not None:
        if not isinstance(citations, dict):
            raise ApiError.invalid_request(
                f"{where}.citations: Input should be a valid dictionary or object"
            )
        _check_keys(citations, frozenset({"enabled"}), f"{where}.citations", "citations")
        if not isinstance(citations.get("enabled", False), bool):
            raise ApiError.invalid_request(
                f"{where}.citations.enabled: Input should be a valid boolean"
            )


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
    return sum(
        _check_block(nested, f"{where}.content.{i}", _TOOL_RESULT_BLOCKS)
        for i, nested in enumerate(inner)
    )


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
