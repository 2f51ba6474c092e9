"""``MixedEnv``: several environments behind one, so that one policy trains on all of them at once.

A mix holds named components, each a factory of its own environment (its tools, system prompt,
scoring and turn limit) and a weight. Its task ids are the components' own, qualified by the
component's name: ``"arithmetic/12"`` is task ``"12"`` of the component named ``arithmetic``. A task
id alone therefore says which environment plays it, and a GRPO group (the G episodes of one task)
never mixes environments.

``reset(options={"task_id": "arithmetic/12"})`` builds that component's environment and hands the
episode to it; ``step``, ``astep``, ``tool_specs``, ``on_truncate`` and ``close`` then go to it. Each
component is built lazily, the first time one of its tasks is reset, because the rollout engine
builds one environment per episode: building every component each time would multiply the cost of
an episode's start by their number. A reset without a task id draws the component by weight with
the mix's own generator, so ``check_env`` and Gymnasium-style loops work on a mix as on one
environment.

``unwrapped`` is the environment that plays the current episode (the mix itself before the first
reset): the rollout engine and the evaluators look there for an ``AgentEnv``, whose agent code then
runs exactly as it would alone. ``task_ids`` (the whole split, qualified, interleaved by weight so
that its first N tasks hold each environment's share) builds each component once.

What this does not cover: how many of each step's tasks each component gets (the trainer's
schedule, :mod:`agentrl.train.environments`, follows the weights), and per-component metrics (each
trajectory is labelled with its component's name, :func:`label`, and the reports split by it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.envs.core import Action, Env, Message, ResetNeeded, StepResult
from agentrl.envs.tasks import split_task_ids
from agentrl.errors import UserError

SEP = "/"
"""Between a component's name and its own task id; names may not contain it, task ids may."""


@dataclass(frozen=True)
class Component:
    """One environment of a mix."""

    name: str
    """How task ids, metrics and reports name it; unique in the mix, without a ``/``."""
    make: Callable[[], Env]
    """Builds the environment of one split (``functools.partial(agentrl.make, id, split=..., **kwargs)``)."""
    weight: float = 1.0
    """Its share of the tasks drawn, relative to the other components' weights."""


def qualify(name: str, task_id: str) -> str:
    """The mix's id of task ``task_id`` of component ``name``."""
    return f"{name}{SEP}{task_id}"


def split_id(task_id: str) -> tuple[str, str]:
    """``("arithmetic", "12")`` for ``"arithmetic/12"``: the component's name and its own task id."""
    name, sep, inner = task_id.partition(SEP)
    if not sep or not name:
        raise KeyError(f"task id {task_id!r} of a mix names no environment (expected NAME{SEP}TASK_ID)")
    return name, inner


def env_name(task_id: str) -> str:
    """The name of the component that plays ``task_id`` (a qualified id of a mix)."""
    return split_id(task_id)[0]


def label(trajectories: Iterable[Any]) -> None:
    """Record on each trajectory of a mix (``.env``) the name of the environment that played it."""
    for t in trajectories:
        t.env = env_name(t.task_id)


def apportion(n: int, weights: Sequence[float]) -> list[int]:
    """``n`` split in proportion to ``weights`` (largest remainders; ties go to the earlier entry)."""
    total = float(sum(weights))
    exact = [n * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def check_components(components: Sequence[Component]) -> None:
    """Refuse, in one line, a mix that could not name its tasks apart or draw them by weight."""
    if not components:
        raise UserError("a mix needs at least one environment")
    seen: set[str] = set()
    for c in components:
        if not c.name or SEP in c.name:
            raise UserError(f"environment name {c.name!r} in a mix must be non-empty and without {SEP!r}")
        if c.name in seen:
            raise UserError(f"environment name {c.name!r} appears twice in a mix; names must be unique")
        seen.add(c.name)
        if not (isinstance(c.weight, int | float) and math.isfinite(c.weight) and c.weight > 0):
            raise UserError(f"environment {c.name!r} of a mix has weight {c.weight!r}; weights must be positive")


class MixedEnv(Env):
    """Environments of several kinds behind one ``Env``; each episode is played by one of them."""

    def __init__(self, components: Sequence[Component], *, split: str | None = None):
        check_components(components)
        self.components = {c.name: c for c in components}
        self.split = split
        """The split every component was built with (read by the SFT stage, which refuses the test split)."""
        self._built: dict[str, Env] = {}
        self._active: Env | None = None
        self._active_name: str | None = None
        self._task_ids: list[str] | None = None

    # ----- the components ----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.components)

    def build(self, name: str) -> Env:
        """A new environment of component ``name``; the caller closes it."""
        if name not in self.components:
            raise KeyError(f"no environment named {name!r} in this mix (it has {', '.join(self.components)})")
        return self.components[name].make()

    def _env(self, name: str) -> Env:
        if name not in self._built:
            self._built[name] = self.build(name)
        return self._built[name]

    @property
    def task_ids(self) -> list[str]:
        """Every component's task ids, qualified and interleaved by weight, so that the first N (the held-out
        tasks that ``eval.num_tasks`` and ``agentrl eval -n`` take) hold each environment's share of them."""
        if self._task_ids is None:
            keyed = []
            for rank, (name, c) in enumerate(self.components.items()):
                try:
                    own = split_task_ids(c.make)
                except UserError as exc:
                    raise UserError(f"environment {name!r} of the mix: {exc}") from None
                # Task j of a component of weight w comes at (j + 1/2) / w: Sainte-Lague's order of seats, which
                # gives every prefix the proportional share (to within one task per environment).
                keyed += [((j + 0.5) / c.weight, rank, j, qualify(name, tid)) for j, tid in enumerate(own)]
            self._task_ids = [key[-1] for key in sorted(keyed)]
        return list(self._task_ids)

    @property
    def active(self) -> str | None:
        """The name of the component playing the current episode (None before the first reset)."""
        return self._active_name

    # ----- the Env API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        task_id = options.pop("task_id", None)
        if task_id is None:
            names = list(self.components)
            name = self.np_random.choices(names, weights=[self.components[n].weight for n in names])[0]
            inner = None
        else:
            name, inner = split_id(task_id)
            if name not in self.components:
                raise KeyError(f"unknown task_id {task_id!r}: no environment named {name!r} in this mix")
        env = self._env(name)
        if inner is not None:
            options["task_id"] = inner
        # A given seed goes to the component as it is, so that a mixed episode is the one the environment
        # alone would play; an unseeded reset takes its seed from the mix's generator, seeded once.
        sub_seed = seed if seed is not None else self.np_random.randrange(2**31)
        self._active, self._active_name = env, name
        obs, info = env.reset(seed=sub_seed, options=options or None)
        return obs, self._qualified(info)

    def step(self, action: Action) -> StepResult:
        obs, reward, terminated, truncated, info = self._playing().step(action)
        return obs, reward, terminated, truncated, self._qualified(info)

    async def astep(self, action: Action) -> StepResult:
        obs, reward, terminated, truncated, info = await self._playing().astep(action)
        return obs, reward, terminated, truncated, self._qualified(info)

    def on_truncate(self) -> None:
        if self._active is not None:
            self._active.on_truncate()

    def close(self) -> None:
        built, self._built = list(self._built.values()), {}
        self._active = None
        for env in built:
            env.close()

    @property
    def tool_specs(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The tools of the environment playing the current episode; none before the first reset."""
        return list(self._active.tool_specs) if self._active is not None else []

    @property
    def unwrapped(self) -> Env:
        return self._active.unwrapped if self._active is not None else self

    def _playing(self) -> Env:
        if self._active is None:
            raise ResetNeeded("call reset() before step()")
        return self._active

    def _qualified(self, info: dict[str, Any]) -> dict[str, Any]:
        """The component's info, with its task id qualified and its name under ``env``."""
        info = dict(info)
        if info.get("task_id") is not None:
            info["task_id"] = qualify(str(self._active_name), str(info["task_id"]))
        info["env"] = self._active_name
        return info

    def __repr__(self) -> str:
        return f"<MixedEnv {'+'.join(self.components)}>"
