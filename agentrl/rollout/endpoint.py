"""The recording endpoint: an OpenAI-compatible Chat Completions server in front of the policy.

Agent code written for any framework (a loop over the ``openai`` SDK, the OpenAI Agents SDK, ...) talks
to this server as it would to OpenAI or vLLM. Each episode has its own API key, so every request is
attributed to its episode without trusting the agent code to pass ids. For each request the server

1. renders the messages through the policy's chat template, or continues the episode's token sequence
   (:mod:`agentrl.rollout.stitch`), so the model sees exactly the tokens it will be trained on;
2. samples with the run's backend, batched with the requests of every other episode waiting at that moment
   (one backend call at a time, on the rollout engine's generation thread);
3. parses tool calls with agentrl's parser and answers as vLLM's hermes parser would: a turn with a
   malformed call comes back as plain content, no ``tool_calls``, and is counted;
4. records the prompt ids, the sampled ids, their logprobs and the finish reason.

Starlette serves it under uvicorn, on its own thread and event loop, so agent code that blocks (a
synchronous client) cannot stall it. It binds to loopback unless told otherwise, and every request needs
a live episode's key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import THINK_CLOSE, THINK_OPEN, parse_turn, strip_end_markers
from agentrl.rollout.generation import Completion, SamplingParams
from agentrl.rollout.stitch import Stitcher

log = logging.getLogger(__name__)

MODEL_NAME = "agentrl-policy"
"""The one model the endpoint serves (``/v1/models``); requests may name any model."""

# Parameters a harness may send. Those in _NEUTRAL are accepted only with their neutral value; anything
# else outside this set is refused with a message that names it, rather than silently ignored.
_SUPPORTED = {"model", "messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens",
              "max_completion_tokens", "stop", "n", "stream", "stream_options", "seed", "user", "metadata",
              "store", "parallel_tool_calls"}  # fmt: skip
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "logprobs": (False, None),
    "top_logprobs": (0, None),
    "response_format": ({"type": "text"}, None),
    "logit_bias": ({}, None),
}

Generate = Callable[[list[list[int]], SamplingParams], Awaitable[list[Completion]]]
"""How the endpoint samples: a batch of prompts and their shared parameters in, one completion each out."""


class RequestError(Exception):
    """A request the endpoint refuses, with the HTTP status and OpenAI-style error fields to answer with."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class EpisodeLimits:
    """Limits that end an episode as the model's own doing (a truncation), like the native engine's."""

    max_turns: int = 8
    """Trained requests per episode; the next one is refused and the episode is truncated."""
    max_total_tokens: int = 4096
    """A request whose prompt plus ``max_tokens`` would pass this is refused and the episode truncated."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """The run's sampling; a request may lower ``max_tokens`` and set temperature, top_p and stop."""


@dataclass
class EpisodeState:
    """What the endpoint knows of one episode: its key, its token sequences and a record of every request."""

    key: str
    chat: ChatFormat
    limits: EpisodeLimits
    select: Callable[[dict[str, Any]], bool] | None = None
    """Which requests train (None: all). The others are answered and recorded, but never trained on."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """One record per request: prompt and sampled ids, logprobs, finish reason, how the prompt was found."""
    stitcher: Stitcher = field(init=False)
    trained_turns: int = 0
    tool_calls: int = 0
    malformed: int = 0
    """Turns whose tool call could not be parsed (answered as plain content, as vLLM's hermes parser does)."""
    truncated_by: str | None = None
    other_temperature: int = 0
    """Trained requests that asked for another temperature than the run's (the loss assumes the run's)."""
    closed: bool = False
    backend_error: str | None = None
    """Set when the generation backend failed one of this episode's requests (answered with HTTP 503)."""
    last_messages: list[dict[str, Any]] = field(default_factory=list)

    encode: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], list[int]] | None = None
    """How an opening prompt becomes ids; the endpoint's cached rendering."""

    def __post_init__(self) -> None:
        self.stitcher = Stitcher(self.chat, self.encode)


class Endpoint:
    """The server: episodes are opened and closed by the rollout engine; ``base_url`` is what agents use."""

    def __init__(self, chat: ChatFormat, generate: Generate, *, host: str = "127.0.0.1", port: int = 0):
        self.chat, self._generate = chat, generate
        self._episodes: dict[str, EpisodeState] = {}
        self._lock = threading.Lock()
        self._queue: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._rendered: dict[str, list[int]] = {}
        self._batching: asyncio.Task | None = None
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. Without it every response waits on Nagle's algorithm against the
        # client's delayed ACK: 44 ms per request on loopback, measured, instead of under 1 ms.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    # ----- lifecycle -------------------------------------------------------------------------
    def start(self) -> Endpoint:
        import uvicorn

        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def serve() -> None:
            try:  # uvloop (uvicorn's own choice when it is installed) parses and writes faster
                import uvloop

                self.loop = uvloop.new_event_loop()
            except ImportError:
                self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_until_complete(self._server.serve(sockets=[self._sock]))

        self._thread = threading.Thread(target=serve, name="agentrl-endpoint", daemon=True)
        self._thread.start()
        ready.wait(30)
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._server.started:
            raise RuntimeError(f"the agent endpoint did not start on {self.base_url}")
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    # ----- episodes --------------------------------------------------------------------------
    def open(self, limits: EpisodeLimits, select: Callable[[dict[str, Any]], bool] | None = None) -> EpisodeState:
        state = EpisodeState(f"agentrl-{secrets.token_urlsafe(18)}", self.chat, limits, select, encode=self.encode)
        with self._lock:
            self._episodes[state.key] = state
        return state

    def finish(self, state: EpisodeState) -> None:
        """End an episode: later requests with its key are refused (HTTP 409)."""
        state.closed = True

    def forget(self, state: EpisodeState) -> None:
        with self._lock:
            self._episodes.pop(state.key, None)

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """The rendered prompt of ``messages``, remembered: the G episodes of a task open with the same request,
        and rendering a long prompt through a Jinja template costs milliseconds on the server's loop."""
        key = json.dumps([messages, tools], sort_keys=True, default=str)
        ids = self._rendered.get(key)
        if ids is None:
            ids = self.chat.encode(messages, tools, add_generation_prompt=True)
            if len(self._rendered) >= RENDER_CACHE:
                self._rendered.pop(next(iter(self._rendered)))  # the oldest
            self._rendered[key] = ids
        return list(ids)

    # ----- the app ---------------------------------------------------------------------------
    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
        ])  # fmt: skip

    def _episode(self, request: Any) -> EpisodeState:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            raise RequestError(401, "an API key is required: each episode's key is passed to its agent code",
                               code="missing_api_key")  # fmt: skip
        with self._lock:
            state = self._episodes.get(key)
        if state is None:
            raise RequestError(401, "unknown API key: no episode has this key", code="invalid_api_key")
        if state.closed:
            raise RequestError(409, "this episode has ended; its key takes no more requests", code="episode_ended")
        return state

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        try:
            self._episode(request)
        except RequestError as exc:
            return _error(exc)
        model = {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "agentrl"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _chat_completions(self, request: Any) -> Any:
        t0 = time.perf_counter()
        try:
            state = self._episode(request)
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(400, "the request body is not JSON") from None
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            reply, waited = await self._complete(state, body)
        except RequestError as exc:
            return _error(exc)
        response = _stream(reply, body) if body.get("stream") else _json_response(reply)
        # What the endpoint itself added: the handler's time outside the batcher (reading, rendering, answering).
        record = next(r for r in reversed(state.requests) if r["id"] == reply["id"])  # requests may overlap
        record["handler_seconds"] = time.perf_counter() - t0 - waited
        return response

    async def _complete(self, state: EpisodeState, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        messages, tools, params, tool_choice = _read(body, state.limits.sampling)
        trains = state.select is None or bool(state.select(body))
        if trains:
            if state.trained_turns >= state.limits.max_turns:
                state.truncated_by = state.truncated_by or "max_turns"
                raise RequestError(400, f"this episode has used its {state.limits.max_turns} turns",
                                   code="max_turns_exceeded")  # fmt: skip
            prompt, how = state.stitcher.prompt(messages, tools)
        else:
            prompt, how = self.encode(messages, tools), "side"
        budget = state.limits.max_total_tokens - len(prompt)
        if budget < 1:
            if trains:
                state.truncated_by = state.truncated_by or "max_tokens"
            raise RequestError(400, f"the prompt is {len(prompt)} tokens; this run's context is "
                                    f"{state.limits.max_total_tokens} tokens (grpo.max_total_tokens)",
                               param="messages", code="context_length_exceeded")  # fmt: skip
        params.max_new_tokens = min(params.max_new_tokens, budget)
        waited = time.perf_counter()
        comp = await self._sample(prompt, params)
        waited = time.perf_counter() - waited
        if comp.error:
            state.backend_error = comp.error
            raise RequestError(503, f"the generation backend failed: {comp.error}", code="backend_error")
        reply, parsed_calls, malformed = self._reply(comp, tool_choice)
        if trains:
            state.stitcher.add_completion(comp.token_ids, comp.logprobs, reply)
            state.trained_turns += 1
            state.tool_calls += parsed_calls
            state.malformed += malformed
            state.other_temperature += params.temperature != state.limits.sampling.temperature
            state.last_messages = [*messages, reply]
        # A trained request's prompt is its sequence up to ``start``: segment ``segment`` of the episode.
        segment = len(state.stitcher.segments) if trains else None
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        state.requests.append({
            "id": reply_id,
            "prompt_ids": prompt, "completion_ids": list(comp.token_ids), "logprobs": list(comp.logprobs),
            "finish_reason": comp.finish_reason, "prompt": how, "trained": trains, "seconds": waited,
            "segment": segment, "start": len(prompt) if trains else None,
        })  # fmt: skip
        finish = "tool_calls" if reply.get("tool_calls") else ("length" if comp.finish_reason == "length" else "stop")
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(comp.token_ids),
                 "total_tokens": len(prompt) + len(comp.token_ids)}  # fmt: skip
        return {"message": reply, "finish_reason": finish, "usage": usage, "model": body.get("model") or MODEL_NAME,
                "id": reply_id, "created": int(time.time())}, waited  # fmt: skip

    def _reply(self, comp: Completion, tool_choice: str) -> tuple[dict[str, Any], int, int]:
        """The assistant message for a completion, tool calls parsed as vLLM's hermes parser returns them."""
        text = strip_end_markers(self.chat.tokenizer.decode(comp.token_ids, skip_special_tokens=False))
        turn = parse_turn(text)
        message: dict[str, Any] = {"role": "assistant", "content": turn.content or None}
        if turn.reasoning is not None:
            message["reasoning_content"] = turn.reasoning
        if tool_choice == "none" or not (turn.calls or turn.errors):
            message["content"] = _after_reasoning(text) if tool_choice == "none" else (turn.content or "")
            return message, 0, 0
        if turn.errors:  # as vLLM: one bad call and the whole turn is content, with no tool_calls
            message["content"] = _after_reasoning(text)
            return message, 0, 1
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in turn.calls
        ]
        return message, len(turn.calls), 0

    # ----- batching --------------------------------------------------------------------------
    async def _gather(self) -> None:
        """Before a batch: while requests keep arriving and some open episode has not sent one, wait a moment.
        The native engine starts a batch with whoever is ready; here "ready" arrives over sockets, a few at a time,
        so the first requests of many episodes would otherwise go out in many small batches."""
        loop = asyncio.get_running_loop()
        deadline, seen = loop.time() + GATHER_MAX, -1
        while len(self._queue) != seen and loop.time() < deadline:
            with self._lock:
                open_episodes = sum(not e.closed for e in self._episodes.values())
            if len(self._queue) >= open_episodes:
                return
            seen = len(self._queue)
            await asyncio.sleep(GATHER_STEP)

    async def _sample(self, prompt: list[int], params: SamplingParams) -> Completion:
        """Queue one prompt; whoever is queued when the backend is free goes in the next batch."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((prompt, params, future))
        if self._batching is None or self._batching.done():
            self._batching = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await self._gather()
            first = _params_key(self._queue[0][1])
            batch = [q for q in self._queue if _params_key(q[1]) == first]
            self._queue = [q for q in self._queue if _params_key(q[1]) != first]
            try:
                out = await self._generate([p for p, _, _ in batch], batch[0][1])
                if len(out) != len(batch):
                    raise RuntimeError(f"backend returned {len(out)} completions for {len(batch)} prompts")
            except Exception as exc:  # the backend's failure: each waiting request gets a 503
                out = [Completion([], [], "stop", error=f"{type(exc).__name__}: {exc}") for _ in batch]
            for (_, _, future), comp in zip(batch, out, strict=True):
                if not future.done():
                    future.set_result(comp)


RENDER_CACHE = 1024
"""Opening prompts whose rendering the endpoint keeps (oldest dropped first)."""
GATHER_STEP = 0.002
"""Seconds to wait for another request to join a batch while requests keep arriving."""
GATHER_MAX = 0.02
"""At most this long in all: against a real model's batch (hundreds of ms on any device) it is noise."""


def _params_key(p: SamplingParams) -> tuple:
    return (p.temperature, p.top_p, p.top_k, p.min_p, p.max_new_tokens, tuple(p.stop))


def _after_reasoning(text: str) -> str:
    if THINK_CLOSE in text and (text.lstrip().startswith(THINK_OPEN) or THINK_OPEN not in text):
        text = text[text.index(THINK_CLOSE) + len(THINK_CLOSE) :]
    return text.strip()


def _read(body: dict[str, Any], run: SamplingParams) -> tuple[list, list | None, SamplingParams, str]:
    """Validate a request; its messages, tools, sampling parameters and tool choice."""
    for name, value in body.items():
        if name in _SUPPORTED:
            continue
        if name in _NEUTRAL and value in _NEUTRAL[name]:
            continue
        hint = f" (only {_NEUTRAL[name][0]!r} is supported)" if name in _NEUTRAL else ""
        raise RequestError(400, f"unsupported parameter {name!r}{hint}", param=name, code="unsupported_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "'messages' must be a non-empty list of message objects", param="messages")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise RequestError(400, f"messages[{i}] has role {m.get('role')!r}", param="messages")
    messages = [_plain(m) for m in messages]
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported: an episode is one sequence of turns", param="n")
    if body.get("parallel_tool_calls") is False:
        raise RequestError(400, "parallel_tool_calls=false is not supported", param="parallel_tool_calls")
    tools = body.get("tools") or None
    if tools is not None and (
        not isinstance(tools, list)
        or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in tools
        )
    ):
        raise RequestError(400, "'tools' must be a list of {'type': 'function', 'function': {'name': ...}}",
                           param="tools")  # fmt: skip
    choice = body.get("tool_choice", "auto") or "auto"
    if choice not in ("auto", "none"):
        raise RequestError(400, f"tool_choice {choice!r} is not supported (use 'auto' or 'none')", param="tool_choice")
    if choice == "none":
        tools = None
    params = replace(run, stop=list(run.stop), stop_token_ids=list(run.stop_token_ids))
    for name, attr in (("temperature", "temperature"), ("top_p", "top_p")):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise RequestError(400, f"{name} must be a non-negative number", param=name)
            setattr(params, attr, float(value))
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
    return messages, tools, params, choice


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the chat template reads it: text parts joined, ``developer`` as ``system``."""
    out = dict(message)
    if out.get("role") == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list):
        out["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    for call in out.get("tool_calls") or ():
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise RequestError(400, "each tool call needs a 'function' object", param="messages")
    return out


def _error(exc: RequestError) -> Any:
    from starlette.responses import JSONResponse

    body = {"error": {"message": exc.message, "type": "invalid_request_error" if exc.status < 500 else "server_error",
                      "param": exc.param, "code": exc.code}}  # fmt: skip
    return JSONResponse(body, status_code=exc.status)


def _json_response(reply: dict[str, Any]) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({
        "id": reply["id"], "object": "chat.completion", "created": reply["created"], "model": reply["model"],
        "choices": [{"index": 0, "message": reply["message"], "finish_reason": reply["finish_reason"],
                     "logprobs": None}],
        "usage": reply["usage"],
    })  # fmt: skip


def _stream(reply: dict[str, Any], body: dict[str, Any]) -> Any:
    """The reply as server-sent chunks, the way OpenAI streams one (the turn is sampled whole first)."""
    from starlette.responses import StreamingResponse

    head = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"], "model": reply["model"]}
    msg = reply["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        event = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(event)}\n\n"

    def events():
        yield chunk({"role": "assistant", "content": ""})
        if msg.get("reasoning_content"):
            yield chunk({"reasoning_content": msg["reasoning_content"]})
        if msg.get("content"):
            yield chunk({"content": msg["content"]})
        for i, call in enumerate(msg.get("tool_calls") or ()):
            yield chunk({"tool_calls": [{"index": i, **call}]})
        yield chunk({}, reply["finish_reason"])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': reply['usage']})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
