"""The environment API: Gymnasium's ``reset``/``step`` contract, with chat messages as observations.

* ``reset(seed=..., options=...) -> (observation, info)``: the observation is the list of messages
  that opens the episode (system prompt, user prompt).
* ``step(action) -> (observation, reward, terminated, truncated, info)``: the action is the
  assistant's message (a string or a message dict); the observation is the list of *new* messages
  the environment answers with (tool results, feedback), empty when the episode ends.
* ``terminated``: the task itself ended (a final answer, or a failure that cannot be recovered).
  ``truncated``: a limit cut the episode short (turns, tokens, time). They are never both True.

As in Gymnasium, seeding ``reset`` once makes every later unseeded ``reset`` reproducible too.
Wrappers (``Wrapper``, ``MaxTurns``) live in :mod:`agentrl.envs.wrappers`.
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
