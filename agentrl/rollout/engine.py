"""The rollout engine: grouped, multi-turn, token-exact episodes for training and evaluation alike.

For each task, G episodes run side by side. Every turn, all episodes waiting for the policy are
sampled in one batch; as soon as a batch returns, each episode's environment step (its tool calls)
starts as its own task, and the next batch starts with whoever is ready, so tool calls overlap each
other and the generation of other episodes.

Sequences are built with :class:`~agentrl.conversation.TokenConversation`: sampled ids are kept
as sampled, with their logprobs, and environment messages are spliced in as rendered deltas.

Failures of the harness (the generation backend raising, failing one prompt with
``Completion.error`` or returning ids outside the vocabulary, an environment step or its reward
function raising or hanging, a tool reporting ``infra_error``) mark the episode ``infra_error``: every
episode of the batch when the backend raises, only that prompt's when it reports an error. Such
episodes are left out of their group's statistics and counted. A :class:`~agentrl.errors.UserError`
(a missing package or a wrong setting, found only when an episode first needs it) stops the run
instead: it would fail every episode the same way. Groups whose valid rewards are all equal carry no
GRPO signal and are dropped or sampled again, as configured, and counted.
"""

from __future__ import annotations

import asyncio
import numbers
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from agentrl import faults
from agentrl.chat.conversation import TokenConversation
from agentrl.chat.format import ChatFormat
from agentrl.envs.agent_env import AgentEnv
from agentrl.envs.core import Env
from agentrl.errors import UserError
from agentrl.rollout.generation import Completion, GenerationBackend, SamplingParams, batch_seed
from agentrl.rollout.harness import HarnessPlayer, harness_metrics
from agentrl.rollout.trajectory import Group, Trajectory


@dataclass
class RolloutConfig:
    """How episodes are sampled."""

    group_size: int = 8
    """Episodes per task (G)."""
    max_turns: int = 8
    """Assistant turns per episode before it is truncated."""
    max_total_tokens: int = 4096
    """Token budget of a whole episode (prompt included); exceeding it truncates the episode."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Per-turn sampling; ``sampling.max_new_tokens`` is the per-turn limit."""
    zero_variance: str = "drop"
    """What to do with groups whose rewards are all equal: "keep", "drop" or "resample"."""
    max_resamples: int = 2
    """How many times a zero-variance group is sampled again before it is dropped."""
    min_valid_fraction: float = 0.5
    """A group with fewer valid (non-infra-failed) episodes than this fraction of G is dropped."""
    step_timeout: float = 300.0
    """Seconds one environment step may take before the harness gives up (an infra failure)."""
    seed: int = 0
    """Base seed for environment resets and sampling."""
    endpoint_host: str = "127.0.0.1"
    """Where the endpoint that agent code (``AgentEnv``) talks to listens; loopback unless you need otherwise."""

    def __post_init__(self) -> None:
        if self.zero_variance not in ("keep", "drop", "resample"):
            raise ValueError(f"zero_variance must be 'keep', 'drop' or 'resample', got {self.zero_variance!r}")
        if self.group_size < 1 or self.max_turns < 1:
            raise ValueError("group_size and max_turns must be at least 1")


@dataclass
class RolloutBatch:
    groups: list[Group]
    metrics: dict[str, float]

    @property
    def trainable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.dropped is None]


class _Episode:
    def __init__(self, env: Env, conv: TokenConversation, traj: Trajectory, *, harness: bool = False):
        self.env, self.conv, self.traj = env, conv, traj
        self.done = False
        self.harness = harness
        """Played by agent code through the endpoint (:mod:`agentrl.rollout.harness`), not stepped here."""

    def finish(self, *, infra_error: str | None = None) -> None:
        if infra_error and self.traj.infra_error is None:
            self.traj.infra_error = infra_error
        self.done = True
        t, c = self.traj, self.conv
        t.ids, t.mask, t.logprobs, t.messages = c.ids, c.mask, c.logprobs, c.messages
        t.prompt_length = c.prompt_length
        try:
            self.env.close()
        except Exception:
            pass


class RolloutEngine:
    """Samples groups of episodes with a generation backend in environments built by ``make_env``."""

    def __init__(
        self,
        backend: GenerationBackend,
        chat: ChatFormat,
        make_env: Callable[[], Env],
        config: RolloutConfig | None = None,
    ):
        self.backend, self.chat, self.make_env = backend, chat, make_env
        self.config = config or RolloutConfig()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-generate")
        self._batches = 0
        self._harness: HarnessPlayer | None = None
        self._seed_lock = threading.Lock()  # native batches and the endpoint's draw seeds from one counter
        # Ids a backend may return: the tokenizer's, or the model's embedding rows when it has more
        # (padding rows a random model can sample). Anything else is garbage from the backend.
        config = getattr(getattr(backend, "model", None), "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        model_vocab = getattr(backend, "vocab_size", None) or getattr(text_config, "vocab_size", None)
        self.vocab_limit = max(len(chat.tokenizer), int(model_vocab or 0))

    # ----- public ----------------------------------------------------------------------------
    def run(self, task_ids: Sequence[str], *, seed: int | None = None) -> RolloutBatch:
        """Sample one group per task id (synchronous wrapper around :meth:`arun`)."""
        return asyncio.run(self.arun(task_ids, seed=seed))

    @property
    def harness(self) -> HarnessPlayer:
        """The player of agent-code episodes, with the endpoint they talk to (started on first use)."""
        if self._harness is None:
            self._harness = HarnessPlayer(self, host=self.config.endpoint_host)
        return self._harness

    def close(self) -> None:
        """Stop the agent endpoint, if one was started. The engine can still be used; it starts again."""
        if self._harness is not None:
            self._harness.close()
            self._harness = None

    def sampling_params(self) -> SamplingParams:
        """The run's per-turn sampling, with the end-of-turn token among the stop ids."""
        return replace(self.config.sampling, stop_token_ids=self._stop_ids())

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One backend call with this run's next sampling seed (unless ``params`` fixes one); call it on the
        generation thread. Agent episodes sample through here; native ones seed their batches the same way."""
        params = replace(params)
        if params.seed is None and params.temperature > 0:
            with self._seed_lock:
                params.seed = batch_seed(self.config.seed, self._batches)
                self._batches += 1
        return self.backend.generate(prompts, params)

    async def arun(self, task_ids: Sequence[str], *, seed: int | None = None) -> RolloutBatch:
        """Sample one group per task id. ``seed`` makes this call's resets and sampling a function of
        ``seed`` alone (not of earlier calls), which is what lets a resumed training run repeat itself."""
        if seed is not None:
            self.config = replace(self.config, seed=seed)
            self._batches = 0
        cfg = self.config
        start = time.perf_counter()
        self._clock = {"generation": 0.0, "tools_only": 0.0}
        harness_start = self._harness.generation_seconds if self._harness is not None else 0.0
        groups = {tid: Group(tid, []) for tid in task_ids}
        pending = list(task_ids)
        attempt = 0
        while pending:
            episodes = [self._start(tid, i, attempt) for tid in pending for i in range(cfg.group_size)]
            await self._play([e for e in episodes if e is not None and not e.done])
            for tid in pending:
                groups[tid].trajectories = [e.traj for e in episodes if e is not None and e.traj.task_id == tid]
            retry = []
            for tid in pending:
                group = groups[tid]
                if len(group.valid) < cfg.min_valid_fraction * cfg.group_size:
                    group.dropped = "too_few_valid"
                elif group.zero_variance and cfg.zero_variance != "keep":
                    if cfg.zero_variance == "resample" and group.resamples < cfg.max_resamples:
                        group.resamples += 1
                        retry.append(tid)
                    else:
                        group.dropped = "zero_variance"
            pending, attempt = retry, attempt + 1
        ordered = [groups[tid] for tid in task_ids]
        if self._harness is not None:  # the agent episodes' backend time counts as generation too
            self._clock["generation"] += self._harness.generation_seconds - harness_start
        return RolloutBatch(ordered, batch_metrics(ordered, time.perf_counter() - start, self._clock))

    # ----- episodes --------------------------------------------------------------------------
    def _start(self, task_id: str, index: int, attempt: int) -> _Episode | None:
        traj = Trajectory(task_id=task_id, group_index=index)
        seed = episode_seed(self.config.seed, task_id, index, attempt)
        try:
            env = self.make_env()
            obs, _ = env.reset(seed=seed, options={"task_id": task_id})
            if isinstance(env.unwrapped, AgentEnv):  # the agent code renders its own prompts
                return _Episode(env, TokenConversation(chat=self.chat), traj, harness=True)
            conv = TokenConversation.start(self.chat, obs, list(env.tool_specs) or None)
        except UserError:
            raise  # a wrong setting (a missing package, a bad path) fails the run in one line, not per episode
        except Exception as exc:  # an environment that cannot start is the harness's failure
            traj.infra_error = f"reset failed: {type(exc).__name__}: {exc}"
            episode = _Episode(_NullEnv(), TokenConversation(chat=self.chat), traj)
            episode.done = True
            return episode
        return _Episode(env, conv, traj)

    async def _play(self, episodes: list[_Episode]) -> None:
        agents = [e for e in episodes if e.harness]
        if not agents:
            return await self._play_native(episodes)
        await asyncio.gather(self._play_native([e for e in episodes if not e.harness]), self.harness.play(agents))

    async def _play_native(self, episodes: list[_Episode]) -> None:
        loop = asyncio.get_running_loop()
        ready = [e for e in episodes if not self._out_of_budget(e)]
        stepping: dict[asyncio.Task, _Episode] = {}
        gen_future: asyncio.Future | None = None
        batch: list[_Episode] = []
        gen_started = 0.0
        while ready or stepping or gen_future is not None:
            if gen_future is None and ready:
                batch, ready = ready, []
                # Seeds are packed, not summed (generate_batch, batch_seed): with `seed * K + batch`, and
                # backends adding each prompt's index, batch b + 1's prompt i reused batch b's prompt i + 1
                # seed, so a resampled group was dealt completions it already had.
                prompts = [e.conv.ids for e in batch]
                gen_future = loop.run_in_executor(self._executor, self.generate_batch, prompts, self.sampling_params())
                gen_started = time.perf_counter()
            idle_start = time.perf_counter()
            waitables: set[asyncio.Future] = set(stepping)
            if gen_future is not None:
                waitables.add(gen_future)
            done, _ = await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
            if gen_future is None:
                self._clock["tools_only"] += time.perf_counter() - idle_start
            for fut in done:
                if fut is gen_future:
                    gen_future = None
                    elapsed = time.perf_counter() - gen_started
                    self._clock["generation"] += elapsed
                    try:
                        completions = fut.result()
                        if len(completions) != len(batch):
                            raise RuntimeError(
                                f"backend returned {len(completions)} completions for {len(batch)} prompts"
                            )
                        faults.fire("generate", completions=completions)
                    except UserError:
                        raise
                    except Exception as exc:
                        for e in batch:
                            e.finish(infra_error=f"generation backend failed: {type(exc).__name__}: {exc}")
                        continue
                    for e, comp in zip(batch, completions, strict=True):
                        e.traj.generation_seconds += elapsed
                        if getattr(comp, "error", None):  # this prompt alone failed (on every server)
                            e.finish(infra_error=f"generation backend failed: {comp.error}")
                            continue
                        garbage = invalid_completion(comp, self.vocab_limit)
                        if garbage:  # never decoded, never trained on: the backend's failure, not the policy's
                            e.finish(infra_error=f"generation backend returned {garbage}")
                            continue
                        if self._take_turn(e, comp):
                            task = asyncio.ensure_future(self._step(e, comp))
                            stepping[task] = e
                else:
                    e = stepping.pop(fut)
                    fut.result()  # _step catches the episode's failures; what escapes it (a UserError) stops the run
                    if not e.done and not self._out_of_budget(e):
                        ready.append(e)

    def _stop_ids(self) -> list[int]:
        return sorted({self.chat.end_of_turn_id, *self.config.sampling.stop_token_ids})

    def _out_of_budget(self, e: _Episode) -> bool:
        if len(e.conv.ids) >= self.config.max_total_tokens:
            self._truncate(e, "max_tokens")
            return True
        return False

    def _truncate(self, e: _Episode, why: str) -> None:
        e.traj.truncated, e.traj.truncated_by = True, why
        e.env.on_truncate()
        e.finish()

    def _take_turn(self, e: _Episode, comp: Completion) -> bool:
        """Append the sampled turn; False if a limit ended the episode here.

        A turn cut by ``max_new_tokens`` is not an answer: it is never handed to the environment (a
        half-written tool call or answer would be scored as if the model had finished), and the
        episode ends truncated with ``truncated_by="max_new_tokens"``.
        """
        room = self.config.max_total_tokens - len(e.conv.ids)
        ids, logprobs = comp.token_ids[:room], comp.logprobs[:room]
        e.conv.add_assistant(ids, logprobs)
        e.traj.turns += 1
        e.traj.generated_tokens += len(ids)
        if len(comp.token_ids) > room:
            self._truncate(e, "max_tokens")
            return False
        if comp.finish_reason == "length":
            self._truncate(e, "max_new_tokens")
            return False
        return True

    async def _step(self, e: _Episode, comp: Completion) -> None:
        text = self.chat.tokenizer.decode(comp.token_ids, skip_special_tokens=False)
        start = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = await asyncio.wait_for(
                e.env.astep(text), timeout=self.config.step_timeout
            )
        except asyncio.TimeoutError:
            e.finish(infra_error=f"environment step exceeded the harness timeout of {self.config.step_timeout:g} s")
            return
        except UserError:
            raise
        except Exception as exc:
            e.finish(infra_error=f"environment step failed: {type(exc).__name__}: {exc}")
            return
        t = e.traj
        t.tool_seconds += time.perf_counter() - start
        if t.record_step(reward, terminated, truncated, info):
            e.finish()
            return
        if t.turns >= self.config.max_turns:
            self._truncate(e, "max_turns")
            return
        if not obs:
            e.finish(infra_error="the environment continued without an observation")
            return
        e.conv.add_env(obs)


def invalid_completion(comp: Completion, vocab_limit: int) -> str | None:
    """What is wrong with a backend's completion (ids outside the vocabulary, logprobs that are not
    log-probabilities or do not match the ids), or None when it is well formed. A completion the backend
    itself marked with ``error`` is the engine's to handle before this is asked."""
    ids, logprobs = comp.token_ids, comp.logprobs
    if not isinstance(ids, list | tuple) or not isinstance(logprobs, list | tuple):
        return f"token ids of type {type(ids).__name__} and logprobs of type {type(logprobs).__name__}"
    # numbers.Integral and numbers.Real: numpy scalars from a custom backend are fine; bools and strings are not.
    bad = next((t for t in ids if not _is_int(t) or not 0 <= t < vocab_limit), None)
    if bad is not None:
        return f"token id {bad!r} outside the vocabulary of {vocab_limit}"
    if len(logprobs) != len(ids):
        return f"{len(logprobs)} logprobs for {len(ids)} token ids"
    # NaN means "not reported" and is allowed; a log-probability is never positive.
    wrong = next((x for x in logprobs if not isinstance(x, numbers.Real) or isinstance(x, bool) or x > 1e-4), None)
    if wrong is not None:
        return f"logprob {wrong!r}, which is not a log-probability"
    if comp.finish_reason not in ("stop", "length"):
        return f"finish reason {comp.finish_reason!r}"
    return None


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def episode_seed(base: int, task_id: str, index: int, attempt: int = 0) -> int:
    """The reset seed of episode ``index`` of ``task_id``: a function of the batch's seed and the episode
    alone, so any other loop (``agentrl eval --backend openai``) resets the very same task instances."""
    return random.Random(f"{base}/{task_id}/{index}/{attempt}").randrange(2**31)


class _NullEnv(Env):
    def reset(self, *, seed=None, options=None):  # pragma: no cover - never called
        return [], {}


def batch_metrics(groups: list[Group], wall: float, clock: dict[str, float]) -> dict[str, float]:
    """Health of one rollout batch; every rate is over valid episodes or turns unless named otherwise."""
    trajs = [t for g in groups for t in g.trajectories]
    valid = [t for t in trajs if t.valid]
    turns = sum(t.turns for t in valid) or 1
    rewards = [t.reward for t in valid]
    generated = sum(t.generated_tokens for t in trajs)
    busy = clock["generation"] + clock["tools_only"]
    return harness_metrics(trajs) | {
        "reward_mean": statistics.fmean(rewards) if rewards else 0.0,
        "reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        "groups": float(len(groups)),
        "zero_variance_fraction": sum(g.zero_variance for g in groups) / max(len(groups), 1),
        "dropped_zero_variance": float(sum(g.dropped == "zero_variance" for g in groups)),
        "dropped_too_few_valid": float(sum(g.dropped == "too_few_valid" for g in groups)),
        "resamples": float(sum(g.resamples for g in groups)),
        "episodes": float(len(trajs)),
        "infra_failures": float(len(trajs) - len(valid)),
        "infra_failure_rate": (len(trajs) - len(valid)) / max(len(trajs), 1),
        "truncation_rate": sum(t.truncated for t in valid) / max(len(valid), 1),
        "tool_call_rate": sum(t.tool_calls for t in valid) / turns,
        "parse_failure_rate": sum(t.parse_errors for t in valid) / turns,
        "tool_error_rate": sum(t.tool_errors for t in valid) / turns,
        "mean_turns": turns / max(len(valid), 1) if valid else 0.0,
        "generated_tokens": float(generated),
        "tokens_per_second": generated / clock["generation"] if clock["generation"] else 0.0,
        "generation_time_share": clock["generation"] / busy if busy else 0.0,
        "tool_time_share": clock["tools_only"] / busy if busy else 0.0,
        "wall_seconds": wall,
    }
