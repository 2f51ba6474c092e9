"""Token-exact multi-turn conversations.

The sequence a trainer learns from must be exactly the tokens the policy sampled, with the
environment's tokens spliced in between. Re-rendering the history through the chat template does
not give that: Qwen3's stock template drops the ``<think>`` blocks of earlier turns, and any
template may tokenize generated text differently than it was sampled. So this builder:

* renders the prompt once (mask 0);
* appends each assistant turn's sampled ids untouched (mask 1), with their rollout logprobs;
* renders only the *delta* for environment messages: the template is applied to a fixed probe
  conversation ending in an assistant turn, with and without the new messages, and the text after
  the probe turn's end-of-turn token is tokenized on its own (mask 0). Special tokens bound that
  text on both sides, so BPE cannot merge across the seam.

Generated text is never re-tokenized.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import parse_turn
from agentrl.envs.core import Message

_PROBE = "agentrl-delta-probe-7f3a"


@dataclass
class Segment:
    """A contiguous run of tokens that came from one source."""

    kind: str  # "prompt" | "assistant" | "env" | "turn_close"
    start: int
    end: int


@dataclass
class TokenConversation:
    """A conversation as the trainer sees it: ids, loss mask, rollout logprobs, and the messages."""

    chat: ChatFormat
    """The chat format (tokenizer + template) used for the prompt and the environment deltas."""
    tools: list[dict[str, Any]] | None = None
    """Tool specs rendered into the prompt."""
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    """1 on sampled tokens, 0 on prompt, environment and template tokens."""
    logprobs: list[float | None] = field(default_factory=list)
    """Rollout-engine logprob of each sampled token; None elsewhere."""
    messages: list[Message] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    @classmethod
    def start(
        cls, chat: ChatFormat, prompt_messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> TokenConversation:
        """Begin a conversation with the rendered prompt and the generation prompt."""
        conv = cls(chat=chat, tools=tools or None, messages=[dict(m) for m in prompt_messages])
        conv._extend(chat.encode(conv.messages, conv.tools, add_generation_prompt=True), "prompt")
        return conv

    @property
    def prompt_length(self) -> int:
        return self.segments[0].end if self.segments else 0

    def _extend(self, ids: list[int], kind: str, logprobs: list[float] | None = None) -> None:
        start = len(self.ids)
        self.ids.extend(ids)
        sampled = kind == "assistant"
        self.mask.extend([1 if sampled else 0] * len(ids))
        if sampled and logprobs is not None:
            if len(logprobs) != len(ids):
                raise ValueError(f"got {len(logprobs)} logprobs for {len(ids)} sampled tokens")
            self.logprobs.extend(float(x) for x in logprobs)
        else:
            self.logprobs.extend([None] * len(ids))
        self.segments.append(Segment(kind, start, len(self.ids)))

    def add_assistant(
        self, token_ids: list[int], logprobs: list[float] | None = None, message: Message | None = None
    ) -> Message:
        """Append one sampled assistant turn exactly as generated; returns its parsed message."""
        token_ids = [int(t) for t in token_ids]
        self._extend(token_ids, "assistant", logprobs)
        if message is None:
            text = self.chat.tokenizer.decode(token_ids, skip_special_tokens=False)
            message = parse_turn(text).to_message()
        self.messages.append(message)
        return message

    @property
    def last_turn_closed(self) -> bool:
        """Whether the last assistant turn ended with the end-of-turn token (not cut by a length limit)."""
        return bool(self.ids) and self.ids[-1] == self.chat.end_of_turn_id

    def add_env(self, messages: list[Message], *, add_generation_prompt: bool = True) -> list[int]:
        """Append environment messages (tool results, feedback) by rendering only the delta.

        Environment text is untrusted (it includes sandbox output): special tokens written in it
        are defused so that a tool cannot forge a turn boundary, and unencodable characters are
        replaced.
        """
        if not messages:
            return []
        if not self.segments or self.segments[-1].kind not in ("assistant", "turn_close"):
            raise ValueError(
                "environment messages must follow an assistant turn; pass all of one turn's messages at once"
            )
        if not self.last_turn_closed:
            # The turn was cut by a token limit; close it as the template would, without training on it.
            self._extend([self.chat.end_of_turn_id], "turn_close")
        clean = [self._sanitize(m) for m in messages]
        ids = self.delta_ids(clean, add_generation_prompt=add_generation_prompt)
        self._extend(ids, "env")
        self.messages.extend(clean)
        return ids

    @functools.cached_property
    def _special_tokens(self) -> list[str]:
        tok = self.chat.tokenizer
        added = getattr(tok, "added_tokens_decoder", {}) or {}
        names = {t.content for t in added.values() if getattr(t, "special", False)} | set(tok.all_special_tokens)
        return sorted(n for n in names if len(n) > 1)

    def _sanitize(self, message: Message) -> Message:
        content = message.get("content")
        if not isinstance(content, str):
            return dict(message)
        content = content.encode("utf-8", errors="replace").decode("utf-8")
        for special in self._special_tokens:
            if special in content:
                # A zero-width space after the first character: same text to a reader, not a special token.
                content = content.replace(special, special[0] + "\u200b" + special[1:])
        return {**message, "content": content}

    def delta_ids(self, messages: list[Message], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids the template writes for ``messages`` after an assistant turn."""
        probe = [{"role": "user", "content": _PROBE}, {"role": "assistant", "content": _PROBE}]
        text = self.chat.render(probe + list(messages), self.tools, add_generation_prompt=add_generation_prompt)
        eot = self.chat.end_of_turn
        cut = text.index(eot, text.rindex(_PROBE)) + len(eot)
        return self.chat.tokenizer.encode(text[cut:], add_special_tokens=False)

    def assistant_ids(self) -> list[list[int]]:
        """The sampled ids of each assistant turn, in order."""
        return [self.ids[s.start : s.end] for s in self.segments if s.kind == "assistant"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "mask": self.mask,
            "logprobs": self.logprobs,
            "messages": self.messages,
            "segments": [(s.kind, s.start, s.end) for s in self.segments],
        }


class DemonstrationError(ValueError):
    """A demonstration cannot be rendered as the policy would sample it."""


def _call_key(call: dict[str, Any]) -> tuple[str, str]:
    fn = call.get("function", call)
    return str(fn.get("name")), json.dumps(fn.get("arguments", {}), sort_keys=True)


def _decoded_arguments(message: Message) -> Message:
    """OpenAI-style messages carry tool-call arguments as a JSON string; templates render a mapping."""
    calls = message.get("tool_calls")
    if not calls:
        return dict(message)
    out = []
    for call in calls:
        fn = dict(call.get("function", {}))
        if isinstance(fn.get("arguments"), str):
            try:
                fn["arguments"] = json.loads(fn["arguments"])
            except json.JSONDecodeError as exc:
                raise DemonstrationError(f"tool call {fn.get('name')!r}: arguments are not JSON ({exc})") from None
        out.append({**call, "function": fn})
    return {**message, "tool_calls": out}


def demonstration(
    chat: ChatFormat, messages: list[Message], tools: list[dict[str, Any]] | None = None
) -> TokenConversation:
    """A written conversation as the policy would have produced it, for supervised fine-tuning.

    The prompt (everything before the first assistant message) is rendered exactly as a rollout's,
    and environment messages (tool results) go through the same delta rendering. Each assistant
    message becomes the tokens the template writes for it, up to and including the end-of-turn token,
    so the mask is 1 on exactly what a rollout would sample, and 0 on prompts and tool results.

    Every assistant turn is decoded and parsed back with the rollouts' tool-call parser; a turn whose
    tool calls or text do not come back the same raises :class:`DemonstrationError`, because SFT on it
    would teach a format that GRPO's parser reads differently.
    """
    messages = [_decoded_arguments(m) for m in messages]
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
    if first is None:
        raise DemonstrationError("a demonstration needs at least one assistant message")
    conv = TokenConversation.start(chat, list(messages[:first]), tools)
    pending: list[Message] = []
    eot = chat.end_of_turn
    for i in range(first, len(messages)):
        msg = messages[i]
        if msg.get("role") != "assistant":
            pending.append(msg)
            continue
        if pending:
            conv.add_env(pending)
            pending = []
        # The turn's text is what the template adds for this message after the generation prompt.
        history = [dict(m) for m in messages[:i]]
        before = chat.render(history, conv.tools, add_generation_prompt=True)
        after = chat.render([*history, dict(msg)], conv.tools, add_generation_prompt=False)
        if not after.startswith(before) or eot not in after[len(before) :]:
            raise DemonstrationError(f"message {i}: the chat template renders this assistant turn in a way that "
                                     "does not extend the generation prompt; it cannot be a sampled turn")  # fmt: skip
        text = after[len(before) :]
        text = text[: text.index(eot) + len(eot)]
        ids = chat.tokenizer.encode(text, add_special_tokens=False)
        parsed = conv.add_assistant(ids)
        want = sorted(_call_key(c) for c in msg.get("tool_calls") or [])
        got = sorted(_call_key(c) for c in parsed.get("tool_calls") or [])
        if want != got or (parsed.get("content") or "").strip() != (msg.get("content") or "").strip():
            raise DemonstrationError(
                f"message {i}: rendered and parsed back, the assistant turn differs "
                f"(wrote {want or msg.get('content')!r}, parsed {got or parsed.get('content')!r})"
            )
        conv.messages[-1] = dict(msg)
    if pending:
        raise DemonstrationError("a demonstration must end with an assistant message")
    return conv


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two id lists differ, or None if one is a prefix of the other
    and they have the same length."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
