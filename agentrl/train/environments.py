"""The run's environments: one (``env.id``) or a weighted mix (``env.mix``), and which tasks each step trains on.

:func:`env_factory` gives the rollout engine its ``make_env`` for a split: the recipe's environment,
or a :class:`~agentrl.envs.mix.MixedEnv` whose components are built here or in Ray workers, each
exactly as it would be alone (:func:`agentrl.rollout.ray_workers.env_factory`). The mix itself stays
in the trainer's process and only routes each episode to its component, so with ``workers.kind: ray``
every component's tools and sandboxes still run in the workers.

:class:`TaskSchedule` picks each step's ``tasks_per_step`` training tasks from the step number and the
seed alone, so that a resumed run, the asynchronous sampler and every rank of a multi-process run agree:

* one environment: consecutive positions in a seeded shuffle of its training split, epoch after epoch;
* a mix: each environment gets its share of the step (``tasks_per_step * weight / total``, rounded down,
  with the fractions left over dealt by seeded systematic sampling, so that every share is exact on
  average and off by less than one task in any step), and takes its tasks from its own seeded shuffle,
  epoch after epoch. An environment with few tasks goes round its list more often than one with many.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

from agentrl.envs.core import Env
from agentrl.envs.mix import Component, MixedEnv, split_id
from agentrl.envs.registry import with_mcp
from agentrl.rollout import ray_workers


def env_factory(env: Any, split: str, workers: Any = None) -> Callable[[], Env]:
    """``make_env`` of ``split`` for a recipe's env section (``id``/``kwargs``, or ``mix``) and workers section."""
    if not env.mix:
        return ray_workers.env_factory(env.id, split, with_mcp(env.kwargs, getattr(env, "mcp", None)), workers)
    components = []
    for e in env.mix:
        kwargs = with_mcp(e.kwargs, getattr(e, "mcp", None))
        components.append(Component(e.name or e.id, ray_workers.env_factory(e.id, split, kwargs, workers), e.weight))
    return functools.partial(MixedEnv, components, split=split)


def weights(env: Any) -> dict[str, float] | None:
    """The mix's weights by environment name, or None for a single environment."""
    return {e.name or e.id: e.weight for e in env.mix} if env.mix else None


class TaskSchedule:
    """Which training tasks step ``s`` takes: a function of ``s`` and the seed alone."""

    def __init__(self, task_ids: Sequence[str], tasks_per_step: int, seed: int, mix: dict[str, float] | None = None):
        self.k, self.seed = tasks_per_step, seed
        self.task_ids = list(task_ids)
        self.mix = mix
        self._lock = threading.Lock()  # the asynchronous sampler asks from its own thread
        if mix is not None:
            self.by_env: dict[str, list[str]] = {name: [] for name in mix}
            for tid in self.task_ids:
                self.by_env[split_id(tid)[0]].append(tid)
            self.shares = [self.k * w / sum(mix.values()) for w in mix.values()]
            self._taken: list[list[int]] = [[0] * len(mix)]  # tasks each env gave before step s, for s = 0, 1, ...

    def tasks(self, step: int) -> list[str]:
        """The tasks of ``step``, in a fixed order."""
        if self.mix is None:
            return _positions(self.task_ids, range(step * self.k, (step + 1) * self.k), f"{self.seed}/epoch")
        with self._lock:
            while len(self._taken) <= step:  # cumulative counts, once per step however often they are asked for
                s = len(self._taken) - 1
                self._taken.append([a + b for a, b in zip(self._taken[s], self.counts(s), strict=True)])
            before = self._taken[step]
        out: list[str] = []
        for (name, ids), start, n in zip(self.by_env.items(), before, self.counts(step), strict=True):
            out += _positions(ids, range(start, start + n), f"{self.seed}/{name}/epoch")
        return out

    def counts(self, step: int) -> list[int]:
        """How many of ``step``'s tasks each environment of the mix gives, in the mix's order."""
        counts = [math.floor(x + 1e-9) for x in self.shares]
        fractions = [max(x - c, 0.0) for x, c in zip(self.shares, counts, strict=True)]
        left = self.k - sum(counts)
        if left:
            # Systematic sampling: the points u, u+1, ... over the fractions laid end to end (they add up to `left`),
            # so an environment gets one more task with a probability of exactly its fraction.
            u = random.Random(f"{self.seed}/mix/{step}").random()
            edges = list(itertools.accumulate(fractions))
            for j in range(left):
                counts[bisect.bisect_right(edges, min(u + j, edges[-1] * (1 - 1e-12)))] += 1
        return counts


def _positions(ids: list[str], positions: range, key: str) -> list[str]:
    """The tasks at ``positions`` of ``ids`` shuffled anew each epoch (by ``key/epoch``), epoch after epoch."""
    orders: dict[int, list[str]] = {}
    out = []
    for i in positions:
        epoch, pos = divmod(i, len(ids))
        if epoch not in orders:
            orders[epoch] = list(ids)
            random.Random(f"{key}/{epoch}").shuffle(orders[epoch])
        out.append(orders[epoch][pos])
    return out
