"""Episodes of :class:`~agentrl.envs.agent_env.AgentEnv`: the user's agent code, played through the endpoint.

The rollout engine hands these episodes here instead of stepping them itself. Each one gets a key on the
run's :class:`~agentrl.rollout.endpoint.Endpoint` (started on first use, on loopback), its ``run`` is
awaited (or run in a worker thread when it is a plain function), and its result is scored. All episodes
of a batch run at once, so their requests meet in the endpoint's batches.

What the engine gets back is an ordinary :class:`~agentrl.rollout.trajectory.Trajectory`: the last token
sequence as ``ids``/``mask``/``logprobs``, earlier ones (before a prefix break) in ``segments``, the
conversation as the agent last sent it, the reward, and the per-request record (prompt and completion
lengths, finish reason, how the prompt was found).

Failure rules, as for native episodes: the agent code raising or hanging is the episode's infrastructure
failure, never the model's; a request the endpoint refused for a limit (turns, context) ends the episode as
a truncation with reward 0, as the native engine does; a :class:`~agentrl.errors.UserError` stops the run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import traceback
from typing import Any

from agentrl.envs.agent_env import AgentEnv
from agentrl.errors import UserError, one_line
from agentrl.rollout.endpoint import MODEL_NAME, Endpoint, EpisodeLimits, EpisodeState
from agentrl.rollout.generation import Completion, SamplingParams

log = logging.getLogger(__name__)

BREAK_WARNING = 0.25
"""Warn when more than this share of a batch's harness episodes broke the token prefix at least once."""


class HarnessPlayer:
    """Plays AgentEnv episodes for one rollout engine; owns the engine's endpoint."""

    def __init__(self, engine: Any, host: str = "127.0.0.1"):
        """``engine``: the :class:`~agentrl.rollout.engine.RolloutEngine` whose backend and seeds it shares."""
        self.engine, self.host = engine, host
        self.endpoint: Endpoint | None = None
        self.fatal: BaseException | None = None
        self.generation_seconds = 0.0
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False
        self._ssl: Any = None

    def start(self) -> Endpoint:
        if self.endpoint is None:
            self.endpoint = Endpoint(self.engine.chat, self._generate, host=self.host).start()
        return self.endpoint

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    async def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """On the endpoint's loop: one batch on the engine's generation thread, where native batches run too."""
        future = self.engine._executor.submit(self._timed, prompts, params)
        return await asyncio.wrap_future(future)

    def _timed(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        start = time.perf_counter()
        try:
            return self.engine.generate_batch(prompts, params)
        except UserError as exc:  # a wrong setting stops the run, not one episode
            self.fatal = self.fatal or exc
            raise
        finally:
            with self._lock:
                self.generation_seconds += time.perf_counter() - start

    async def play(self, episodes: list[Any]) -> None:
        import ssl

        self.start()
        self.fatal = None
        if self._ssl is None:  # built once: loading the CA bundle is most of what an HTTP client costs to create
            self._ssl = ssl.create_default_context()
        await asyncio.gather(*(self._play_one(e) for e in episodes))
        if self.fatal is not None:
            raise self.fatal
        broke = [e for e in episodes if e.traj.valid and e.traj.prefix_breaks]
        valid = [e for e in episodes if e.traj.valid]
        if valid and len(broke) / len(valid) > BREAK_WARNING and not self._warned:
            self._warned = True
            log.warning(
                "%d of %d agent episodes broke the token prefix (the harness trimmed or rewrote its history); "
                "each break trains as a separate, shorter sequence. See prefix_break_rate in the metrics.",
                len(broke), len(valid),
            )  # fmt: skip

    async def _play_one(self, e: Any) -> None:
        env: AgentEnv = e.env.unwrapped  # type: ignore[assignment]
        cfg = self.engine.config
        sampling = self.engine.sampling_params()
        limits = EpisodeLimits(max_turns=cfg.max_turns, max_total_tokens=cfg.max_total_tokens, sampling=sampling)
        assert self.endpoint is not None
        state = self.endpoint.open(limits, env.select)
        try:
            result, error = await run_agent(env, self.endpoint.base_url, state.key, MODEL_NAME, self._logged,
                                            ssl_context=self._ssl)  # fmt: skip
        finally:
            self.endpoint.finish(state)
        if error is not None and state.backend_error:  # the agent saw our 503: the backend's failure, not its bug
            error = f"generation backend failed: {state.backend_error}"
        try:
            await self._finish(e, env, state, result, error)
        finally:
            self.endpoint.forget(state)
            e.done = True
            try:
                env.close()
            except Exception:
                pass

    async def _finish(self, e: Any, env: AgentEnv, state: EpisodeState, result: Any, error: str | None) -> None:
        t = e.traj
        trained = [r for r in state.requests if r["trained"]]
        t.turns, t.tool_calls, t.parse_errors = state.trained_turns, state.tool_calls, state.malformed
        t.generated_tokens = sum(len(r["completion_ids"]) for r in trained)
        t.generation_seconds = sum(r["seconds"] for r in state.requests)
        t.prefix_breaks = state.stitcher.breaks
        # Compact: a trained request's prompt ids are samples()[segment].ids[:start], its sampled ids the
        # completion_tokens after them, with their logprobs there; only the counts are repeated here.
        # seconds: in the batcher; handler_seconds: in the endpoint outside it; id: the response's, as the agent saw it
        keep = ("id", "finish_reason", "prompt", "trained", "segment", "start", "seconds", "handler_seconds")
        t.requests = [{"prompt_tokens": len(r["prompt_ids"]), "completion_tokens": len(r["completion_ids"]),
                       **{k: r.get(k) for k in keep}} for r in state.requests]  # fmt: skip
        t.messages = state.last_messages
        sequences = state.stitcher.sequences()
        if sequences:
            last = sequences[-1]
            t.ids, t.mask, t.logprobs, t.prompt_length = last.ids, last.mask, last.logprobs, last.prompt_length
            t.segments = [{"ids": s.ids, "mask": s.mask, "logprobs": s.logprobs} for s in sequences[:-1]]
        truncated_by = state.truncated_by
        if truncated_by is None and trained and trained[-1]["finish_reason"] == "length":
            truncated_by = "max_new_tokens"  # as the native engine: a turn cut short is not an answer
        if truncated_by is not None and sequences:  # the model ran into a limit: its doing, reward 0
            t.truncated, t.truncated_by, t.turn_rewards, t.reward = True, truncated_by, [0.0], 0.0
            return
        if error is not None:
            t.infra_error = error
            return
        if not sequences:
            t.infra_error = "the agent code returned without a request to the policy that trains"
            return
        scored = await score_agent(env, result)
        if isinstance(scored, str):
            t.infra_error = scored
            return
        t.record_step(scored[0], True, False, {"reward_components": scored[1]})


async def run_agent(env: AgentEnv, base_url: str, api_key: str, model: str, logged: set[str],
                    ssl_context: Any = None, max_retries: int = 0) -> tuple[Any, str | None]:  # fmt: skip
    """Run one episode of ``env``'s agent code against ``base_url``: (what it returned, None), or (None, why it
    failed). A failure's traceback is logged the first time its kind (type and place) is in ``logged``.

    With ``ssl_context``, the episode's OpenAI client gets an HTTP client of its own built on that shared context:
    a default one costs about 17 ms to create (it loads the CA bundle), which 64 episodes pay on the loop their
    agents share. One pool per episode, not one for all: httpcore checks every pooled connection on each request.
    ``max_retries`` goes to that client: 0 in training, where a retried request would be sampled twice.
    """
    import httpx

    asynchronous = _is_async(env.run)
    args: tuple = ()
    http = None
    if ssl_context is not None and env.signature != "url":
        http = (httpx.AsyncClient if asynchronous else httpx.Client)(verify=ssl_context, timeout=env.timeout)
    try:
        args = env.arguments(base_url, api_key, model, asynchronous=asynchronous, http_client=http,
                             max_retries=max_retries)  # fmt: skip
        call = env.run(env.task, *args) if asynchronous else in_thread(env.run, env.task, *args)
        return await asyncio.wait_for(_awaited(call), env.timeout), None
    except UserError:
        raise
    except asyncio.TimeoutError:
        return None, f"the agent code did not return within its timeout of {env.timeout:g} s"
    except Exception as exc:
        return None, agent_error(exc, logged)
    finally:
        await _close_client(args)
        if http is not None:
            await _close_client((http,))


def _is_async(fn: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one (``functools.partial`` of one included)."""
    target = getattr(fn, "func", fn)
    call = type(target).__call__ if not inspect.isroutine(target) else None  # an instance's own __call__
    return inspect.iscoroutinefunction(target) or (call is not None and inspect.iscoroutinefunction(call))


async def _awaited(call: Any) -> Any:
    """The result of ``call``, awaiting what it returns as long as that is awaitable (a plain function wrapping
    an async one returns a coroutine)."""
    out = await call
    while inspect.isawaitable(out):
        out = await out
    return out


def in_thread(fn: Any, *args: Any) -> asyncio.Future:
    """``fn(*args)`` in a daemon thread of its own. Not the loop's default executor: its few workers would queue
    episodes (their wait counting against the timeout), and ``asyncio.run`` waits for them without a limit, so
    one agent stuck in a blocking call would hang the run. A timed-out call is abandoned, never waited for."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            outcome = (True, fn(*args))
        except Exception as exc:  # handed to the episode
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the run moved on and closed its loop: an abandoned call's result goes nowhere
            pass

    threading.Thread(target=work, name="agentrl-agent", daemon=True).start()
    return future


def agent_error(exc: BaseException, logged: set[str]) -> str:
    """The episode's infra error; the traceback is logged the first time each kind of failure is seen."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    kind = f"{type(exc).__name__} at {where}"
    if kind not in logged:
        logged.add(kind)
        log.warning("agent code raised %s (logged once per kind; the episode is an infrastructure failure)\n%s",
                    kind, "".join(traceback.format_exception(exc)))  # fmt: skip
    return f"agent code raised {type(exc).__name__}: {one_line(exc, 300)}"


async def score_agent(env: AgentEnv, result: Any) -> tuple[float, dict[str, float]] | str:
    """``env.score`` of what the agent returned, off the event loop and within the agent's timeout: (reward,
    components), or why it failed."""
    try:
        return await asyncio.wait_for(in_thread(env.grade, env.task, result), env.timeout)
    except UserError:
        raise
    except asyncio.TimeoutError:
        return f"score did not return within the agent's timeout of {env.timeout:g} s"
    except Exception as exc:
        return f"score failed: {type(exc).__name__}: {one_line(exc, 300)}"


async def _close_client(args: tuple) -> None:
    client = args[0] if len(args) in (1, 2) else None  # (client,) or (client, model); not the URL form
    close = getattr(client, "aclose", None) or getattr(client, "close", None)  # an httpx.AsyncClient, or the rest
    if close is None:
        return
    try:
        out = close()
        if inspect.isawaitable(out):
            await out
    except Exception:
        pass


def harness_metrics(trajs: list[Any]) -> dict[str, float]:
    """Prefix health of a batch's agent episodes (empty when it had none)."""
    harness = [t for t in trajs if t.valid and t.requests]
    if not harness:
        return {}
    return {
        "harness_episodes": float(len(harness)),
        "prefix_break_rate": sum(bool(t.prefix_breaks) for t in harness) / len(harness),
        "prefix_break_segments": float(sum(t.prefix_breaks for t in harness)),
    }
