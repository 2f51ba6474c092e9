"""Parse an assistant turn in the Qwen3/Hermes format into reasoning, visible text and tool calls.

    <think>private reasoning</think>
    Visible text.
    <tool_call>
    {"name": "add", "arguments": {"a": 1, "b": 2}}
    </tool_call>

Policies under RL produce every kind of broken output. This parser never raises: each problem
becomes a :class:`ParseError` whose message is written for the model, so the environment can send
it back as a ``tool`` message and the episode continues. Problems it reports:

* invalid JSON, an empty call, a call body over the size limit,
* a missing ``name``, non-object ``arguments``, a payload that is not an object,
* an unclosed ``<tool_call>``, a stray or duplicated ``</tool_call>``,
* a ``<tool_call>`` inside ``<think>`` (it would never be executed),
* more calls in one turn than allowed.

Unknown tool names and schema violations are checked later, by the tool runner, which knows the tools.

Why not ``transformers``' ``parse_response`` (via TRL)? On malformed output it gives up and returns
the whole turn as plain text, which an environment would then grade as a final answer: a broken
call would be scored as a wrong answer instead of being explained to the model. The tests use it
as an oracle: on well-formed Qwen3 output both parsers must read the same calls.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Turn terminators a decoded completion may end with; they are not part of the message.
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
DEFAULT_MAX_CALL_CHARS = 16_384
DEFAULT_MAX_CALLS = 8
_TAG = re.compile(re.escape(OPEN) + "|" + re.escape(CLOSE))


@dataclass
class ToolCall:
    """A well-formed call: a tool name and a JSON-object of arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def to_message_call(self) -> dict[str, Any]:
        """The structured form chat templates render under an assistant message's ``tool_calls``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ParseError:
    """A call the model attempted but that cannot be executed, with a message for the model."""

    kind: str
    message: str
    name: str | None = None


@dataclass
class ParsedTurn:
    """One assistant turn, split into parts."""

    content: str
    """Visible text with tool-call blocks removed."""
    reasoning: str | None
    """Text inside ``<think>``, or None when the turn had no reasoning block."""
    calls: list[ToolCall]
    errors: list[ParseError]

    @property
    def attempted_tool_use(self) -> bool:
        """True if the model tried to call a tool, successfully or not; the turn is then not a final answer."""
        return bool(self.calls or self.errors)

    def to_message(self) -> dict[str, Any]:
        """The assistant message in the structured form templates and logs use."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.calls:
            msg["tool_calls"] = [c.to_message_call() for c in self.calls]
        return msg


def strip_end_markers(text: str) -> str:
    """Remove trailing end-of-turn tokens that a decoded completion may carry."""
    changed = True
    while changed:
        changed = False
        stripped = text.rstrip()
        for marker in END_MARKERS:
            if stripped.endswith(marker):
                text = stripped[: -len(marker)]
                changed = True
    return text


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split ``text`` into (reasoning, visible).

    Handles ``<think>..</think>``, a closing tag without an opening one (templates that put
    ``<think>`` into the generation prompt) and an unclosed ``<think>`` (a turn cut off while
    thinking: everything after it is reasoning).
    """
    start = text.find(THINK_OPEN)
    end = text.find(THINK_CLOSE)
    if start != -1 and (end == -1 or start < end):
        before = text[:start]
        end = text.find(THINK_CLOSE, start)
        if end == -1:
            return text[start + len(THINK_OPEN) :].strip(), before.strip()
        reasoning = text[start + len(THINK_OPEN) : end]
        return reasoning.strip(), (before + text[end + len(THINK_CLOSE) :]).strip()
    if end != -1:
        return text[:end].strip(), text[end + len(THINK_CLOSE) :].strip()
    return None, text.strip()


def _decode_call(body: str, max_chars: int) -> ToolCall | ParseError:
    raw = body.strip()
    if not raw:
        return ParseError("empty_call", "empty <tool_call>: put a JSON object with 'name' and 'arguments' inside it.")
    if len(raw) > max_chars:
        return ParseError(
            "too_large",
            f"tool call is {len(raw)} characters, over the limit of {max_chars}. Send smaller arguments.",
        )
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        return ParseError("invalid_json", f"tool call is not valid JSON ({detail or 'nested too deeply'}).")
    if not isinstance(payload, dict):
        return ParseError(
            "not_object",
            f"tool call must be a JSON object with 'name' and 'arguments', got {type(payload).__name__}.",
        )
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        return ParseError("missing_name", "tool call has no 'name' string.")
    name = name.strip()
    args = payload.get("arguments", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ParseError(
            "arguments_not_object",
            f"'arguments' of {name!r} must be a JSON object, got {type(args).__name__}.",
            name=name,
        )
    return ToolCall(name=name, arguments=args)


def parse_turn(
    text: str,
    *,
    max_call_chars: int = DEFAULT_MAX_CALL_CHARS,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> ParsedTurn:
    """Parse one assistant turn. Never raises; see the module docstring for what is reported."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    reasoning, visible = split_reasoning(strip_end_markers(text))
    errors: list[ParseError] = []
    calls: list[ToolCall] = []
    if reasoning is not None and (OPEN in reasoning or CLOSE in reasoning):
        errors.append(
            ParseError(
                "call_in_think",
                "a <tool_call> inside <think> is never executed; close </think> first, then call the tool.",
            )
        )

    content_parts: list[str] = []
    pos = 0
    open_at: int | None = None  # index just after an unmatched <tool_call>
    for m in _TAG.finditer(visible):
        if m.group() == OPEN:
            if open_at is not None:
                errors.append(
                    ParseError("unclosed", "a <tool_call> was not closed with </tool_call> before the next one.")
                )
            else:
                content_parts.append(visible[pos : m.start()])
            open_at = m.end()
        else:
            if open_at is None:
                errors.append(
                    ParseError(
                        "stray_close",
                        "found </tool_call> without a matching <tool_call> (duplicated closing tag?).",
                    )
                )
                content_parts.append(visible[pos : m.start()])
            else:
                parsed = _decode_call(visible[open_at : m.start()], max_call_chars)
                if isinstance(parsed, ParseError):
                    errors.append(parsed)
                elif len(calls) >= max_calls:
                    errors.append(
                        ParseError(
                            "too_many_calls",
                            f"at most {max_calls} tool calls per turn; the rest were ignored.",
                        )
                    )
                else:
                    calls.append(parsed)
                open_at = None
            pos = m.end()
    if open_at is not None:
        errors.append(ParseError("unclosed", "<tool_call> was opened but never closed with </tool_call>."))
    else:
        content_parts.append(visible[pos:])
    # Report "too many calls" once, not once per extra call.
    seen_too_many = False
    deduped = []
    for e in errors:
        if e.kind == "too_many_calls":
            if seen_too_many:
                continue
            seen_too_many = True
        deduped.append(e)
    content = "\n".join(p.strip() for p in content_parts if p.strip())
    return ParsedTurn(content=content, reasoning=reasoning, calls=calls, errors=deduped)


def render_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call in the Hermes text format, as Qwen3's template writes it."""
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"
