"""The run's environments: the factory for one or a mix, and each step's tasks, by weight on a mix."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from agentrl.envs.mix import MixedEnv, env_name
from agentrl.envs.tasks import split_task_ids
from agentrl.train.environments import TaskSchedule, env_factory, weights
from agentrl.train.recipe import load_recipe


def _old_tasks_for_step(ids: list[str], k: int, seed: int, step: int) -> list[str]:
    """The trainer's schedule before env.mix existed, verbatim: one environment must keep it exactly."""
    orders: dict[int, list[str]] = {}
    out = []
    for i in range(step * k, (step + 1) * k):
        epoch, pos = divmod(i, len(ids))
        if epoch not in orders:
            orders[epoch] = list(ids)
            random.Random(f"{seed}/epoch/{epoch}").shuffle(orders[epoch])
        out.append(orders[epoch][pos])
    return out


def test_one_environment_keeps_its_schedule():
    ids = [f"t{i}" for i in range(13)]
    schedule = TaskSchedule(ids, 5, seed=7)
    assert [schedule.tasks(s) for s in range(9)] == [_old_tasks_for_step(ids, 5, 7, s) for s in range(9)]


def test_a_mix_gives_each_environment_its_weighted_share_of_every_step():
    ids = [f"a/{i}" for i in range(10)] + [f"b/{i}" for i in range(3)] + [f"c/{i}" for i in range(40)]
    mix = {"a": 2.0, "b": 1.0, "c": 0.5}
    schedule = TaskSchedule(ids, 8, seed=3, mix=mix)
    steps = [schedule.tasks(s) for s in range(350)]
    # Deterministic: a new schedule asked in another order (a resumed run, the asynchronous sampler) agrees.
    again = TaskSchedule(ids, 8, seed=3, mix=mix)
    assert [again.tasks(s) for s in (349, 0, 200)] == [steps[349], steps[0], steps[200]]
    assert TaskSchedule(ids, 8, seed=4, mix=mix).tasks(5) != steps[5]
    total = Counter()
    for tasks in steps:
        assert len(tasks) == 8
        counts = Counter(env_name(t) for t in tasks)
        total += counts
        # 8 * 2/3.5 = 4.57, 8 * 1/3.5 = 2.29, 8 * 0.5/3.5 = 1.14: each step is within one task of its share.
        assert counts["a"] in (4, 5) and counts["b"] in (2, 3) and counts["c"] in (1, 2), counts
    for name, w in mix.items():
        assert total[name] / (350 * 8) == pytest.approx(w / 3.5, abs=0.01)
    # Each environment goes through all its tasks before any comes again (epochs), small ones more often.
    b = [t for tasks in steps for t in tasks if t.startswith("b/")]
    assert all(sorted(b[i : i + 3]) == ["b/0", "b/1", "b/2"] for i in range(0, len(b) - 2, 3))
    a = [t for tasks in steps for t in tasks if t.startswith("a/")]
    assert sorted(a[:10]) == sorted(ids[:10])


def test_the_factory_builds_the_environment_or_the_mix():
    one = load_recipe(None, ["env.id=arithmetic", "env.kwargs.digits=2"])
    env = env_factory(one.env, "test")()
    assert type(env.unwrapped).__name__ == "ArithmeticEnv" and weights(one.env) is None
    env.close()
    mixed = load_recipe(None, ["env.mix=[{id: arithmetic, weight: 3, kwargs: {digits: 2}}, {id: codebreaker}]"])
    assert weights(mixed.env) == {"arithmetic": 3.0, "codebreaker": 1.0}
    make = env_factory(mixed.env, "test", SimpleNamespace(kind="local"))
    env = make()
    assert isinstance(env, MixedEnv) and env.split == "test" and env.names == ["arithmetic", "codebreaker"]
    ids = split_task_ids(make)
    alone = env_factory(SimpleNamespace(mix=[], id="arithmetic", kwargs={"digits": 2}), "test")
    assert [t for t in ids if env_name(t) == "arithmetic"] == [f"arithmetic/{t}" for t in split_task_ids(alone)]
