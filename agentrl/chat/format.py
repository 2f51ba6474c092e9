"""Render conversations and tool specs through a tokenizer's chat template.

Qwen3 comes first: its template knows about tools, ``tool`` messages and ``enable_thinking``.
Templates without tool support (SmolLM2's ChatML, for one) get the same Hermes protocol by hand:
tool specs go into the system prompt, assistant tool calls become ``<tool_call>`` text and tool
results become ``<tool_response>`` blocks in a user turn. Parsing is then identical for every model.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any

from agentrl.chat.parsing import render_call_text
from agentrl.chat.templates import resolve_chat_template
from agentrl.envs.core import Message

TOOL_SYSTEM_PROMPT = """# Tools

You can call the functions described below. Their signatures are JSON schemas inside <tools></tools>:
<tools>
{tools}
</tools>

To call a function, write a JSON object with the function name and its arguments between tags, like this:
<tool_call>
{{"name": "function_name", "arguments": {{"argument": "value"}}}}
</tool_call>
You may make several calls in one turn. Results come back inside <tool_response></tool_response>."""


def _supports_tools(tokenizer: Any, chat_template: str | None) -> bool:
    from trl.chat_template_utils import supports_tool_calling

    if chat_template is None:
        return supports_tool_calling(tokenizer)
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = chat_template
        return supports_tool_calling(tokenizer)
    finally:
        tokenizer.chat_template = saved


def load_chat_format(tokenizer: Any, template: str = "auto", *, enable_thinking: bool | None = None) -> ChatFormat:
    """``template``: auto or stock (the tokenizer's own), training (TRL's training variant of it), or a
    .jinja path; see :func:`~agentrl.chat.templates.resolve_chat_template`."""
    template_text = resolve_chat_template(tokenizer, template)
    return ChatFormat(tokenizer, chat_template=template_text, enable_thinking=enable_thinking)


@dataclass
class ChatFormat:
    """How one tokenizer turns messages into prompt text and tokens."""

    tokenizer: Any
    """A transformers tokenizer with a chat template."""
    chat_template: str | None = None
    """Template to use instead of the tokenizer's own (e.g. TRL's Qwen3 training template)."""
    enable_thinking: bool | None = None
    """Passed to templates that support it (Qwen3); None leaves the template's default."""

    def __post_init__(self) -> None:
        if self.chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; pass chat_template=...")
        self.native_tools = _supports_tools(self.tokenizer, self.chat_template)
        source = self.chat_template or self.tokenizer.chat_template
        self.native_reasoning = "reasoning_content" in (source if isinstance(source, str) else json.dumps(source))

    @property
    def template_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.chat_template is not None:
            kw["chat_template"] = self.chat_template
        if self.enable_thinking is not None:
            kw["enable_thinking"] = self.enable_thinking
        return kw

    def prepare(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[Message], list[dict[str, Any]] | None]:
        """Rewrite messages for what the template lacks; pass them through otherwise.

        * Without tool support: tool specs go into the system prompt, ``tool_calls`` become
          ``<tool_call>`` text and ``tool`` results become ``<tool_response>`` user turns.
        * Without ``reasoning_content`` support: reasoning goes back into the content as a
          ``<think>`` block, so a re-render does not silently lose it.
        """
        fold_reasoning = not self.native_reasoning and any(m.get("reasoning_content") for m in messages)
        if self.native_tools or (not tools and not _has_tool_traffic(messages)):
            if fold_reasoning:
                messages = [_fold_reasoning(m) for m in messages]
            return messages, tools or None
        out: list[Message] = []
        if tools:
            tool_block = TOOL_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
            if messages and messages[0].get("role") == "system":
                out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{tool_block}"})
                messages = messages[1:]
            else:
                out.append({"role": "system", "content": tool_block})
        for msg in messages:
            role = msg.get("role")
            if fold_reasoning:
                msg = _fold_reasoning(msg)
            if role == "assistant" and msg.get("tool_calls"):
                text = [msg.get("content") or ""]
                for call in msg["tool_calls"]:
                    fn = call.get("function", call)
                    text.append(render_call_text(fn["name"], fn.get("arguments") or {}))
                out.append({"role": "assistant", "content": "\n".join(t for t in text if t)})
            elif role == "tool":
                block = f"<tool_response>\n{msg.get('content', '')}\n</tool_response>"
                # Consecutive tool results share one user turn, as in Qwen3's own template.
                if out and out[-1].get("_tool_turn"):
                    out[-1]["content"] += "\n" + block
                else:
                    out.append({"role": "user", "content": block, "_tool_turn": True})
            else:
                out.append(copy.copy(msg))
        for msg in out:
            msg.pop("_tool_turn", None)
        return out, None

    def render(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """Render messages (and tool specs) to text with the chat template."""
        msgs, tools = self.prepare(messages, tools)
        return self.tokenizer.apply_chat_template(
            msgs,
            tools=tools,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def encode(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> list[int]:
        """Token ids of the rendered conversation (no BOS/EOS is added beyond what the template writes)."""
        text = self.render(messages, tools, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False)

    @functools.cached_property
    def end_of_turn(self) -> str:
        """The text that closes an assistant turn, found by rendering one; usually the EOS token."""
        probe = "zq9probe"
        text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
        tail = text[text.rindex(probe) + len(probe) :]
        for special in self.tokenizer.all_special_tokens:
            if tail.startswith(special):
                return special
        eos = self.tokenizer.eos_token
        if eos and tail.lstrip().startswith(eos):
            return eos
        raise ValueError(f"cannot find the end-of-turn token after an assistant message (template wrote {tail!r})")

    @functools.cached_property
    def end_of_turn_id(self) -> int:
        ids = self.tokenizer.encode(self.end_of_turn, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"end-of-turn marker {self.end_of_turn!r} is {len(ids)} tokens, not one")
        return ids[0]


def _fold_reasoning(msg: Message) -> Message:
    reasoning = msg.get("reasoning_content")
    if msg.get("role") != "assistant" or not reasoning:
        return msg
    out = {k: v for k, v in msg.items() if k != "reasoning_content"}
    out["content"] = f"<think>\n{reasoning}\n</think>\n\n{msg.get('content') or ''}"
    return out


def _has_tool_traffic(messages: list[Message]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
