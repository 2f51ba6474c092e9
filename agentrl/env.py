"""The environment API: Gymnasium's ``reset``/``step`` contract, with chat messages as observations.

* ``reset(seed=..., options=...) -> (observation, info)``: the observation is the list of messages
  that opens the episode (system prompt, user prompt).
* ``step(action) -> (observation, reward, terminated, truncated, info)``: the action is the
  assistant's message (a string or a message dict); the observation is the list of *new* messages
  the environment answers with (tool results, feedback), empty when the episode ends.
* ``terminated``: the task itself ended (a final answer, or a failure that cannot be recovered).
  ``truncated``: a limit cut the episode short (turns, tokens, time). They are never both True.

As in Gymnasium, seeding ``reset`` once makes every later unseeded ``reset`` reproducible too.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

Message = dict[str, Any]
"""A chat message: at least ``role`` and ``content``; assistant messages may carry ``tool_calls``."""
Action = str | Message
"""What the policy emits in one turn: its raw text, or an assistant message dict."""
StepResult = tuple[list[Message], float, bool, bool, dict[str, Any]]


class ResetNeeded(RuntimeError):
    """Raised when ``step`` is called before ``reset`` or after the episode ended."""


class Env:
    """Base class of all agentrl environments.

    Subclasses implement ``reset`` and ``step`` (calling ``super().reset(seed=seed)`` first so that
    ``self.np_random`` is seeded) and may override ``close``.
    """

    metadata: dict[str, Any] = {}
    spec: Any = None  # set to the EnvSpec by agentrl.make
    tool_specs: list[dict[str, Any]] = []
    """JSON-schema tool specs to render into the prompt; empty for environments without tools."""

    _np_random: random.Random | None = None

    @property
    def np_random(self) -> random.Random:
        """The environment's random generator, seeded by ``reset(seed=...)``."""
        if self._np_random is None:
            self._np_random = random.Random()
        return self._np_random

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        if seed is not None:
            self._np_random = random.Random(seed)
        return [], {}

    def step(self, action: Action) -> StepResult:
        raise NotImplementedError

    async def astep(self, action: Action) -> StepResult:
        """``step`` for the rollout engine's event loop. The default runs ``step`` in a worker thread;
        environments with async tools (``ToolEnv``) override it to run them natively."""
        return await asyncio.to_thread(self.step, action)

    def close(self) -> None:
        """Release resources (sandboxes, servers). Safe to call more than once."""

    def on_truncate(self) -> None:
        """Called when a wrapper cuts the episode short (``MaxTurns``): release per-episode resources now."""

    @property
    def unwrapped(self) -> Env:
        return self

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self.spec.id if self.spec is not None else type(self).__name__
        return f"<{type(self).__name__} {name}>"


class Wrapper(Env):
    """Wraps an environment to change one aspect of it; everything else passes through."""

    def __init__(self, env: Env):
        self.env = env

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def spec(self) -> Any:  # type: ignore[override]
        return self.env.spec

    @property
    def tool_specs(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.env.tool_specs

    @property
    def np_random(self) -> random.Random:
        return self.env.np_random

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Action) -> StepResult:
        return self.env.step(action)

    async def astep(self, action: Action) -> StepResult:
        return await self.env.astep(action)

    def close(self) -> None:
        self.env.close()

    def on_truncate(self) -> None:
        self.env.on_truncate()

    @property
    def unwrapped(self) -> Env:
        return self.env.unwrapped

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{self.env!r}>"


class MaxTurns(Wrapper):
    """Truncate the episode after ``max_turns`` steps, like Gymnasium's ``TimeLimit``.

    The step that reaches the limit returns ``truncated=True`` unless the environment terminated
    on that very step; the termination wins because the task really did end.
    """

    def __init__(self, env: Env, max_turns: int):
        super().__init__(env)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self._turns = 0
        self._ended = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        self._turns = 0
        self._ended = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Action) -> StepResult:
        if self._ended:
            raise ResetNeeded("call reset() before step(); the previous episode has ended")
        return self._count(self.env.step(action))

    async def astep(self, action: Action) -> StepResult:
        if self._ended:
            raise ResetNeeded("call reset() before step(); the previous episode has ended")
        return self._count(await self.env.astep(action))

    def _count(self, result: StepResult) -> StepResult:
        obs, reward, terminated, truncated, info = result
        self._turns += 1
        if self._turns >= self.max_turns and not terminated and not truncated:
            truncated = True
            info = {**info, "truncated_by": "max_turns"}
            self.env.on_truncate()
        self._ended = terminated or truncated
        return obs, reward, terminated, truncated, info
