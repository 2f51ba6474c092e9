"""Token-exact stitching of an agent harness's requests into training sequences.

A harness (the user's agent code) sends the whole conversation with every request, as messages. The
policy must not be trained on a re-rendering of that text: the chat template may drop earlier
``<think>`` blocks (Qwen3's does), and any template may tokenize sampled text differently than it was
sampled. So, for each request of an episode, :class:`Stitcher` decides where the prompt comes from:

* **continued (messages)**: the request's messages are the previous request's, then the assistant
  message the endpoint answered with, then new messages (tool results, a user turn). The sequence goes
  on from the ids the model saw and sampled, with only the new messages rendered as a delta (mask 0),
  exactly as the native engine splices environment messages in.
* **continued (tokens)**: the messages differ, but the template's rendering of the request still
  begins with the current sequence; the rest is appended as environment tokens (mask 0).
* **new segment**: anything else (the harness trimmed, edited or reordered the history, or changed the
  tools). The current sequence is closed as a segment of its own and a new one starts from the
  rendered request. Each segment trains as its own sample with the episode's advantage; breaks are
  counted, since a harness that breaks the prefix on every turn trains on short contexts.

Sampled ids are appended as sampled, with their logprobs; nothing the model sampled is re-tokenized.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agentrl.chat.conversation import TokenConversation
from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import THINK_CLOSE, THINK_OPEN
from agentrl.envs.core import Message


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def normal_form(message: Message) -> tuple:
    """What identifies a message for the continuation check, with the representations a harness may
    legitimately change folded away: arguments as a JSON string or a mapping, tool-call ids, a
    ``<think>`` block sent back inside the content or separately, ``None`` versus empty content,
    and content given as a list of text parts."""
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    content = (content or "").strip()
    if message.get("role") == "assistant" and content.startswith(THINK_OPEN) and THINK_CLOSE in content:
        content = content[content.index(THINK_CLOSE) + len(THINK_CLOSE) :].strip()
    calls = tuple(
        (str((c.get("function") or c).get("name")), json.dumps(_arguments((c.get("function") or c).get("arguments")),
                                                               sort_keys=True))
        for c in message.get("tool_calls") or ()
    )  # fmt: skip
    return (message.get("role"), content, calls, message.get("name") if message.get("role") == "tool" else None)


Encode = Callable[[list[Message], "list[dict[str, Any]] | None"], list[int]]


def _tools_key(tools: list[dict[str, Any]] | None) -> str:
    return json.dumps(tools or [], sort_keys=True)


class Stitcher:
    """One episode's training sequences, built request by request."""

    def __init__(
        self, chat: ChatFormat, encode: Callable[[list[Message], list[dict[str, Any]] | None], list[int]] | None = None
    ):
        """``encode``: how an opening prompt is rendered to ids (default ``chat.encode`` with the generation prompt);
        the endpoint passes a cached one, since a group's episodes open with the same messages."""
        self.chat = chat
        self._encode = encode or (lambda m, t: chat.encode(m, t, add_generation_prompt=True))
        self.conv: TokenConversation | None = None
        """The sequence the next request may continue."""
        self.segments: list[TokenConversation] = []
        """Sequences closed by a prefix break, in order; each holds at least one sampled turn."""
        self.breaks = 0
        """Requests that could not continue the sequence (the first request of an episode is not one)."""
        self._seen: list[tuple] = []  # normal forms of the last request's messages and the reply
        self._tools = ""

    def prompt(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> tuple[list[int], str]:
        """The ids to sample this request from, and how they were found: "first", "messages", "tokens" or
        "new_segment". The current sequence is extended (or replaced) to end with exactly those ids."""
        how = self._continue(messages, tools)
        if how is None:
            how = "first" if self.conv is None else "new_segment"
            if self.conv is not None:
                self.breaks += 1
                if any(self.conv.mask):
                    self.segments.append(self.conv)
            self.conv = TokenConversation(chat=self.chat, tools=tools or None, messages=[dict(m) for m in messages])
            self.conv._extend(self._encode(messages, tools), "prompt")
        self._tools = _tools_key(tools)
        self._seen = [normal_form(m) for m in messages]
        return list(self.conv.ids), how

    def _continue(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> str | None:
        conv = self.conv
        if conv is None or not conv.mask or conv.mask[-1] == 0 or _tools_key(tools) != self._tools:
            return None  # nothing sampled yet to continue from, or the tools changed
        norm = [normal_form(m) for m in messages]
        n = len(self._seen)
        if len(norm) > n and norm[:n] == self._seen:
            conv.add_env([dict(m) for m in messages[n:]])
            return "messages"
        rendered = self.chat.encode(messages, tools, add_generation_prompt=True)
        if len(rendered) > len(conv.ids) and rendered[: len(conv.ids)] == conv.ids:
            extra = rendered[len(conv.ids) :]
            conv._extend(extra, "env")
            conv.messages = [dict(m) for m in messages]
            return "tokens"
        return None

    def add_completion(self, ids: list[int], logprobs: list[float], reply: Message) -> None:
        """Append the sampled turn as sampled, and remember the reply the harness was sent."""
        assert self.conv is not None, "prompt() first"
        self.conv.add_assistant(ids, logprobs, message=dict(reply))
        self._seen.append(normal_form(reply))

    def sequences(self) -> list[TokenConversation]:
        """Every segment with a sampled turn, the current one last."""
        last = [self.conv] if self.conv is not None and any(self.conv.mask) else []
        return [*self.segments, *last]
