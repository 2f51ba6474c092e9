"""Held-out evaluation helpers: per-task success and the paired before/after difference."""

import pytest

from agentrl.eval.loop import eval_metrics, paired_difference, per_task_success, succeeded
from agentrl.rollout.trajectory import Trajectory


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
    assert d["ci_method"] == "newcombe paired score"
    # Every pair agrees: the bootstrap would say [0, 0]; the score interval says how large an unseen change can be.
    same = paired_difference(before, before)
    assert same["difference"] == 0.0 and same["ci95_low"] < 0 < same["ci95_high"] < 0.02
    assert paired_difference(before, {"other": 1.0})["n"] == 0


def _ep(task, success, *, turns=1, tool_calls=0, parse_errors=0, truncated=False, infra=None, index=0):
    msgs = [{"role": "user", "content": "q"}]
    for i in range(turns):
        call = [{"function": {"name": "f", "arguments": {}}}] if i < tool_calls else None
        msgs.append({"role": "assistant", "content": "", **({"tool_calls": call} if call else {})})
    r = float(success)
    return Trajectory(task_id=task, group_index=index, reward=r, reward_components={"reward": r, "success": r},
                      messages=msgs, turns=turns, tool_calls=tool_calls, parse_errors=parse_errors,
                      truncated=truncated, infra_error=infra, turn_rewards=[0.0] * (turns - 1) + [r])  # fmt: skip


def test_eval_metrics_pass_at_k_rates_and_rows():
    trajs = []
    # Task a: 2 of 4 solved; task b: 4 of 4; task c: 0 of 4 (plus an infra failure, left out).
    for i, s in enumerate([1, 0, 1, 0]):
        trajs.append(_ep("a", s, turns=2, tool_calls=1, index=i))
    trajs += [_ep("b", 1, index=i) for i in range(4)]
    trajs += [_ep("c", 0, turns=3, parse_errors=1, truncated=i == 0, index=i) for i in range(4)]
    trajs.append(_ep("c", 1, infra="sandbox died", index=4))
    m = eval_metrics(trajs, k=4)
    assert m["tasks"] == 3 and m["episodes"] == 12 and m["infra_failures"] == 1
    assert m["success_rate"]["mean"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["pass_at_k"]["1"]["mean"] == pytest.approx(0.5)
    assert m["pass_at_k"]["2"]["mean"] == pytest.approx((1 - 1 / 6 + 1 + 0) / 3)  # a: 1 - C(2,2)/C(4,2)
    assert m["pass_at_k"]["4"]["mean"] == pytest.approx(2 / 3)
    assert m["pass_hat_k"]["2"]["mean"] == pytest.approx((1 / 6 + 1 + 0) / 3)
    assert m["pass_hat_k"]["4"]["mean"] == pytest.approx(1 / 3)
    assert m["tool_call_rate"] == pytest.approx(4 / 12)
    assert m["parse_failure_rate"] == pytest.approx(4 / 12)
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    rows = {r["task_id"]: r for r in m["per_task"]}
    assert rows["a"]["successes"] == 2 and rows["a"]["pass^k"] == 0.0 and rows["b"]["pass^k"] == 1.0
    turn = {r["turn"]: r for r in m["per_turn"]}
    assert turn[1]["episodes"] == 12 and turn[2]["episodes"] == 8 and turn[3]["episodes"] == 4
    assert turn[1]["tool_call_fraction"] == pytest.approx(4 / 12) and turn[2]["tool_call_fraction"] == 0.0
    assert turn[1]["ended_here"] == pytest.approx(4 / 12) and turn[3]["ended_here"] == 1.0


def test_eval_metrics_skips_tasks_without_enough_samples_for_a_k():
    trajs = [_ep("a", 1, index=0), _ep("a", 0, index=1), _ep("b", 1, index=0), _ep("b", 0, infra="x", index=1)]
    m = eval_metrics(trajs, k=2)
    assert m["pass_at_k"]["1"]["n"] == 2 and m["pass_at_k"]["2"]["n"] == 1
    assert m["pass_at_k"]["2"]["mean"] == 1.0
