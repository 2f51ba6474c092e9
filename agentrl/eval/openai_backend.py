"""``agentrl eval --backend openai``: episodes played through any OpenAI-compatible chat API.

The rollout engine is token-level: it keeps the policy's exact token ids, which needs the policy's
tokenizer and chat template. A hosted model's tokenizer is unknown, so this loop works on messages
instead. Each turn POSTs the conversation to ``{base_url}/chat/completions`` (with the environment's
tools), hands the assistant message (content and/or ``tool_calls``) to ``env.astep``, and appends the
environment's reply. Everything else is the token engine's: the same environments, the same reset
seeds (so a hosted model and a local adapter are scored on the same task instances), the same
truncation rules and the same :class:`~agentrl.rollout.trajectory.Trajectory` records, which then
go through the usual metrics and reports.

Failures of the server (connection refused, timeouts, HTTP 5xx and 429, a body that is not a chat
completion) are retried with backoff; a request that still fails makes its episode an infrastructure
failure, which is excluded and counted, never scored as zero. When more than half of the requests
fail, the run stops with one line naming the URL and the last error. A first request the server
rejects (HTTP 4xx: a wrong model name, a parameter it does not take, a bad key) would be rejected in
every episode, so it stops the run at once with the server's own message. Later in an episode, a
conversation that outgrew the model's context truncates the episode (as the token budget does), and
any other refusal fails that episode only. Models that refuse ``max_tokens`` (OpenAI's reasoning
models) get ``max_completion_tokens`` instead.

What this does not cover: token ids, logprobs and the token view (the report says so), training,
and ``--compare`` (serve the adapter under its own name and evaluate it as another model).
The API key is read from the environment and sent in the ``Authorization`` header only; it is never
logged or written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agentrl.envs.agent_env import AgentEnv
from agentrl.envs.core import Env, Message
from agentrl.errors import UserError, one_line
from agentrl.rollout.engine import episode_seed
from agentrl.rollout.harness import run_agent, score_agent
from agentrl.rollout.trajectory import Trajectory

TOKEN_METRICS_ABSENT = (
    "absent: the server returned no token ids, so trajectories carry messages only "
    "(no token ids, logprobs or token view); generated-token counts are the server's usage figures"
)
RETRY_DELAYS = (1.0, 3.0, 8.0)
"""Seconds to wait before each retry of a failed request (so 1 + len(RETRY_DELAYS) attempts in all)."""
MAX_RETRY_AFTER = 30.0
"""Longest wait a server's Retry-After header may ask for."""
REQUEST_TIMEOUT = 300.0
"""Seconds one request may take; long answers from a busy hosted model need minutes."""
STEP_TIMEOUT = 300.0
"""Seconds one environment step may take before the harness gives up (as in the rollout engine)."""


# ----- settings and the key --------------------------------------------------------------------
def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (a local server that needs no key)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash, or a UserError that says what a base URL looks like."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
    if parts.username or parts.password:
        raise UserError("--base-url must not carry credentials; put the key in the environment (--api-key-env)")
    return url.rstrip("/")


def api_key(base_url: str, env_name: str) -> str | None:
    """The key from environment variable ``env_name``; None for a loopback server that was given none."""
    key = os.environ.get(env_name, "").strip()
    if key:
        return key
    if is_loopback(base_url):
        return None
    raise UserError(f"no API key for {base_url}: set {env_name} (or name another variable with --api-key-env)")


@dataclass
class ChatAPI:
    """One OpenAI-compatible endpoint, a model it serves, and the sampling of every request."""

    base_url: str
    """Base URL of the API, e.g. http://127.0.0.1:8000/v1; requests go to {base_url}/chat/completions."""
    model: str
    """The model name the server serves."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer token; None sends no Authorization header. Never logged or written."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    """Sent only when set (OpenAI's own API does not take it; vLLM and others do)."""
    min_p: float = 0.0
    """Sent only when set, like top_k."""
    max_tokens: int = 256
    """Tokens per turn."""
    stop: list[str] = field(default_factory=list)
    max_concurrency: int = 8
    """Requests in flight at once."""

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"


@dataclass
class APIStats:
    """What the requests of one ``agentrl eval`` invocation did (a resumed run counts its own); goes into
    summary.json and the report."""

    requests: int = 0
    """Requests finished, successfully or not (a request counts once however often it was retried)."""
    failed: int = 0
    """Requests that still failed after every retry (each one ended its episode as an infra failure)."""
    retries: int = 0
    without_usage: int = 0
    """Answers without a ``usage`` block: generated-token counts are then unknown."""
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "failed": self.failed, "retries": self.retries,
                "without_usage": self.without_usage, "last_error": self.last_error}  # fmt: skip


# ----- one request ---------------------------------------------------------------------------------
class APIFailure(Exception):
    """A request that failed for reasons of the server or the network, after its retries."""


class Rejected(Exception):
    """The server answered 4xx (not 429): the request itself is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class ContextOverflow(Rejected):
    """The conversation no longer fits the served model's context: the episode is truncated."""


@dataclass
class Reply:
    message: Message
    finish_reason: str | None
    completion_tokens: int | None
    total_tokens: int | None
    seconds: float


def _server_message(response: Any) -> str:
    """The error text of an OpenAI-style error body ({"error": {"message"}} or vLLM's {"message"})."""
    try:
        body = response.json()
    except ValueError:
        return one_line(response.text or response.reason_phrase, 300)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return one_line(err["message"], 300)
        if isinstance(err, str):
            return one_line(err, 300)
        if body.get("message"):
            return one_line(body["message"], 300)
    return one_line(response.text, 300)


def _overflows(message: str) -> bool:
    m = message.lower()
    return "context length" in m or "maximum context" in m or "context window" in m


class ChatClient:
    """Sends chat-completion requests with retries, a bound on requests in flight, and a failure budget.

    Use inside a running event loop: ``async with ChatClient(api, stats) as client``.
    """

    def __init__(self, api: ChatAPI, stats: APIStats | None = None, *, timeout: float | None = None):
        self.api = api
        self.stats = stats if stats is not None else APIStats()
        self.timeout = REQUEST_TIMEOUT if timeout is None else timeout
        self._slots = asyncio.Semaphore(max(1, api.max_concurrency))
        self._http: Any = None
        # OpenAI's reasoning models refuse max_tokens and want max_completion_tokens, which older
        # servers do not know; the first refusal switches the run over.
        self._length_key = "max_tokens"

    async def __aenter__(self) -> ChatClient:
        import httpx

        headers = {"Authorization": f"Bearer {self.api.api_key}"} if self.api.api_key else {}
        limits = httpx.Limits(max_connections=max(1, self.api.max_concurrency))
        self._http = httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def body(self, messages: list[Message], tools: list[dict[str, Any]] | None, seed: int) -> dict[str, Any]:
        a = self.api
        body: dict[str, Any] = {"model": a.model, "messages": messages, "temperature": a.temperature,
                                self._length_key: a.max_tokens, "seed": seed}  # fmt: skip
        if a.top_p < 1.0:  # 1.0 is the API's default; some models refuse the parameter outright
            body["top_p"] = a.top_p
        if tools:
            body["tools"] = tools
        if a.stop:
            body["stop"] = list(a.stop)
        if a.top_k:
            body["top_k"] = a.top_k
        if a.min_p:
            body["min_p"] = a.min_p
        return body

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]] | None, seed: int) -> Reply:
        """One assistant turn. Raises APIFailure after the retries, Rejected or ContextOverflow on 4xx."""
        import httpx

        async with self._slots:
            attempt, error, wait = 0, "", 0.0
            while True:
                start = time.perf_counter()
                try:
                    response = await self._http.post(self.api.url, json=self.body(messages, tools, seed))
                except httpx.TimeoutException:
                    error = f"no answer within {self.timeout:g} s"
                except httpx.HTTPError as exc:  # connection refused or reset, DNS, protocol errors
                    error = one_line(f"{type(exc).__name__}: {exc}", 300)
                else:
                    status = response.status_code
                    if status == 429 or status >= 500:
                        error = f"HTTP {status}: {self._redact(_server_message(response))}"
                        wait = _retry_after(response)
                    elif status >= 400:
                        message = self._redact(_server_message(response))
                        if "max_completion_tokens" in message and self._length_key == "max_tokens":
                            self._length_key = "max_completion_tokens"
                            continue  # the same request in the other spelling, at once
                        if _overflows(message):
                            self._finish()  # the episode ran out of context: its end, not a failure
                            raise ContextOverflow(status, message)
                        self._finish(f"HTTP {status}: {message}", check=False)  # the caller says why, better
                        raise Rejected(status, message)
                    else:
                        try:
                            reply = _parse(response.json(), time.perf_counter() - start)
                        except (ValueError, KeyError, IndexError, TypeError):
                            text = self._redact(one_line(response.text, 120))
                            error = f"HTTP {status}, not a chat completion: {text!r}"
                        else:
                            self._finish()
                            if reply.completion_tokens is None:
                                self.stats.without_usage += 1
                            return reply
                if attempt == len(RETRY_DELAYS):
                    break
                self.stats.retries += 1
                await asyncio.sleep(max(RETRY_DELAYS[attempt], wait))
                attempt, wait = attempt + 1, 0.0
            self._finish(error)
            raise APIFailure(error)

    def _redact(self, text: str) -> str:
        """``text`` without the key: some servers quote the key they were sent in their error messages."""
        return text.replace(self.api.api_key, "[API key]") if self.api.api_key else text

    def _finish(self, error: str | None = None, *, check: bool = True) -> None:
        self.stats.requests += 1
        if error is not None:
            self.stats.failed += 1
            self.stats.last_error = error
            # Stop early when the server is plainly down, rather than failing every episode slowly.
            if check and self.stats.failed >= 4:
                self.check()

    def check(self) -> None:
        """UserError when more than half of the requests so far failed."""
        s = self.stats
        if s.requests and 2 * s.failed > s.requests:
            raise UserError(
                f"{s.failed} of {s.requests} requests to {self.api.url} failed after "
                f"{len(RETRY_DELAYS)} retries each; last error: {s.last_error}"
            )


def _retry_after(response: Any) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


def _parse(data: Any, seconds: float) -> Reply:
    choice = data["choices"][0]
    msg = choice["message"]
    if not isinstance(msg, dict):
        raise TypeError("message is not an object")
    # Only what the next request needs; extra fields (refusal, annotations) are the server's business.
    message: Message = {"role": "assistant", "content": msg.get("content") or ""}
    if msg.get("tool_calls"):
        message["tool_calls"] = msg["tool_calls"]
    usage = data.get("usage") or {}
    done = usage.get("completion_tokens")
    total = usage.get("total_tokens")
    return Reply(message, choice.get("finish_reason"), done if isinstance(done, int) else None,
                 total if isinstance(total, int) else None, seconds)  # fmt: skip


# ----- episodes ------------------------------------------------------------------------------------
def chunks(task_ids: Sequence[str], samples: int, seed: int, chunk: int = 64) -> list[tuple[list[str], int]]:
    """``(task ids, base seed)`` of each chunk, as :func:`agentrl.eval.loop.evaluate` splits the work:
    its chunks of about ``chunk`` episodes run with seed ``seed + start``, so the reset seeds here match."""
    per_chunk = max(1, chunk // samples)
    return [(list(task_ids[i : i + per_chunk]), seed + i) for i in range(0, len(task_ids), per_chunk)]


def normalize(messages: Sequence[Message]) -> list[Message]:
    """The conversation in the chat API's shape: tool calls with ids and JSON-string arguments, and each
    tool message answering one call by ``tool_call_id``.

    Environments write tool calls and results without ids (their chat templates need none), few-shot
    turns included; the API refuses a tool message that answers no call, and an assistant message whose
    calls are not all answered. Ids go to the tool messages in order, each preferring a call of its own
    tool name. A call the environment did not run (over its per-turn limit, which its error message
    says) is answered with a short error, so the next request is well-formed.
    """
    out: list[Message] = []
    pending: list[tuple[str, Any]] = []  # calls of the last assistant turn not answered yet

    def answer_the_rest() -> None:
        out.extend({"role": "tool", "tool_call_id": i, "content": "Error: this call was not run."} for i, _ in pending)
        pending.clear()

    for k, m in enumerate(messages):
        m = dict(m)
        if m.get("role") == "tool":
            if m.get("tool_call_id"):
                pending[:] = [p for p in pending if p[0] != m["tool_call_id"]]
            elif pending:
                j = next((n for n, (_, name) in enumerate(pending) if name == m.get("name")), 0)
                m["tool_call_id"] = pending.pop(j)[0]
            out.append(m)
            continue
        answer_the_rest()
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m["tool_calls"] = [_call(c, f"call_{k}_{j}") for j, c in enumerate(m["tool_calls"])]
            pending[:] = [(c["id"], c["function"].get("name")) for c in m["tool_calls"]]
        out.append(m)
    return out


def _call(call: Any, default_id: str) -> dict[str, Any]:
    c = call if isinstance(call, dict) else {}
    fn = c.get("function")
    fn = dict(fn) if isinstance(fn, dict) else {k: c[k] for k in ("name", "arguments") if k in c}
    if not isinstance(fn.get("arguments"), str):
        fn["arguments"] = json.dumps(fn.get("arguments") or {})
    return {"id": c.get("id") or default_id, "type": "function", "function": fn}


_WIRE_KEYS = {"assistant": ("role", "content", "tool_calls"), "tool": ("role", "tool_call_id", "content")}


def wire(messages: Sequence[Message]) -> list[Message]:
    """``normalize(messages)`` with only the keys the API defines (no tool ``name``, no reasoning)."""
    return [{k: m[k] for k in _WIRE_KEYS.get(m.get("role", ""), ("role", "content")) if k in m}
            for m in normalize(messages)]  # fmt: skip


def _truncate(t: Trajectory, env: Env, why: str) -> None:
    t.truncated, t.truncated_by = True, why
    env.on_truncate()


async def play_episode(
    client: ChatClient,
    make_env: Callable[[], Env],
    task_id: str,
    index: int,
    env_seed: int,
    *,
    max_turns: int,
    max_total_tokens: int,
) -> Trajectory:
    """One episode through the chat API; the rules for turns, limits and failures are the rollout engine's."""
    traj = Trajectory(task_id=task_id, group_index=index)
    try:
        env = make_env()
        obs, _ = env.reset(seed=env_seed, options={"task_id": task_id})
    except UserError:
        raise
    except Exception as exc:  # an environment that cannot start is the harness's failure
        traj.infra_error = f"reset failed: {type(exc).__name__}: {exc}"
        return traj
    if isinstance(env.unwrapped, AgentEnv):  # the agent code talks to the served model itself
        return await _play_agent(client, env, traj)
    messages = [dict(m) for m in obs]
    tools = list(env.tool_specs) or None
    used = 0  # tokens of the conversation so far, as the server counted them
    try:
        while True:
            if used >= max_total_tokens:
                _truncate(traj, env, "max_tokens")
                break
            try:
                # Each turn its own sampling seed, a function of the episode's: reruns repeat themselves.
                reply = await client.complete(wire(messages), tools, seed=(env_seed + 7919 * traj.turns) % 2**31)
            except ContextOverflow:
                _truncate(traj, env, "max_tokens")  # the served model's context is the budget that ran out
                break
            except Rejected as exc:
                # A wrong model name, a parameter the server does not take, a missing key: the same in
                # every episode. Only a later turn (a conversation this episode built) fails on its own.
                if traj.turns == 0 or exc.status in (401, 403, 404):
                    raise UserError(f"{client.api.url} rejected the request ({exc})") from None
                traj.infra_error = f"chat API rejected turn {traj.turns + 1}: {exc}"
                break
            except APIFailure as exc:
                traj.infra_error = f"chat API failed: {exc}"
                break
            traj.turns += 1
            traj.generation_seconds += reply.seconds
            traj.generated_tokens += reply.completion_tokens or 0
            used = reply.total_tokens or used
            messages.append(reply.message)
            if used > max_total_tokens:
                _truncate(traj, env, "max_tokens")
                break
            # A turn cut by max_tokens is not an answer: never scored, as in the token engine.
            if reply.finish_reason == "length":
                _truncate(traj, env, "max_new_tokens")
                break
            if not await _step(traj, env, dict(reply.message), messages, max_turns):
                break
    finally:
        traj.messages = normalize(messages)
        try:
            env.close()
        except Exception:
            pass
    return traj


_LOGGED: set[str] = set()  # kinds of agent-code failure whose traceback was logged


async def _play_agent(client: ChatClient, env: Env, traj: Trajectory) -> Trajectory:
    """An ``AgentEnv`` episode against the served model: its agent code gets the API's URL, key and model, and
    samples as it chooses (the endpoint's recording is for training; here nothing is trained)."""
    agent = env.unwrapped
    start = time.perf_counter()
    async with client._slots:  # counts against the API's concurrency like any episode
        # Retries as the SDK's default: a hosted API's 429 or 503 is not the agent's failure.
        result, error = await run_agent(agent, client.api.base_url, client.api.api_key or "none", client.api.model,
                                        _LOGGED, max_retries=2)  # fmt: skip
    traj.generation_seconds = time.perf_counter() - start
    scored = await score_agent(agent, result) if error is None else error
    if isinstance(scored, str):
        traj.infra_error = scored
    else:
        traj.record_step(scored[0], True, False, {"reward_components": scored[1]})
    try:
        env.close()
    except Exception:
        pass
    return traj


async def _step(t: Trajectory, env: Env, action: Message, messages: list[Message], max_turns: int) -> bool:
    """Hand the turn to the environment; True when the episode continues (its reply then appended)."""
    start = time.perf_counter()
    try:
        obs, reward, terminated, truncated, info = await asyncio.wait_for(env.astep(action), timeout=STEP_TIMEOUT)
    except asyncio.TimeoutError:
        t.infra_error = f"environment step exceeded the harness timeout of {STEP_TIMEOUT:g} s"
        return False
    except UserError:
        raise
    except Exception as exc:
        t.infra_error = f"environment step failed: {type(exc).__name__}: {exc}"
        return False
    t.tool_seconds += time.perf_counter() - start
    if t.record_step(reward, terminated, truncated, info):
        return False
    if t.turns >= max_turns:
        _truncate(t, env, "max_turns")
        return False
    if not obs:
        t.infra_error = "the environment continued without an observation"
        return False
    messages.extend(dict(m) for m in obs)
    return True


# ----- a run ---------------------------------------------------------------------------------------
def evaluate_chat_api(
    api: ChatAPI,
    make_env: Callable[[], Env],
    task_ids: Sequence[str],
    *,
    samples: int = 1,
    seed: int = 0,
    max_turns: int = 8,
    max_total_tokens: int = 4096,
    stats: APIStats | None = None,
    on_chunk: Callable[[list[Trajectory]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Trajectory]:
    """``samples`` episodes per task through the chat API, chunked and seeded like :func:`~agentrl.eval.loop.evaluate`.

    Episodes run concurrently, at most ``api.max_concurrency`` requests in flight. ``on_chunk`` gets
    each chunk's trajectories as soon as it finishes (to save them), ``on_progress`` its task count.
    """
    return asyncio.run(_evaluate(api, make_env, task_ids, samples, seed, max_turns, max_total_tokens, stats,
                                 on_chunk, on_progress))  # fmt: skip


async def _evaluate(api, make_env, task_ids, samples, seed, max_turns, max_total_tokens, stats, on_chunk, on_progress):
    trajectories: list[Trajectory] = []
    async with ChatClient(api, stats) as client:
        for ids, base in chunks(task_ids, samples, seed):
            jobs = [
                play_episode(client, make_env, tid, i, episode_seed(base, tid, i),
                             max_turns=max_turns, max_total_tokens=max_total_tokens)
                for tid in ids for i in range(samples)
            ]  # fmt: skip
            new = await _all_or_nothing(jobs)
            trajectories += new
            if on_chunk:
                on_chunk(new)  # saved before the check below, so a stopped run resumes from here
            if on_progress:
                on_progress(len(ids))
            client.check()
    return trajectories


async def _all_or_nothing(jobs: list[Any]) -> list[Trajectory]:
    """Run ``jobs`` concurrently; the first one to raise (a UserError) cancels the others and is raised."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    # Every exception is retrieved (asyncio complains of those that are not); the first is raised.
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if errors:
        raise errors[0]
    return [t.result() for t in tasks]
