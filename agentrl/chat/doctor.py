"""``agentrl doctor``: will this model, template and environment train correctly together?

Most silent failures of agentic RL are format failures: a template that rewrites history so the
trained tokens are not the sampled ones, a tool call the parser cannot read back, a stop token the
model never emits. Each check here renders real conversations through the real tokenizer and
reports pass/fail with the reason, so the problem surfaces before a long run, not after.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def load_tokenizer(model: str) -> tuple[Any, Path | None]:
    """Tokenizer for a local path, hub id or alias; returns (tokenizer, local_dir or None)."""
    from agentrl.models import load_tokenizer as load
    from agentrl.models import model_path

    tok = load(model)
    path = Path(model_path(model))
    return tok, path if path.is_dir() else None


def _excerpt(tokenizer: Any, ids: list[int], at: int) -> str:
    return json.dumps(tokenizer.decode(ids[max(0, at - 8) : at + 8]))


def _check_render(chat: Any, tools: list[dict]) -> Check:
    msgs = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    text = chat.render(msgs, tools, add_generation_prompt=True)
    missing = [t["function"]["name"] for t in tools if t["function"]["name"] not in text]
    if missing:
        return Check("template renders tools", False, f"tool names missing from the prompt: {missing}")
    how = "natively" if chat.native_tools else "via the system prompt (template has no tool support)"
    return Check("template renders tools", True, f"{len(tools)} tool(s) rendered {how}")


def _check_prefix(chat: Any) -> Check:
    """Token exactness over a multi-turn conversation with thinking turns and user feedback."""
    from agentrl.chat.conversation import TokenConversation, first_divergence

    tok = chat.tokenizer
    eot = chat.end_of_turn
    conv = TokenConversation.start(chat, [{"role": "user", "content": "Guess my number between 1 and 10."}])
    turns = [("Start in the middle.", "5"), ("It is higher.", "8"), ("It is lower.", "7")]
    for i, (thought, guess) in enumerate(turns):
        text = f"<think>\n{thought}\n</think>\n\n{guess}{eot}"
        conv.add_assistant(tok.encode(text, add_special_tokens=False))
        if i < len(turns) - 1:
            conv.add_env([{"role": "user", "content": "Higher." if i == 0 else "Lower."}])
    rerender = chat.encode(conv.messages)
    at = first_divergence(conv.ids, rerender)
    trailing = rerender[len(conv.ids) :]
    if at is None or (at == len(conv.ids) and tok.decode(trailing).strip() == ""):
        return Check("multi-turn prefix preserved", True, "re-rendering the history gives the sampled tokens")
    return Check(
        "multi-turn prefix preserved",
        False,
        f"prefix drift at token {at}: sampled {_excerpt(tok, conv.ids, at)} but re-rendered "
        f"{_excerpt(tok, rerender, at)}. The template rewrites earlier turns (e.g. strips <think>); "
        "train on agentrl's token-exact sequences, never on a re-render, or use --template training",
    )


def _check_tool_prefix(chat: Any) -> Check:
    from trl.chat_template_utils import is_chat_template_prefix_preserving

    if not chat.native_tools:
        return Check("tool-turn prefix preserved", True, "not applicable: tools go through the system prompt")
    tok = chat.tokenizer
    saved = tok.chat_template
    try:
        if chat.chat_template is not None:
            tok.chat_template = chat.chat_template
        ok = is_chat_template_prefix_preserving(tok)
    finally:
        tok.chat_template = saved
    detail = (
        "a tool message leaves the preceding tokens unchanged" if ok else "adding a tool message changes earlier tokens"
    )
    return Check("tool-turn prefix preserved", ok, detail)


def _check_round_trip(chat: Any) -> Check:
    from agentrl.chat.parsing import parse_turn

    args = {"expression": "12 * (3 + 4)", "precision": 2, "flags": ["exact"], "note": 'naïve "quoted"'}
    call = {"type": "function", "function": {"name": "calculator", "arguments": args}}
    probe = [{"role": "user", "content": "compute"}]
    prefix = chat.render(probe, add_generation_prompt=True)
    full = chat.render([*probe, {"role": "assistant", "content": "", "tool_calls": [call]}])
    if not full.startswith(prefix):
        # Stock Qwen3 adds an empty think block only to the final assistant turn; compare from the header.
        common = 0
        while common < min(len(prefix), len(full)) and prefix[common] == full[common]:
            common += 1
        prefix = prefix[:common]
    parsed = parse_turn(full[len(prefix) :])
    if parsed.errors or len(parsed.calls) != 1:
        kinds = [e.message for e in parsed.errors]
        return Check("tool-call round trip", False, f"parsed {len(parsed.calls)} calls, errors {kinds}")
    got = parsed.calls[0]
    if got.name != "calculator" or got.arguments != args:
        return Check("tool-call round trip", False, f"parsed back {got.name}({got.arguments}) instead of the original")
    return Check("tool-call round trip", True, "rendered call parses back to the same name and arguments")


def _check_stop(chat: Any, local_dir: Path | None) -> Check:
    try:
        eot_id = chat.end_of_turn_id
    except ValueError as exc:
        return Check("stop token", False, str(exc))
    eos_ids: set[int] = set()
    source = "tokenizer eos"
    if chat.tokenizer.eos_token_id is not None:
        eos_ids.add(chat.tokenizer.eos_token_id)
    gen_cfg = local_dir / "generation_config.json" if local_dir else None
    if gen_cfg is not None and gen_cfg.exists():
        value = json.loads(gen_cfg.read_text()).get("eos_token_id")
        if value is not None:
            eos_ids = set(value if isinstance(value, list) else [value])
            source = "generation_config eos_token_id"
    if eot_id not in eos_ids:
        return Check(
            "stop token",
            False,
            f"assistant turns end with {chat.end_of_turn!r} (id {eot_id}) but {source} is {sorted(eos_ids)}; "
            "generation would run past the end of the turn",
        )
    return Check("stop token", True, f"turns end with {chat.end_of_turn!r} (id {eot_id}), which stops generation")


def _check_thinking(chat: Any) -> Check:
    from agentrl.chat.format import ChatFormat
    from agentrl.chat.parsing import parse_turn

    msgs = [{"role": "user", "content": "hi"}]
    on = ChatFormat(chat.tokenizer, chat.chat_template, enable_thinking=True).render(msgs, add_generation_prompt=True)
    off = ChatFormat(chat.tokenizer, chat.chat_template, enable_thinking=False).render(msgs, add_generation_prompt=True)
    parsed = parse_turn(f"<think>\nplan\n</think>\n\nanswer{chat.end_of_turn}")
    if parsed.reasoning != "plan" or parsed.content != "answer":
        return Check("thinking handled", False, "the parser did not separate <think> from the answer")
    if on == off:
        return Check("thinking handled", True, "template has no enable_thinking switch; <think> is parsed if emitted")
    if not (off.startswith(on) and "</think>" in off[len(on) :]):
        return Check(
            "thinking handled", False, "enable_thinking=False changes the prompt but adds no closed think block"
        )
    return Check("thinking handled", True, "enable_thinking=False closes an empty think block; reasoning is parsed")


def _check_env(env_id: str) -> tuple[Check, list[dict]]:
    import agentrl

    try:
        env = agentrl.make(env_id)
    except Exception as exc:
        return Check("environment check_env", False, f"cannot make {env_id!r}: {exc}"), []
    with env:
        try:
            warnings = agentrl.check_env(env)
        except AssertionError as exc:
            return Check("environment check_env", False, str(exc)), []
        tools = list(env.tool_specs)
    note = f"{env_id} passes; warnings: {'; '.join(warnings)}" if warnings else f"{env_id} passes"
    return Check("environment check_env", True, note), tools


def _check_mcp(chat: Any, target: str) -> list[Check]:
    """List an MCP server's tools, and check that the template renders each one's name and arguments."""
    from agentrl.tools.mcp_tools import close_servers, from_mcp, server_from

    spec = {"url": target} if target.startswith(("http://", "https://")) else {"command": target}
    name = "MCP server"
    try:
        name = f"MCP server {server_from(spec).label}"
        tools = from_mcp(**spec)
    except Exception as exc:
        return [Check(name, False, f"{type(exc).__name__}: {exc}")]
    finally:
        close_servers()
    listing = ", ".join(f"{t.name}({', '.join(t.parameters.get('properties', {}))})" for t in tools)
    checks = [Check(name, True, f"{len(tools)} tool(s): {listing}")]
    msgs = [{"role": "user", "content": "Hi"}]
    text = chat.render(msgs, [t.spec for t in tools], add_generation_prompt=True)
    missing = [
        f"{t.name}.{arg}" if arg else t.name
        for t in tools
        for arg in ["", *t.parameters.get("properties", {})]
        if (arg or t.name) not in text
    ]
    ok = not missing
    detail = f"every name and argument of {len(tools)} tool(s) is in the prompt" if ok else f"missing: {missing[:5]}"
    return [*checks, Check("template renders MCP tools", ok, detail)]


def run_doctor(
    model: str,
    env_id: str = "arithmetic",
    template: str = "auto",
    enable_thinking: bool = True,
    mcp: tuple[str, ...] | list[str] = (),
) -> list[Check]:
    """Run every check and return the results (never raises for a failed check).

    ``mcp``: MCP servers (a command line, or an http(s) URL) whose tools are listed and rendered too."""
    from agentrl.chat.format import load_chat_format

    tokenizer, local_dir = load_tokenizer(model)
    chat = load_chat_format(tokenizer, template, enable_thinking=enable_thinking)
    env_check, tools = _check_env(env_id)
    checks: list[Check] = []
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("template renders tools", lambda: _check_render(chat, tools)),
        ("tool-turn prefix preserved", lambda: _check_tool_prefix(chat)),
        ("multi-turn prefix preserved", lambda: _check_prefix(chat)),
        ("tool-call round trip", lambda: _check_round_trip(chat)),
        ("stop token", lambda: _check_stop(chat, local_dir)),
        ("thinking handled", lambda: _check_thinking(chat)),
    ]
    for name, step in steps:
        try:
            checks.append(step())
        except Exception as exc:  # a crash inside a check is itself a finding
            checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    checks.append(env_check)
    for target in mcp:
        checks.extend(_check_mcp(chat, target))
    return checks


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    for c in checks:
        lines.append(f"{c.name.ljust(width)}  {'PASS' if c.ok else 'FAIL'}    {c.detail}")
    return "\n".join(lines)
