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
import math
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


_TAGS = re.compile("|".join(re.escape(t) for t in (THINK_OPEN, THINK_CLOSE, OPEN, CLOSE)))
_DECODER = json.JSONDecoder(parse_constant=lambda c: _reject_constant(c), parse_float=lambda f: _finite_float(f))
MAX_ERRORS = 8


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    # 1e999 would read as inf: the NaN/Infinity the constants above refuse, reached by another spelling.
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal[:40]} is not a finite number")
    return value


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split ``text`` into (reasoning, visible) without looking inside tool calls; see :func:`parse_turn`."""
    turn = parse_turn(text)
    return turn.reasoning, turn.content


def validate_payload(payload: Any) -> ToolCall | ParseError:
    """Check a decoded call object: a JSON object with a string ``name`` and object ``arguments``."""
    if not isinstance(payload, dict):
        return ParseError(
            "not_object",
            f"tool call must be a JSON object with 'name' and 'arguments', got {type(payload).__name__}.",
        )
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        return ParseError("missing_name", "tool call has no 'name' string.")
    name = name.strip()[:200]
    args = payload.get("arguments", payload.get("parameters", {}))  # some models say "parameters"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ParseError(
            "arguments_not_object",
            f"'arguments' of {name!r} must be a JSON object, got {type(args).__name__}.",
            name=name,
        )
    return ToolCall(name=name, arguments=args)


def decode_json(raw: str, max_chars: int) -> tuple[Any, ParseError | None]:
    """Decode untrusted JSON text; every failure (syntax, size, depth, huge ints, NaN) becomes a ParseError."""
    if len(raw) > max_chars:
        return None, ParseError(
            "too_large", f"tool call is {len(raw)} characters, over the limit of {max_chars}. Send smaller arguments."
        )
    try:
        return _DECODER.decode(raw), None
    except json.JSONDecodeError as exc:
        return None, ParseError("invalid_json", f"tool call is not valid JSON ({exc.msg} at column {exc.colno}).")
    except (ValueError, RecursionError) as exc:  # 4300-digit int limit, NaN, nesting depth
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        return None, ParseError("invalid_json", f"tool call is not valid JSON ({detail}).")


class _Finder:
    """``str.find`` that remembers its last answer per tag, so a turn with thousands of tags stays linear."""

    def __init__(self, text: str):
        self.text = text
        self.memo: dict[str, tuple[int, int]] = {}

    def find(self, tag: str, start: int) -> int:
        hit = self.memo.get(tag)
        if hit is not None and hit[0] <= start and (hit[1] == -1 or hit[1] >= start):
            return hit[1]
        found = self.text.find(tag, start)
        self.memo[tag] = (start, found)
        return found


def _parse_call(text: str, start: int, max_chars: int, finder: _Finder) -> tuple[ToolCall | ParseError, int]:
    """Parse the call whose ``<tool_call>`` ends at ``start``; return it and where scanning resumes.

    The JSON is decoded in place, so tags inside its strings (``"print('</tool_call>')"``) are data.
    """
    j = start
    while j < len(text) and text[j] in " \t\r\n":
        j += 1
    close = finder.find(CLOSE, j)
    reopen = finder.find(OPEN, j)
    if text.startswith(CLOSE, j):
        return ParseError(
            "empty_call", "empty <tool_call>: put a JSON object with 'name' and 'arguments' inside it."
        ), j + len(CLOSE)
    try:
        payload, used = _DECODER.raw_decode(text[j : j + max_chars + 1])
        end = j + used if used <= max_chars else -1  # a value that fills the slice may be cut by it: too large
    except (ValueError, RecursionError):
        payload, end = None, -1
    if end != -1:
        k = end
        while k < len(text) and text[k] in " \t\r\n":
            k += 1
        if text.startswith(CLOSE, k):
            return validate_payload(payload), k + len(CLOSE)
        # The JSON itself is whole, so a </tool_call> inside one of its strings is data, not the close tag:
        # look for the close after it, or the model is told its valid JSON is invalid.
        close, reopen = finder.find(CLOSE, end), finder.find(OPEN, end)
        if close != -1 and (reopen == -1 or close < reopen):
            return ParseError("invalid_json", "tool call has extra text after its JSON object."), close + len(CLOSE)
    # Not a clean "<tool_call> JSON </tool_call>": say what is wrong with the text up to the close tag.
    if close == -1 or (reopen != -1 and reopen < close):
        resume = reopen if reopen != -1 and (close == -1 or reopen < close) else len(text)
        return ParseError("unclosed", "<tool_call> was not closed with </tool_call>."), resume
    body = text[j:close].strip()
    _, err = decode_json(body, max_chars)
    if err is None:
        err = ParseError("invalid_json", "tool call has extra text after its JSON object.")
    return err, close + len(CLOSE)


def parse_turn(
    text: str,
    *,
    max_call_chars: int = DEFAULT_MAX_CALL_CHARS,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> ParsedTurn:
    """Parse one assistant turn. Never raises; see the module docstring for what is reported.

    One left-to-right scan over the tags: text inside ``<think>`` is reasoning, each ``<tool_call>``
    is decoded in place, and a ``</think>`` before any other tag closes reasoning that the template
    opened in the prompt. Tags inside a call's JSON strings are never seen as tags.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = strip_end_markers(text)
    content: list[str] = []
    reasoning: list[str] | None = None  # None: the turn has no reasoning block at all
    calls: list[ToolCall] = []
    errors: list[ParseError] = []
    in_think = False
    pos = 0
    first_tag = True
    finder = _Finder(text)
    while (m := _TAGS.search(text, pos)) is not None:
        (reasoning if in_think else content).append(text[pos : m.start()])
        tag, pos = m.group(), m.end()
        if tag == THINK_OPEN:
            if reasoning is None:
                reasoning = []
            in_think = True
        elif tag == THINK_CLOSE:
            if not in_think and first_tag:  # <think> was in the prompt: what came before is reasoning
                reasoning = content[:]
                content.clear()
            in_think = False
        elif tag == OPEN:
            parsed, pos = _parse_call(text, pos, max_call_chars, finder)
            if in_think:
                errors.append(
                    ParseError(
                        "call_in_think",
                        "a <tool_call> inside <think> is never executed; close </think> first, then call the tool.",
                    )
                )
            elif isinstance(parsed, ParseError):
                errors.append(parsed)
            elif len(calls) >= max_calls:
                errors.append(
                    ParseError("too_many_calls", f"at most {max_calls} tool calls per turn; the rest were ignored.")
                )
            else:
                calls.append(parsed)
        else:  # a </tool_call> with no open call
            errors.append(
                ParseError(
                    "stray_close", "found </tool_call> without a matching <tool_call> (duplicated closing tag?)."
                )
            )
        first_tag = False
    (reasoning if in_think else content).append(text[pos:])
    return ParsedTurn(
        content="\n".join(p.strip() for p in content if p.strip()),
        reasoning="\n".join(p.strip() for p in reasoning if p.strip()) if reasoning is not None else None,
        calls=calls,
        errors=_cap_errors(errors),
    )


def _cap_errors(errors: list[ParseError]) -> list[ParseError]:
    """Each distinct problem once, and at most MAX_ERRORS in all: the model needs the lesson, not 10,000 copies."""
    out: list[ParseError] = []
    seen: set[tuple[str, str]] = set()
    for e in errors:
        if (e.kind, e.message) not in seen:
            seen.add((e.kind, e.message))
            out.append(e)
    if len(out) > MAX_ERRORS:
        extra = len(out) - MAX_ERRORS + 1
        out = [
            *out[: MAX_ERRORS - 1],
            ParseError("too_many_errors", f"{extra} more malformed tool calls were not shown."),
        ]
    return out


def render_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call in the Hermes text format, as Qwen3's template writes it."""
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"
