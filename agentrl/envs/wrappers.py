"""Wrappers change one aspect of an environment and pass the rest through, as in Gymnasium.

``MaxTurns`` is Gymnasium's ``TimeLimit`` for conversations: it truncates an episode after a number
of assistant turns. ``agentrl.make`` adds it from the registered spec.
"""

from __future__ import annotations

import random
from typing import Any

from agentrl.envs.core import Action, Env, Message, ResetNeeded, StepResult


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
