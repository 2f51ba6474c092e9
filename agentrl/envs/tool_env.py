"""``ToolEnv``: environments whose dynamics are "the model calls tools until it answers".

Each step takes one assistant turn:

* If the turn attempts any tool call (well-formed or not), the calls run concurrently and the
  observation is one ``tool`` message per call, plus one error message per malformed call. The
  episode continues.
* Otherwise the turn is the final answer: ``score`` grades it, and the episode terminates.

Subclasses provide the tasks, the tools and ``score``; they may override ``build_prompt``.
Turn limits come from the ``MaxTurns`` wrapper that ``agentrl.make`` adds from the spec.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentrl import faults
from agentrl.chat.parsing import (
    DEFAULT_MAX_CALL_CHARS,
    DEFAULT_MAX_CALLS,
    ParsedTurn,
    ParseError,
    decode_json,
    parse_turn,
    validate_payload,
)
from agentrl.envs.core import Action, Env, Message, ResetNeeded, StepResult
from agentrl.envs.tasks import Task, index_tasks, select_task
from agentrl.tools.runner import ToolRunner
from agentrl.tools.tool import DEFAULT_MAX_OUTPUT_CHARS, Tool


class ToolEnv(Env):
    """Base class for tool-using, verifiable-reward environments."""

    system_prompt: str | None = None
    """Default system prompt; instances may pass their own."""
    infra_exceptions: tuple[type[BaseException], ...] = ()
    """Exceptions a tool may raise that mean *its service* failed, not the model (e.g. ``ConnectionError``
    for a tool that calls a remote API). Like :class:`~agentrl.InfraError`, they mark the episode as an
    infrastructure failure, left out of training. Any other exception goes back to the model as an error."""

    def __init__(
        self,
        tasks: Sequence[Task],
        tools: Sequence[Tool | Callable[..., Any]] = (),
        *,
        system_prompt: str | None = None,
        few_shot: Sequence[Message] = (),
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        max_call_chars: int = DEFAULT_MAX_CALL_CHARS,
        max_calls_per_turn: int = DEFAULT_MAX_CALLS,
        infra_exceptions: Sequence[type[BaseException]] | None = None,
    ):
        if not tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self.tasks = list(tasks)
        self._tasks_by_id = index_tasks(self.tasks)
        if infra_exceptions is not None:
            self.infra_exceptions = tuple(infra_exceptions)
        self.runner = ToolRunner(tools, max_output_chars=max_output_chars, infra_exceptions=self.infra_exceptions)
        if system_prompt is not None:
            self.system_prompt = system_prompt
        # Worked examples as real chat turns (user, assistant tool call, tool result, answer). Small
        # models copy a demonstrated protocol far more reliably than they follow a description of it.
        self.few_shot = [dict(m) for m in few_shot]
        for m in self.few_shot:
            if m.get("role") not in ("user", "assistant", "tool", "system"):
                raise ValueError(f"few_shot messages need a role of user/assistant/tool/system, got {m!r}")
        self.max_call_chars = max_call_chars
        self.max_calls_per_turn = max_calls_per_turn
        self.task: Task | None = None
        self.messages: list[Message] = []
        self._active = False
        self._turn = 0
        self.infra_error: str | None = None

    # ----- to override -------------------------------------------------------------------
    def score(self, task: Task, answer: str, messages: list[Message]) -> float | Mapping[str, float]:
        """Grade the final answer. Return a reward, or a dict with ``"reward"`` and other logged components."""
        raise NotImplementedError

    async def ascore(self, task: Task, answer: str, messages: list[Message]) -> float | Mapping[str, float]:
        """``score`` as the episode's step awaits it. Override to grade without blocking the event loop
        (e.g. in a worker thread when grading waits on a sandbox); the default calls ``score``."""
        return self.score(task, answer, messages)

    def solution(self, task: Task) -> list[Message] | None:
        """The assistant turns that solve ``task`` (tool calls, then a final answer); None when there is no
        scripted solution. The tool results are not part of it: :meth:`demonstrations` gets them from the
        real tools, so a demonstration shows what the tools really print."""
        return None

    def build_prompt(self, task: Task) -> list[Message]:
        """Messages that open the episode: the system prompt (if any), the few-shot turns, the task prompt."""
        msgs: list[Message] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.extend(dict(m) for m in self.few_shot)
        if isinstance(task.prompt, str):
            msgs.append({"role": "user", "content": task.prompt})
        else:
            msgs.extend(dict(m) for m in task.prompt)
        return msgs

    # ----- the API -----------------------------------------------------------------------
    @property
    def tool_specs(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.runner.specs

    def add_tools(self, tools: Sequence[Tool | Callable[..., Any]]) -> None:
        """Add tools after construction (``agentrl.make(..., mcp_servers=...)`` adds an MCP server's this way)."""
        self.runner.add(tools)

    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    @property
    def episode_messages(self) -> list[Message]:
        """The messages of this episode after its prompt (and after any few-shot turns)."""
        return self.messages[getattr(self, "prompt_length", 0) :]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        super().reset(seed=seed)
        self.task = select_task(self.tasks, self._tasks_by_id, options, self.np_random, type(self).__name__)
        self.messages = self.build_prompt(self.task)
        self.prompt_length = len(self.messages)
        self.runner.reset()
        self._active = True
        self._turn = 0
        self.infra_error: str | None = None
        info = {"task_id": self.task.id, "tools": self.tool_specs, "metadata": dict(self.task.metadata)}
        return [dict(m) for m in self.messages], info

    def step(self, action: Action) -> StepResult:
        """Synchronous step; see :meth:`astep`. Works inside a running event loop too (runs in a thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.astep(action))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.astep(action)).result()

    async def astep(self, action: Action) -> StepResult:
        """Take one assistant turn. Tool calls of the turn run concurrently."""
        if not self._active or self.task is None:
            raise ResetNeeded("call reset() before step(); the previous episode has ended")
        self._turn += 1
        turn = self._parse_action(action)
        self.messages.append(turn.to_message())
        info: dict[str, Any] = {
            "task_id": self.task.id,
            "turn": self._turn,
            "tool_calls": len(turn.calls),
            "parse_errors": [e.kind for e in turn.errors],
            "tool_errors": [],
        }
        if not turn.attempted_tool_use:
            await faults.afire("score", task=self.task, answer=turn.content)
            result = await self.ascore(self.task, turn.content, self.messages)
            reward, components = _split_score(result)
            info["reward_components"] = components
            if self.infra_error:
                info["infra_error"] = self.infra_error
            self._active = False
            self.runner.reset()  # free per-episode resources (sandbox sessions) now
            return [], reward, True, False, info

        outcomes = await self.runner.run(turn.calls)
        obs = [o.message for o in outcomes]
        info["tool_errors"] = [o.error_kind for o in outcomes if not o.ok]
        info["tool_seconds"] = sum(o.seconds for o in outcomes)
        infra = [o.message["content"] for o in outcomes if o.error_kind == "infra"]
        if infra or self.infra_error:
            self.infra_error = self.infra_error or infra[0]
            info["infra_error"] = self.infra_error
        obs.extend(_error_message(e) for e in turn.errors)
        self.messages.extend(obs)
        return [dict(m) for m in obs], 0.0, False, False, info

    def demonstrations(self, n: int, *, split: str = "train") -> list[list[Message]]:
        """``n`` solved episodes written by the environment itself, for supervised warm-up.

        The scripted turns of :meth:`solution` are played, task by task in order, through ``reset`` and
        ``step``, so tool results come from the real tools (the real sandbox). Only episodes that end
        with reward 1 are kept; each is returned as its full message list (prompt included). Never from
        the test split: training on demonstrations of held-out tasks would leak them.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        own = getattr(self, "split", None)
        if split == "test" or own == "test":
            raise ValueError("demonstrations never come from the test split; build the environment with split='train'")
        if own is not None and own != split:
            raise ValueError(f"demonstrations of split {split!r} were asked of an environment serving {own!r}")
        episodes: list[list[Message]] = []
        scripted = failed = 0
        last_failure = ""
        for task in self.tasks:
            turns = self.solution(task)
            if turns is None:
                continue
            scripted += 1
            self.reset(options={"task_id": task.id})
            reward, done, info = 0.0, False, {}
            for turn in turns:
                _, reward, done, _, info = self.step(copy.deepcopy(turn))
                if done:
                    break
            if not done:
                self.on_truncate()  # the script ran out of turns: free the episode's sandbox session
            if info.get("infra_error"):  # a broken sandbox fails every episode alike: stop at once
                raise RuntimeError(f"demonstrations of {type(self).__name__} hit an infra error: {info['infra_error']}")
            if done and reward == 1.0:
                episodes.append(copy.deepcopy(self.messages))
                if len(episodes) == n:
                    return episodes
            else:
                failed += 1
                last_failure = f"task {task.id!r} ended with reward {reward} (done={done})"
        if not scripted:
            raise NotImplementedError(f"{type(self).__name__} has no scripted solutions (solution() returned None)")
        raise RuntimeError(
            f"only {len(episodes)} of {n} demonstrations could be produced from {len(self.tasks)} tasks of "
            f"{type(self).__name__} ({scripted} scripted, {failed} did not reach reward 1"
            + (f"; last: {last_failure})" if last_failure else ")")
        )

    def _parse_action(self, action: Action) -> ParsedTurn:
        if isinstance(action, Mapping):
            structured = action.get("tool_calls")
            content = action.get("content") or ""
            if isinstance(content, list):  # OpenAI content parts
                content = "".join(
                    p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                )
            elif not isinstance(content, str):
                content = str(content)
            if structured:
                return _from_structured(content, structured, self.max_calls_per_turn, self.max_call_chars)
            return parse_turn(content, max_call_chars=self.max_call_chars, max_calls=self.max_calls_per_turn)
        return parse_turn(action, max_call_chars=self.max_call_chars, max_calls=self.max_calls_per_turn)

    def on_truncate(self) -> None:
        self._active = False
        self.runner.reset()

    def close(self) -> None:
        self._active = False
        self.runner.close()


def _split_score(result: float | Mapping[str, float]) -> tuple[float, dict[str, float]]:
    if isinstance(result, Mapping):
        if "reward" not in result:
            raise ValueError("score() returned a dict without a 'reward' key")
        return float(result["reward"]), {k: float(v) for k, v in result.items()}
    return float(result), {"reward": float(result)}


def _error_message(err: ParseError) -> Message:
    msg: Message = {"role": "tool", "content": f"Error: {err.message}"}
    if err.name:
        msg["name"] = err.name
    return msg


def _from_structured(content: str, calls: Any, max_calls: int, max_chars: int) -> ParsedTurn:
    """Accept OpenAI-style ``tool_calls`` (from an API server) with the same checks and limits as text."""
    parsed = ParsedTurn(content=content, reasoning=None, calls=[], errors=[])
    if not isinstance(calls, list):
        parsed.errors.append(ParseError("not_object", "tool_calls must be a list"))
        return parsed
    for call in calls:
        fn = call.get("function", call) if isinstance(call, Mapping) else call
        if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
            # The OpenAI wire format sends arguments as a JSON string.
            raw = fn["arguments"]
            args, err = decode_json(raw, max_chars) if raw.strip() else ({}, None)
            if err is not None:
                parsed.errors.append(err)
                continue
            fn = {**fn, "arguments": args}
        result = validate_payload(dict(fn) if isinstance(fn, Mapping) else fn)
        if isinstance(result, ParseError):
            parsed.errors.append(result)
        elif len(parsed.calls) >= max_calls:
            parsed.errors.append(
                ParseError("too_many_calls", f"at most {max_calls} tool calls per turn; the rest were ignored.")
            )
            break
        else:
            if isinstance(call, Mapping) and isinstance(call.get("id"), str):
                result.id = call["id"]
            parsed.calls.append(result)
    return parsed
