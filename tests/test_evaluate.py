"""Held-out evaluation helpers: per-task success and the paired before/after difference."""

import pytest

from agentrl.evaluate import paired_difference, per_task_success, succeeded
from agentrl.trajectory import Trajectory


def _traj(task, reward, **comps):
    return Trajectory(task_id=task, group_index=0, reward=reward, reward_components={"reward": reward, **comps})


def test_success_prefers_the_success_component_then_reward():
    assert succeeded(_traj("a", 0.2, correct=1.0))
    assert not succeeded(_traj("a", 1.0, success=0.0))
    assert succeeded(_traj("a", 1.0)) and not succeeded(_traj("a", 0.9))


def test_per_task_success_averages_repeated_episodes():
    trajs = [_traj("a", 1.0), _traj("a", 0.0), _traj("b", 1.0)]
    assert per_task_success(trajs) == {"a": 0.5, "b": 1.0}


def test_paired_difference_and_its_interval():
    before = {f"t{i}": float(i % 5 == 0) for i in range(200)}  # 20%
    after = {f"t{i}": float(i % 5 != 4) for i in range(200)}  # 80%, a superset of the before successes
    d = paired_difference(before, after)
    assert d["n"] == 200 and d["difference"] == pytest.approx(0.6)
    assert 0.5 < d["ci95_low"] < 0.6 < d["ci95_high"] < 0.7
    same = paired_difference(before, before)
    assert same["difference"] == same["ci95_low"] == same["ci95_high"] == 0.0
    assert paired_difference(before, {"other": 1.0})["n"] == 0
