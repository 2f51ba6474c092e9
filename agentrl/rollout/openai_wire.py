"""The OpenAI Chat Completions wire format, as the agent endpoint reads and writes it.

Reading: a request body becomes messages, tools, sampling parameters and a tool choice, or a
:class:`RequestError` that names what is wrong. Parameters fall in three groups:

* honoured: ``messages``, ``tools``, ``tool_choice`` ("auto"/"none"), ``temperature``, ``top_p``, ``top_k`` and
  ``min_p`` (vLLM's extras), ``max_tokens``/``max_completion_tokens``, ``stop``, ``stream``, ``stream_options``,
  ``logprobs`` (the sampled tokens' own), ``parallel_tool_calls`` (false keeps the first call);
* accepted and ignored, because they steer a hosted model or its billing, not sampling: ``model``, ``seed``
  (the run seeds sampling), ``user``, ``metadata``, ``store``, ``reasoning_effort``, ``verbosity``,
  ``prompt_cache_key``, ``prompt_cache_retention``, ``safety_identifier``, ``service_tier``;
* anything else, or a value that cannot be honoured (``n`` > 1, a required or named tool choice, a JSON
  schema, a logit bias, image content), is refused with HTTP 400 and a message that names it. Silently
  ignoring it would train the policy on requests that did not get what they asked for.

Explicit ``null`` means absent, as in OpenAI's API.

Writing: a reply as one JSON completion, or as server-sent chunks the way OpenAI streams one (the turn is
sampled whole first, then sent).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from agentrl.chat.parsing import THINK_CLOSE, THINK_OPEN
from agentrl.rollout.generation import SamplingParams

_HONOURED = {"messages", "tools", "tool_choice", "temperature", "top_p", "top_k", "min_p", "max_tokens",
             "max_completion_tokens", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs",
             "parallel_tool_calls"}  # fmt: skip
_IGNORED = {"model", "seed", "user", "metadata", "store", "reasoning_effort", "verbosity", "prompt_cache_key",
            "prompt_cache_retention", "safety_identifier", "service_tier"}  # fmt: skip
_NEUTRAL: dict[str, tuple[Any, ...]] = {  # accepted with their neutral value only
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "chat_template_kwargs": ({},),
}
_HINTS = {
    "response_format": "structured output cannot be enforced on the policy's sampling; ask for JSON in the prompt "
    "and parse it in the agent code (the OpenAI Agents SDK sends this for Agent(output_type=...))",
    "chat_template_kwargs": "the run's chat template settings are fixed (model.enable_thinking in the recipe)",
}


class RequestError(Exception):
    """A request the endpoint refuses, with the HTTP status and OpenAI-style error fields to answer with."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def read_request(body: dict[str, Any], run: SamplingParams) -> tuple[list, list | None, SamplingParams, dict]:
    """Validate a request: its messages, tools, sampling parameters, and the options that shape the answer
    (``tool_choice``, ``parallel_tool_calls``, ``logprobs``)."""
    body = {k: v for k, v in body.items() if v is not None}
    for name, value in body.items():
        if name in _HONOURED or name in _IGNORED or (name in _NEUTRAL and value in _NEUTRAL[name]):
            continue
        hint = _HINTS.get(name) or (f"only {_NEUTRAL[name][0]!r} is supported" if name in _NEUTRAL else "")
        raise RequestError(400, f"unsupported parameter {name!r}" + (f": {hint}" if hint else ""), param=name,
                           code="unsupported_parameter")  # fmt: skip
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "'messages' must be a non-empty list of message objects", param="messages")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise RequestError(400, f"messages[{i}] has role {m.get('role')!r}", param="messages")
    messages = [_plain(m, i) for i, m in enumerate(messages)]
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported: an episode is one sequence of turns", param="n")
    tools = body.get("tools") or None
    if tools is not None and (
        not isinstance(tools, list)
        or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in tools
        )
    ):
        raise RequestError(400, "'tools' must be a list of {'type': 'function', 'function': {'name': ...}}",
                           param="tools")  # fmt: skip
    choice = body.get("tool_choice", "auto")
    if choice not in ("auto", "none"):
        raise RequestError(400, f"tool_choice {choice!r} cannot be enforced: the policy samples freely and "
                                "its tool calls are parsed afterwards; leave tool_choice unset or 'auto' (e.g. "
                                "ModelSettings(tool_choice=...) in the OpenAI Agents SDK, bind_tools(tool_choice="
                                "...) in LangChain)", param="tool_choice")  # fmt: skip
    if body.get("top_logprobs", 0) != 0:
        raise RequestError(400, "top_logprobs is not supported; logprobs=true reports the sampled tokens' own",
                           param="top_logprobs")  # fmt: skip
    params = replace(run, stop=list(run.stop), stop_token_ids=list(run.stop_token_ids))
    for name in ("temperature", "top_p", "min_p"):
        if name in body:
            setattr(params, name, _number(body[name], name))
    if "top_k" in body:
        top_k = body["top_k"]
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < -1:
            raise RequestError(400, "top_k must be an integer (0 or -1 for none)", param="top_k")
        params.top_k = max(top_k, 0)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise RequestError(400, "max_tokens must be a positive integer", param="max_tokens")
        params.max_new_tokens = min(params.max_new_tokens, limit)
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError(400, "stop must be a string or a list of strings", param="stop")
        params.stop = [*params.stop, *stop]
    options = {"tool_choice": choice, "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
               "logprobs": body.get("logprobs") is True}  # fmt: skip
    return messages, tools, params, options


def _number(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise RequestError(400, f"{name} must be a non-negative number", param=name)
    return float(value)


def _plain(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A message as the chat template reads it: text parts joined, ``developer`` as ``system``."""
    out = dict(message)
    if out.get("role") == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list):
        kinds = {p.get("type") for p in content if isinstance(p, dict)} - {"text", None}
        if kinds:
            raise RequestError(400, f"messages[{index}] has {', '.join(sorted(map(str, kinds)))} content; the "
                                    "policy reads text only", param="messages")  # fmt: skip
        out["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    for call in out.get("tool_calls") or ():
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise RequestError(400, "each tool call needs a 'function' object", param="messages")
    return out


def after_reasoning(text: str) -> str:
    """``text`` without its leading ``<think>`` block (the content vLLM returns when a reasoning parser split it)."""
    if THINK_CLOSE in text and (text.lstrip().startswith(THINK_OPEN) or THINK_OPEN not in text):
        text = text[text.index(THINK_CLOSE) + len(THINK_CLOSE) :]
    return text.strip()


def error_response(exc: RequestError) -> Any:
    from starlette.responses import JSONResponse

    body = {"error": {"message": exc.message, "type": "invalid_request_error" if exc.status < 500 else "server_error",
                      "param": exc.param, "code": exc.code}}  # fmt: skip
    return JSONResponse(body, status_code=exc.status)


def json_response(reply: dict[str, Any]) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({
        "id": reply["id"], "object": "chat.completion", "created": reply["created"], "model": reply["model"],
        "choices": [{"index": 0, "message": reply["message"], "finish_reason": reply["finish_reason"],
                     "logprobs": reply.get("logprobs")}],
        "usage": reply["usage"],
    })  # fmt: skip


def stream_response(reply: dict[str, Any], body: dict[str, Any]) -> Any:
    """The reply as server-sent chunks, the way OpenAI streams one (the turn is sampled whole first)."""
    from starlette.responses import StreamingResponse

    head = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"], "model": reply["model"]}
    msg = reply["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        event = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}
        return f"data: {json.dumps(event)}\n\n"

    async def events():  # async: Starlette would run a plain generator's every chunk in a thread
        yield chunk({"role": "assistant", "content": ""})
        if msg.get("reasoning_content"):
            yield chunk({"reasoning_content": msg["reasoning_content"]})
        if msg.get("content"):
            yield chunk({"content": msg["content"]}, logprobs=reply.get("logprobs"))
        for i, call in enumerate(msg.get("tool_calls") or ()):
            yield chunk({"tool_calls": [{"index": i, **call}]})
        yield chunk({}, reply["finish_reason"])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': reply['usage']})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
