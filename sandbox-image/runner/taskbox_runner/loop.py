"""The generate-verify loop: the model works with its tools, the checks run, failures go back.

One *round* is the model working until it ends its turn (or uses up the calls
of a round), followed by the checks. The loop stops when the checks pass, the
rounds, tokens or wall-clock are spent, the model refuses or runs out of
context, or the API answers with an error the SDK would not retry.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from taskbox_runner.model_sdk import wait_ready
from taskbox_runner.progress import report_progress
from taskbox_runner.tools import (
    MissingContextLog,
    ModelTools,
    ToolOutcome,
    WorkspaceEditor,
    tool_definitions,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import anthropic
    from anthropic.types import (
        Message,
        MessageParam,
        TextBlockParam,
        ToolUnionParam,
        Usage,
    )

    from taskbox_runner.checks import VerificationOutcome
    from taskbox_runner.prompt import Prompt
    from taskbox_wire.config import RunConfig

logger = logging.getLogger(__name__)

GATEWAY_BASE_URL = "http://gateway"
#: The SDK's own retries (connection errors, 408/409/429/5xx unless x-should-retry says no).
SDK_MAX_RETRIES = 3
#: Model calls allowed in one round before the checks run anyway.
DEFAULT_MAX_CALLS_PER_ROUND = 40
#: A truncated tool call is re-asked this many times in a row before the loop gives up.
MAX_CONSECUTIVE_TRUNCATIONS = 2
#: Longest single request; non-streaming calls need an explicit timeout for large max_tokens.
MAX_REQUEST_SECONDS = 600.0
_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_MAX_REASON_DETAIL = 300

Block = dict[str, Any]
Msg = dict[str, Any]


def make_client(config: RunConfig) -> anthropic.Anthropic:
    """The SDK client, speaking to the gateway with the per-run token.

    Over TCP at ``gateway_url`` when the run has one (a Kubernetes Pod), else over the
    gateway's Unix socket.

    The SDK is imported here, not at the top: its import (1-2 s) runs on a background
    thread while the run sets up (:mod:`taskbox_runner.model_sdk`), and this joins it.
    """
    wait_ready()
    import anthropic  # noqa: PLC0415 - see the docstring
    import httpx2  # noqa: PLC0415 - loaded by the SDK's import already

    # getattr: a stand-in config of an older shape (one test's) has no gateway_url.
    gateway_url = config.gateway_url
    # An explicit transport also keeps proxy variables of the environment out of the way.
    if gateway_url is not None:
        transport = httpx2.HTTPTransport()
    else:
        transport = httpx2.HTTPTransport(uds=str(config.gateway_socket))
    return anthropic.Anthropic(
        api_key=config.gateway_token.get_secret_value(),
        base_url=gateway_url or GATEWAY_BASE_URL,
        http_client=anthropic.DefaultHttpxClient(transport=transport),
        max_retries=SDK_MAX_RETRIES,
    )


@dataclass(frozen=True)
class LoopLimits:
    """The loop's budget; ``deadline`` is on the loop's clock (monotonic seconds)."""

    max_rounds: int
    """How many times failing checks may go back to the model (so at most max_rounds + 1 checks)."""
    max_total_tokens: int
    max_tokens_per_request: int
    deadline: float
    max_calls_per_round: int = DEFAULT_MAX_CALLS_PER_ROUND


@dataclass
class TokenUsage:
    """Tokens used so far, as the API reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, usage: Usage) -> None:
        """Count one response's usage."""
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_input_tokens += usage.cache_creation_input_tokens or 0
        self.cache_read_input_tokens += usage.cache_read_input_tokens or 0

    @property
    def total(self) -> int:
        """Every token processed (cache reads included): what the budget counts."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


@dataclass
class LoopOutcome:
    """How the loop ended and the newest verification report."""

    passed: bool
    reason: str | None
    report: VerificationOutcome | None
    rounds: int
    model_calls: int
    usage: TokenUsage
    final_text: str = ""
    stale_report: bool = False
    """True when files changed after ``report`` was made (no time was left to check again)."""


class _Stop(Exception):  # noqa: N818 - internal control flow, caught in run()
    """Ends the loop with a reason."""

    def __init__(self, reason: str, *, passed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.passed = passed


def describe_api_error(exc: anthropic.APIError) -> str:
    """One sentence on an API failure, for the result's reason (no headers, no token)."""
    import anthropic  # noqa: PLC0415 - loaded with the client already (see make_client)

    if isinstance(exc, anthropic.APIStatusError):
        kind, message = "error", ""
        body = exc.body
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                kind = str(error.get("type", kind))
                message = str(error.get("message", ""))
        detail = f": {message[:_MAX_REASON_DETAIL]}" if message else ""
        return f"the model API answered {exc.status_code} {kind}{detail}"
    if isinstance(exc, anthropic.APITimeoutError):
        return "the model request timed out after the SDK's retries"
    if isinstance(exc, anthropic.APIConnectionError):
        return "the model gateway could not be reached after the SDK's retries"
    return f"the model API call failed: {type(exc).__name__}"


def content_to_params(message: Message) -> list[Block]:
    """The response's content blocks as request params, to send back verbatim."""
    blocks: list[Block] = []
    for block in message.content:
        if block.type == "text":
            if block.text:  # the API refuses empty text blocks in a request
                blocks.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            blocks.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
        else:
            blocks.append(block.model_dump(mode="json", exclude_none=True))
    return blocks


def with_cache_breakpoints(messages: Sequence[Msg], feedback_index: int | None) -> list[Msg]:
    """A copy of ``messages`` with cache_control on the stable points (at most three here).

    Breakpoints: the end of the first user message (task, contract, files), the
    newest feedback message, and the newest user message (so each turn reads
    the previous turn's prefix from the cache). With the system block's one,
    that is at most four, the API's limit.
    """
    marked = {0}
    if feedback_index is not None:
        marked.add(feedback_index)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is not None:
        marked.add(last_user)
    out: list[Msg] = []
    for index, message in enumerate(messages):
        content = message["content"]
        if index in marked and message["role"] == "user" and content:
            content = [*content[:-1], {**content[-1], "cache_control": dict(_EPHEMERAL)}]
        out.append({"role": message["role"], "content": content})
    return out


@dataclass
class _RoundState:
    rounds: int = 0
    calls_in_round: int = 0
    truncations: int = 0
    feedback_index: int | None = None
    report: VerificationOutcome | None = None
    report_writes: int = -1
    final_text: str = ""
    calls: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)


class GenerateVerifyLoop:
    """Drives the model with the tools until the checks pass or the budget is spent."""

    def __init__(
        self,
        *,
        client: anthropic.Anthropic,
        model: str,
        prompt: Prompt,
        editor: WorkspaceEditor,
        missing_context: MissingContextLog,
        verify: Callable[[], VerificationOutcome],
        limits: LoopLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._model = model
        self._editor = editor
        self._verify = verify
        self._limits = limits
        self._clock = clock
        self._tools = ModelTools(
            editor=editor, missing_context=missing_context, run_checks=self._run_checks_tool
        )
        self._tool_params = cast("list[ToolUnionParam]", tool_definitions())
        system: list[TextBlockParam] = [copy.copy(b) for b in prompt.system]
        system[-1]["cache_control"] = {"type": "ephemeral"}
        self._system = system
        self._messages: list[Msg] = [
            {"role": "user", "content": [dict(b) for b in prompt.first_user]}
        ]
        self._state = _RoundState()

    # ------------------------------------------------------------------ public

    def run(self) -> LoopOutcome:
        """Run to the end; never raises for model or API behaviour."""
        state = self._state
        try:
            while True:
                self._check_budget()
                response = self._call_model()
                self._handle(response)
        except _Stop as stop:
            passed, reason = stop.passed, (None if stop.passed else stop.reason)
        logger.info(
            "loop ended after %d rounds and %d model calls (%d tokens): %s",
            state.rounds,
            state.calls,
            state.usage.total,
            reason or "checks passed",
        )
        stale = self._refresh_final_report()
        if not passed and not stale and state.report is not None and state.report.passed:
            # The checks are the arbiter: the files pass them, however the loop ended.
            logger.info("the loop stopped (%s) but the checks pass on the final files", reason)
            passed, reason = True, None
        return LoopOutcome(
            passed=passed,
            reason=reason,
            report=state.report,
            rounds=state.rounds,
            model_calls=state.calls,
            usage=state.usage,
            final_text=state.final_text,
            stale_report=stale,
        )

    # ------------------------------------------------------------------ model calls

    def _check_budget(self) -> None:
        state, limits = self._state, self._limits
        if state.usage.total >= limits.max_total_tokens:
            raise _Stop(f"the token budget ({limits.max_total_tokens} tokens) is spent")
        if self._clock() >= limits.deadline:
            raise _Stop("the wall-clock budget is spent")

    def _call_model(self) -> Message:
        state, limits = self._state, self._limits
        remaining = limits.max_total_tokens - state.usage.total
        max_tokens = max(1, min(limits.max_tokens_per_request, remaining))
        timeout = max(1.0, min(MAX_REQUEST_SECONDS, limits.deadline - self._clock()))
        messages = with_cache_breakpoints(self._messages, state.feedback_index)
        import anthropic  # noqa: PLC0415 - loaded with the client already (see make_client)

        try:
            response = self._client.messages.create(
                model=self._model,
                max_tokens=max_tokens,
                system=self._system,
                tools=self._tool_params,
                messages=cast("list[MessageParam]", messages),
                timeout=timeout,
            )
        except anthropic.APIError as exc:
            logger.warning("model call failed: %s", type(exc).__name__)
            raise _Stop(describe_api_error(exc)) from exc
        state.calls += 1
        state.calls_in_round += 1
        state.usage.add(response.usage)
        report_progress("model", f"model call {state.calls}: {response.stop_reason}")
        logger.info(
            "model call %d: stop_reason=%s input=%d output=%d cache_read=%s cache_write=%s",
            state.calls,
            response.stop_reason,
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.usage.cache_read_input_tokens,
            response.usage.cache_creation_input_tokens,
        )
        return response

    def _handle(self, response: Message) -> None:
        state = self._state
        blocks = content_to_params(response)
        texts = [b["text"] for b in blocks if b["type"] == "text" and b["text"].strip()]
        if texts:
            state.final_text = "\n".join(texts)
        reason = response.stop_reason
        if reason == "refusal":
            raise _Stop("the model refused to continue (stop_reason refusal)")
        if reason == "model_context_window_exceeded":
            raise _Stop("the conversation outgrew the model's context window")
        if reason == "pause_turn":
            # The turn is not over: send it back as it is and let the model continue it.
            self._append_assistant(blocks)
            return
        if reason == "max_tokens" and blocks and blocks[-1]["type"] == "tool_use":
            self._retry_truncated(blocks)
            return
        state.truncations = 0
        self._append_assistant(blocks)
        results = self._run_tools(blocks)
        if results:
            if state.calls_in_round >= self._limits.max_calls_per_round:
                logger.info(
                    "round %d used %d calls; checking now", state.rounds + 1, state.calls_in_round
                )
                self._end_round(results)
            else:
                self._append_user(results)
            return
        # end_turn, stop_sequence, or max_tokens in plain text: the model is done for now.
        self._end_round([])

    def _retry_truncated(self, blocks: list[Block]) -> None:
        state = self._state
        state.truncations += 1
        cut = blocks[-1]
        if state.truncations > MAX_CONSECUTIVE_TRUNCATIONS:
            raise _Stop(
                f"the model's replies kept hitting the {self._limits.max_tokens_per_request}-token "
                f"output limit inside a tool call"
            )
        kept = blocks[:-1]
        self._append_assistant(
            kept or [{"type": "text", "text": "(reply cut off at the output token limit)"}]
        )
        results = self._run_tools(kept)
        note: Block = {
            "type": "text",
            "text": (
                f"Your reply reached the output limit ({self._limits.max_tokens_per_request} tokens) "
                f"while writing a {cut.get('name')} call, so that call was not run. Send it again in "
                f"smaller pieces: create the file with part of the text, then add the rest with "
                f"insert or str_replace."
            ),
        }
        logger.info(
            "tool call %s was cut off at max_tokens; asking for smaller pieces", cut.get("name")
        )
        self._append_user([*results, note])

    def _append_assistant(self, blocks: list[Block]) -> None:
        last = self._messages[-1]
        if last["role"] == "assistant":
            # The previous turn paused (pause_turn): this response continues that same turn.
            last["content"] = [*last["content"], *blocks]
        else:
            # The API refuses an empty assistant message; an empty reply still takes its turn.
            placeholder: list[Block] = [{"type": "text", "text": "(no reply)"}]
            self._messages.append({"role": "assistant", "content": blocks or placeholder})

    def _append_user(self, blocks: list[Block]) -> None:
        self._messages.append({"role": "user", "content": blocks})

    # ------------------------------------------------------------------ tools and checks

    def _run_tools(self, blocks: list[Block]) -> list[Block]:
        results: list[Block] = []
        for block in blocks:
            if block["type"] != "tool_use":
                continue
            name = str(block.get("name"))
            tool_input = block.get("input")
            summary = ""
            if isinstance(tool_input, dict):
                raw = " ".join(str(tool_input.get(k, "")) for k in ("command", "path")).strip()
                # Model-chosen text goes to the controller's log stream: no escapes, bounded.
                summary = "".join(c if c.isprintable() else "?" for c in raw[:200])
            outcome: ToolOutcome = self._tools.run(name, tool_input)
            logger.info("tool %s %s -> %s", name, summary, "error" if outcome.is_error else "ok")
            result: Block = {
                "type": "tool_result",
                "tool_use_id": block["id"],
                "content": outcome.text or "(no output)",
            }
            if outcome.is_error:
                result["is_error"] = True
            results.append(result)
        return results

    def _verify_now(self) -> VerificationOutcome:
        state = self._state
        writes = self._editor.write_count
        try:
            report = self._verify()
        except Exception as exc:
            logger.exception("the verifier failed")
            raise _Stop(
                f"the checks could not run: {type(exc).__name__}: {str(exc)[:_MAX_REASON_DETAIL]}"
            ) from exc
        state.report, state.report_writes = report, writes
        logger.info("checks %s", "passed" if report.passed else "failed")
        failed = [c.name for c in report.constraints if not c.passed]
        report_progress(
            "checks",
            "all checks pass" if report.passed else "checks failed: " + ", ".join(failed),
        )
        return report

    def _run_checks_tool(self) -> str:
        report = self._verify_now()
        if report.passed:
            return "All checks pass."
        return report.feedback() or "The checks failed (no details were reported)."

    def _end_round(self, trailing_results: list[Block]) -> None:
        state = self._state
        state.rounds += 1
        state.calls_in_round = 0
        report_progress("round", f"round {state.rounds} ended; verifying")
        if state.report is not None and state.report_writes == self._editor.write_count:
            report = state.report  # run_checks already checked exactly these files
        else:
            report = self._verify_now()
        if report.passed:
            raise _Stop("checks passed", passed=True)
        # max_rounds counts how often failures may go back to the model (the policy's meaning).
        chances_left = self._limits.max_rounds - (state.rounds - 1)
        if chances_left <= 0:
            raise _Stop(
                f"the checks still fail after {state.rounds} rounds "
                f"(failures went back to the model {self._limits.max_rounds} times, the round budget)"
            )
        feedback = report.feedback() or "The checks failed (no details were reported)."
        text = (
            f"The checks failed (round {state.rounds}; this is feedback {state.rounds} of at most "
            f"{self._limits.max_rounds}). Fix these, in this order, then end your turn again:"
            f"\n\n{feedback}"
        )
        self._append_user([*trailing_results, {"type": "text", "text": text}])
        state.feedback_index = len(self._messages) - 1

    def _refresh_final_report(self) -> bool:
        """Re-run the checks if files changed since the last report; True if it stays stale."""
        state = self._state
        if self._editor.write_count in (0, state.report_writes):
            return False
        if self._clock() >= self._limits.deadline:
            return True
        try:
            self._verify_now()
        except _Stop as stop:
            logger.warning("final check failed to run: %s", stop.reason)
            return True
        return False
