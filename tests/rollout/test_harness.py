"""Playing agent code (agentrl.rollout.harness): concurrency inside an episode, synchronous agents, odd callables."""

import asyncio
import time

import httpx
import openai

from agentrl.envs.agent_env import AgentEnv
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.testing import ScriptedBackend, calc_agent, calc_policy, calc_tasks


def _engine(chat, make_env, **config):
    backend = ScriptedBackend(chat.tokenizer, calc_policy)
    return RolloutEngine(backend, chat, make_env, RolloutConfig(**{"group_size": 1, "zero_variance": "keep", **config}))


def _play(engine, tasks):
    try:
        return engine.run(tasks)
    finally:
        engine.close()


def test_two_requests_in_flight_from_one_episode_never_splice_into_each_other(stock_chat):
    """An agent that asks two questions at once (asyncio.gather): each completion follows its own prompt."""

    async def run(task, client, model):
        asks = [[{"role": "user", "content": f"Compute {a}*{b}."}] for a, b in ((3, 4), (5, 6))]
        replies = await asyncio.gather(*(client.chat.completions.create(model=model, messages=m) for m in asks))
        return [r.choices[0].message.tool_calls[0].function.arguments for r in replies]

    out = {}
    env = lambda: AgentEnv(calc_tasks(), run, lambda t, r: out.setdefault("r", r) and 1.0)  # noqa: E731
    traj = _play(_engine(stock_chat, env), ["train-0"]).groups[0].trajectories[0]
    assert traj.valid and traj.turns == 2 and traj.prefix_breaks == 1
    assert all(any(f"{a} * {b}" in r for r in out["r"]) for a, b in ((3, 4), (5, 6)))  # each got its own answer
    for seq in traj.samples():  # one question and its own answer per sequence, never the other's
        text = stock_chat.tokenizer.decode(seq.ids)
        assert text.count("Compute ") == 1 and text.count("<tool_call>") == 1
        a, b = (3, 4) if "Compute 3*4." in text else (5, 6)
        assert f'"expression": "{a} * {b}' in text


def test_synchronous_agents_run_side_by_side_and_a_stuck_one_is_abandoned(stock_chat):
    """16 blocking agents of 1 s each finish together (not a few at a time in a small pool, where the queueing
    counted against their timeout); one that never returns is an infra failure at its timeout, and the run does
    not wait for its thread."""

    def slow(task, base_url, api_key, model):
        time.sleep(1.0)
        r = httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                       json={"messages": [{"role": "user", "content": task.prompt}]}, timeout=30)  # fmt: skip
        return r.json()["choices"][0]["message"]["content"]

    env = lambda: AgentEnv(calc_tasks(num_tasks=16), slow, lambda t, out: 1.0, timeout=2.5)  # noqa: E731
    start = time.perf_counter()
    batch = _play(_engine(stock_chat, env), [f"train-{i}" for i in range(16)])
    assert all(t.valid for g in batch.groups for t in g.trajectories)
    assert time.perf_counter() - start < 2.5

    def stuck(task, base_url, api_key, model):
        time.sleep(30)

    env = lambda: AgentEnv(calc_tasks(), stuck, lambda t, out: 1.0, timeout=1.0)  # noqa: E731
    start = time.perf_counter()
    traj = _play(_engine(stock_chat, env), ["train-0"]).groups[0].trajectories[0]
    assert time.perf_counter() - start < 5
    assert traj.infra_error == "the agent code did not return within its timeout of 1 s"


def test_an_object_with_an_async_call_and_a_plain_function_returning_a_coroutine_are_awaited(stock_chat):
    class Agent:
        async def __call__(self, task, client, model):
            return await calc_agent(task, client)

    def wrapped(task, client, model):  # a plain decorator around an async agent
        return calc_agent(task, client)

    for run in (Agent(), wrapped):
        if run is wrapped:  # a sync function gets a sync client; this one hands back a coroutine for the async one
            run = lambda task, base_url, api_key, model: calc_agent(  # noqa: E731
                task, openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
            )
        env = lambda run=run: AgentEnv(calc_tasks(), run, lambda t, out: float(out == str(t.answer)))  # noqa: E731
        traj = _play(_engine(stock_chat, env, seed=4), ["train-1"]).groups[0].trajectories[0]
        assert traj.valid and traj.turns == 2 and traj.reward in (0.0, 1.0), traj.infra_error


def test_chat_features_a_harness_asks_for(stock_chat):
    """logprobs of the sampled tokens, parallel_tool_calls=false, tool_choice=none, and the Responses API named."""
    seen = {}

    async def run(task, client, model):
        messages = [{"role": "user", "content": task.prompt}]
        tools = [{"type": "function", "function": {"name": "calculator"}}]
        r = await client.chat.completions.create(model=model, messages=messages, tools=tools, logprobs=True,
                                                 parallel_tool_calls=False)  # fmt: skip
        seen["logprobs"] = [t.logprob for t in r.choices[0].logprobs.content]
        seen["calls"] = len(r.choices[0].message.tool_calls)
        none = await client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="none")
        seen["none"] = (none.choices[0].message.tool_calls, none.choices[0].message.content)
        try:
            await client.responses.create(model=model, input="hi")
        except openai.NotFoundError as exc:
            seen["responses"] = str(exc)
        return "x"

    env = lambda: AgentEnv(calc_tasks(), run, lambda t, out: 0.0)  # noqa: E731
    traj = _play(_engine(stock_chat, env), ["train-0"]).groups[0].trajectories[0]
    assert traj.valid and seen["logprobs"] and set(seen["logprobs"]) == {-0.25}  # the scripted backend's
    assert seen["calls"] == 1
    assert seen["none"][0] is None and seen["none"][1].startswith("<tool_call>")  # not parsed: plain content
    assert "set_default_openai_api('chat_completions')" in seen["responses"]
    assert [r["prompt"] for r in traj.requests] == ["first", "new_segment"]  # the same opening, asked again


def test_agent_code_that_needs_the_openai_sdk_without_it_stops_the_run_in_one_line(stock_chat, monkeypatch):
    import sys

    import pytest

    from agentrl.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "openai", None)  # not installed
    env = lambda: AgentEnv(calc_tasks(), calc_agent, lambda t, out: 1.0)  # noqa: E731
    with pytest.raises(MissingDependency, match=r'pip install "agentrl\[agents\]"'):
        _play(_engine(stock_chat, env), ["train-0"])
