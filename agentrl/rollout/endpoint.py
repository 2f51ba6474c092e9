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
from dataclasses import dataclass, field
from typing import Any

from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import parse_turn, strip_end_markers
from agentrl.rollout.generation import Completion, SamplingParams
from agentrl.rollout.openai_wire import (
    RequestError,
    after_reasoning,
    error_response,
    json_response,
    read_request,
    stream_response,
)
from agentrl.rollout.stitch import Stitcher

log = logging.getLogger(__name__)

MODEL_NAME = "agentrl-policy"
"""The one model the endpoint serves (``/v1/models``); requests may name any model."""

Generate = Callable[[list[list[int]], SamplingParams], Awaitable[list[Completion]]]
"""How the endpoint samples: a batch of prompts and their shared parameters in, one completion each out."""


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
    closed: bool = False
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by a trained request from its prompt to its completion (see ``Endpoint._complete``)."""
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
        if self.loop is not None and not self._thread.is_alive():
            self.loop.close()  # its selector's file descriptors
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
            Route("/v1/responses", self._responses, methods=["POST"]),
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
            return error_response(exc)
        model = {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "agentrl"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _responses(self, request: Any) -> Any:
        """The Responses API is not served; say what to use instead (the Agents SDK's default is this API)."""
        return error_response(RequestError(404, "this endpoint serves Chat Completions only, not the Responses API: "
                                           "with the OpenAI Agents SDK use OpenAIChatCompletionsModel, or call "
                                           "set_default_openai_api('chat_completions')", code="not_found"))  # fmt: skip

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
            return error_response(exc)
        response = stream_response(reply, body) if body.get("stream") else json_response(reply)
        # What the endpoint itself added: the handler's time outside the batcher (reading, rendering, answering).
        record = next(r for r in reversed(state.requests) if r["id"] == reply["id"])  # requests may overlap
        record["handler_seconds"] = time.perf_counter() - t0 - waited
        return response

    async def _complete(self, state: EpisodeState, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        messages, tools, params, options = read_request(body, state.limits.sampling)
        trains = state.select is None or bool(state.select(body))
        if not trains:
            return await self._sample_and_answer(state, body, messages, tools, params, options, trains)
        # One trained request of an episode at a time: each continues the sequence the previous one left, so two
        # in flight (an agent's asyncio.gather) would splice one's turn into the other's context.
        async with state.turn_lock:
            return await self._sample_and_answer(state, body, messages, tools, params, options, trains)

    async def _sample_and_answer(
        self,
        state: EpisodeState,
        body: dict,
        messages: list,
        tools: list | None,
        params: SamplingParams,
        options: dict,
        trains: bool,
    ) -> tuple[dict[str, Any], float]:
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
        reply, parsed_calls, malformed = self._reply(comp, options)
        if trains:
            state.stitcher.add_completion(comp.token_ids, comp.logprobs, reply)
            state.trained_turns += 1
            state.tool_calls += parsed_calls
            state.malformed += malformed
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
        out = {"message": reply, "finish_reason": finish, "usage": usage, "model": body.get("model") or MODEL_NAME,
               "id": reply_id, "created": int(time.time())}  # fmt: skip
        if options["logprobs"]:  # the sampled tokens' own; top alternatives are not kept
            tok = self.chat.tokenizer
            out["logprobs"] = {"content": [
                {"token": (t := tok.decode([i])), "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                for i, lp in zip(comp.token_ids, comp.logprobs, strict=True)]}  # fmt: skip
        return out, waited

    def _reply(self, comp: Completion, options: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
        """The assistant message for a completion, tool calls parsed as vLLM's hermes parser returns them.
        With ``tool_choice="none"`` nothing is parsed; with ``parallel_tool_calls=false`` the first call is kept."""
        tool_choice = options["tool_choice"]
        text = strip_end_markers(self.chat.tokenizer.decode(comp.token_ids, skip_special_tokens=False))
        turn = parse_turn(text)
        message: dict[str, Any] = {"role": "assistant", "content": turn.content or None}
        if turn.reasoning is not None:
            message["reasoning_content"] = turn.reasoning
        if tool_choice == "none" or not (turn.calls or turn.errors):
            message["content"] = after_reasoning(text) if tool_choice == "none" else (turn.content or "")
            return message, 0, 0
        if turn.errors:  # as vLLM: one bad call and the whole turn is content, with no tool_calls
            message["content"] = after_reasoning(text)
            return message, 0, 1
        calls = turn.calls if options["parallel_tool_calls"] else turn.calls[:1]
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in calls
        ]
        return message, len(calls), 0

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
