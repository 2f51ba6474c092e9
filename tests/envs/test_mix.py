"""MixedEnv: several environments behind one, each episode played by its own environment, built only when needed."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.envs.agent_env import AgentEnv
from agentrl.envs.checker import check_env
from agentrl.envs.core import ResetNeeded
from agentrl.envs.mix import Component, MixedEnv, apportion, env_name, label, qualify, split_id
from agentrl.envs.tasks import split_task_ids
from agentrl.errors import UserError
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.testing import ScriptedBackend, calc_policy


def _counting(env_id: str, built: Counter, closed: Counter, **kwargs):
    """A factory of ``agentrl.make(env_id, ...)`` that counts the environments it builds and the ones closed."""

    def make():
        env = agentrl.make(env_id, split="train", **kwargs)
        built[env_id] += 1
        close = env.close

        def counted_close():
            closed[env_id] += 1
            close()

        env.close = counted_close
        return env

    return make


def _mix(built=None, closed=None, weights=(2.0, 1.0)):
    built, closed = built if built is not None else Counter(), closed if closed is not None else Counter()
    return functools.partial(
        MixedEnv,
        [
            Component("calc", _counting("arithmetic", built, closed, digits=2), weights[0]),
            Component("game", _counting("codebreaker", built, closed), weights[1]),
        ],
        split="train",
    )


def test_task_ids_are_qualified_and_interleaved_by_weight():
    built, closed = Counter(), Counter()
    ids = split_task_ids(_mix(built, closed))
    calc = split_task_ids(functools.partial(agentrl.make, "arithmetic", split="train", digits=2))
    game = split_task_ids(functools.partial(agentrl.make, "codebreaker", split="train"))
    assert sorted(ids) == sorted([qualify("calc", t) for t in calc] + [qualify("game", t) for t in game])
    assert split_id(ids[0]) == ("calc", calc[0]) and env_name(qualify("game", "a/b")) == "game"
    # Any prefix holds each environment's share by weight (2:1), so eval.num_tasks / -n take both.
    head = Counter(env_name(t) for t in ids[:30])
    assert head == {"calc": 20, "game": 10}
    # Reading the task list built each environment once (and closed it), not once per task.
    assert built == closed == {"arithmetic": 1, "codebreaker": 1}


def test_each_episode_is_played_by_its_own_environment_with_its_tools_prompt_and_turn_limit():
    built, closed = Counter(), Counter()
    ids = split_task_ids(_mix())
    calc_id = next(t for t in ids if env_name(t) == "calc")
    game_id = next(t for t in ids if env_name(t) == "game")
    env = _mix(built, closed)()
    assert env.tool_specs == [] and env.unwrapped is env and not built  # nothing is built before a reset

    obs, info = env.reset(seed=3, options={"task_id": game_id})
    assert built == {"codebreaker": 1}  # lazily: only the environment that plays the episode
    assert info["task_id"] == game_id and info["env"] == "game" and env.active == "game"
    assert env.tool_specs == [] and "code-breaking game" in obs[0]["content"]
    assert type(env.unwrapped).__name__ == "CodebreakerEnv"

    obs, info = env.reset(seed=3, options={"task_id": calc_id})
    assert built == {"codebreaker": 1, "arithmetic": 1}
    assert info["task_id"] == calc_id and [t["function"]["name"] for t in env.tool_specs] == ["calculator"]
    assert "calculator" in obs[0]["content"]
    # The same seed gives the environment's own episode, as it would play alone.
    alone = agentrl.make("arithmetic", split="train", digits=2)
    assert alone.reset(seed=3, options={"task_id": split_id(calc_id)[1]})[0] == obs
    # Arithmetic's own turn limit (4, from its registration) cuts the episode, not codebreaker's 12.
    call = render_call_text("calculator", {"expression": "1 + 1"})
    for _ in range(4):
        _, _, terminated, truncated, info = env.step(call)
        assert info["task_id"] == calc_id and info["env"] == "calc"
    assert truncated and not terminated and info["truncated_by"] == "max_turns"
    with pytest.raises(ResetNeeded):
        env.step(call)
    env.close()
    assert closed == built  # every environment it built, closed


def test_a_mix_passes_check_env_and_draws_unseeded_resets_by_weight():
    env = _mix(weights=(3.0, 1.0))()
    assert check_env(env) == []
    env.reset(seed=0)
    drawn = Counter(env.reset()[1]["env"] for _ in range(400))
    assert 0.68 < drawn["calc"] / 400 < 0.82
    env.close()


def test_an_agent_env_in_a_mix_is_played_through_the_endpoint(stock_chat):
    """The engine finds the AgentEnv behind the mix (``unwrapped``), so its agent code plays as it would alone."""
    make_env = functools.partial(
        MixedEnv,
        [
            Component("native", functools.partial(agentrl.make, "agentrl.testing:CalcToolEnv", split="train")),
            Component("agent", functools.partial(agentrl.make, "agentrl.testing:CalcAgentEnv", split="train")),
        ],
    )
    env = make_env()
    env.reset(options={"task_id": "agent/train-0"})
    assert isinstance(env.unwrapped, AgentEnv)
    env.close()
    config = RolloutConfig(group_size=2, zero_variance="keep")
    engine = RolloutEngine(ScriptedBackend(stock_chat.tokenizer, calc_policy), stock_chat, make_env, config)
    try:
        batch = engine.run(["native/train-0", "agent/train-0"], seed=1)
    finally:
        engine.close()
    native, agent = batch.groups
    assert all(t.valid and t.turns == 2 for g in batch.groups for t in g.trajectories)
    assert all(not t.requests for t in native.trajectories) and all(t.requests for t in agent.trajectories)
    assert {t.reward for t in agent.trajectories} <= {0.0, 1.0} and agent.task_id == "agent/train-0"
    label(batch.groups[0].trajectories + batch.groups[1].trajectories)
    assert [t.env for g in batch.groups for t in g.trajectories] == ["native", "native", "agent", "agent"]


def test_refusals_are_one_clear_line():
    make = functools.partial(agentrl.make, "arithmetic", split="train")
    for components, message in (
        ([], "at least one environment"),
        ([Component("a", make), Component("a", make)], "appears twice"),
        ([Component("a/b", make)], "without '/'"),
        ([Component("a", make, 0.0)], "weights must be positive"),
        ([Component("a", make, float("nan"))], "weights must be positive"),
    ):
        with pytest.raises(UserError, match=message):
            MixedEnv(components)
    env = MixedEnv([Component("a", make)])
    with pytest.raises(ResetNeeded):
        env.step("hello")
    with pytest.raises(KeyError, match="no environment named 'b'"):
        env.reset(options={"task_id": "b/1"})
    with pytest.raises(KeyError, match="names no environment"):
        env.reset(options={"task_id": "no-separator"})
    with pytest.raises(UserError, match=r"environment 'a' of the mix: .* exposes no task_ids"):
        split_task_ids(lambda: MixedEnv([Component("a", lambda: agentrl.Env())]))


def test_apportion_splits_by_weight_and_keeps_the_total():
    assert apportion(8, [1, 1]) == [4, 4]
    assert apportion(7, [2, 1]) == [5, 2]
    assert apportion(1, [1, 1, 1]) == [1, 0, 0]  # ties go to the earlier entry
    assert sum(apportion(10, [0.3, 0.3, 0.4])) == 10
