"""The recording endpoint (agentrl.rollout.endpoint), driven by the real openai SDK through AgentEnv episodes."""

import json
import logging
import threading
import time

import httpx
import openai
import pytest

from agentrl.envs.agent_env import AgentEnv
from agentrl.rollout.endpoint import MODEL_NAME
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.testing import (
    CalcAgentEnv,
    CalcToolEnv,
    RecordingBackend,
    calc_agent,
    calc_policy,
    calc_tasks,
)
from agentrl.tools.calculator_tool import calculator

CALC_TOOL = calculator.spec


def _engine(chat, make_env, policy=calc_policy, **config):
    backend = RecordingBackend(chat.tokenizer, policy)
    config = {"group_size": 4, "zero_variance": "keep", **config}
    return RolloutEngine(backend, chat, make_env, RolloutConfig(**config)), backend


def _check_token_exact(traj, backend_record):
    """Every trained token is a sampled id (mask 1, with its logprob) or a rendered environment id (mask 0); every
    request's prompt is the sequence before its completion."""
    seqs = traj.samples()
    trained = [r for r in traj.requests if r["trained"]]
    assert len(trained) == traj.turns
    for r in trained:
        seq = seqs[r["segment"]]
        start, n = r["start"], r["completion_tokens"]
        prompt, sampled = seq.ids[:start], seq.ids[start : start + n]
        # The model saw exactly this prefix and sampled exactly this.
        assert sampled in [c.token_ids for c in backend_record[tuple(prompt)]]
        assert seq.mask[start : start + n] == [1] * n and None not in seq.logprobs[start : start + n]
    for seq in seqs:
        assert sum(seq.mask) == sum(r["completion_tokens"] for r in trained if seqs[r["segment"]] is seq)
        assert all(lp is None for lp, m in zip(seq.logprobs, seq.mask, strict=True) if m == 0)


@pytest.mark.parametrize("agent", ["async", "sync", "stream"])
def test_the_openai_sdk_drives_tool_episodes_that_match_the_native_engine_token_for_token(stock_chat, agent):
    """Async, sync and streaming clients all play the same episodes as the native ToolEnv, with the same policy."""
    policy = lambda text, rng: calc_policy(text, type("R", (), {"random": lambda self: 0.0})())  # noqa: E731
    harness, backend = _engine(stock_chat, lambda: CalcAgentEnv(agent=agent), policy)
    native, _ = _engine(stock_chat, CalcToolEnv, policy)
    try:
        a = harness.run(["train-0", "train-3"])
        b = native.run(["train-0", "train-3"])
    finally:
        harness.close()
    assert a.metrics["infra_failures"] == 0 and a.metrics["harness_episodes"] == 8
    assert a.metrics["prefix_break_rate"] == 0.0
    for ga, gb in zip(a.groups, b.groups, strict=True):
        for ta, tb in zip(ga.trajectories, gb.trajectories, strict=True):
            assert (ta.ids, ta.mask, ta.logprobs) == (tb.ids, tb.mask, tb.logprobs)
            assert ta.reward == tb.reward == 1.0 and ta.turns == tb.turns == 2 and ta.tool_calls == 1
            assert [r["prompt"] for r in ta.requests] == ["first", "messages"]
            _check_token_exact(ta, backend.record)


def test_64_concurrent_episodes_are_batched_together_and_each_is_attributed_to_its_own_key(stock_chat):
    harness, backend = _engine(stock_chat, lambda: CalcAgentEnv(num_tasks=8), group_size=8)
    harness.config.max_turns = 4
    try:
        batch = harness.run([f"train-{i}" for i in range(8)])
    finally:
        harness.close()
    trajs = [t for g in batch.groups for t in g.trajectories]
    assert len(trajs) == 64 and all(t.valid for t in trajs)
    for t in trajs:  # each episode's own task, whatever the others sent at the same moment
        n = int(t.task_id.split("-")[1])
        assert f"Compute {11 + n}*{7 + n}." in stock_chat.tokenizer.decode(t.ids)
        assert t.reward == float("+ 1" not in stock_chat.tokenizer.decode(t.ids))
    assert sum(backend.batches) == 128  # two requests per episode
    assert max(backend.batches) >= 32 and len(backend.batches) <= 16  # batched, not one request at a time


def _one_episode(chat, run, **config):
    """Play one AgentEnv episode whose agent is ``run(task, base_url, api_key, model)``; its trajectory."""
    engine, _ = _engine(chat, lambda: AgentEnv(calc_tasks(), run, lambda task, out: float(out == "ok")),
                        group_size=1, **config)  # fmt: skip
    try:
        return engine.run(["train-0"]).groups[0].trajectories[0]
    finally:
        engine.close()


def test_keys_models_and_errors_answer_as_openai_does(stock_chat):
    seen = {}

    async def run(task, base_url, api_key, model):
        seen["base_url"] = base_url
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {api_key}"}
            seen["models"] = (await http.get("/models", headers=auth)).json()
            seen["no_key"] = (await http.post("/chat/completions", json={"messages": []})).status_code
            bad = await http.post("/chat/completions", headers={"Authorization": "Bearer nope"}, json={})
            seen["bad_key"] = bad.status_code
            body = {"model": model, "messages": [{"role": "user", "content": task.prompt}]}
            for name, extra in [
                ("n", {"n": 2}),
                ("logit_bias", {"logit_bias": {"1": 5}}),
                ("guided_json", {"guided_json": {}}),
                ("tool_choice", {"tool_choice": "required"}),
            ]:
                r = await http.post("/chat/completions", headers=auth, json={**body, **extra})
                seen[name] = (r.status_code, r.json()["error"])
            seen["neutral"] = (
                await http.post(
                    "/chat/completions",
                    headers=auth,
                    json={**body, "logprobs": False, "presence_penalty": 0, "max_completion_tokens": 64},
                )
            ).status_code
        return "ok"

    traj = _one_episode(stock_chat, run)
    assert seen["base_url"].startswith("http://127.0.0.1:")  # loopback by default
    assert seen["models"]["data"][0]["id"] == MODEL_NAME
    assert seen["no_key"] == 401 and seen["bad_key"] == 401
    assert seen["n"][0] == 400 and seen["n"][1]["param"] == "n"
    assert seen["logit_bias"][0] == 400 and "'logit_bias'" in seen["logit_bias"][1]["message"]
    assert seen["guided_json"][0] == 400 and "unsupported parameter 'guided_json'" in seen["guided_json"][1]["message"]
    assert seen["tool_choice"][0] == 400 and "'required'" in seen["tool_choice"][1]["message"]
    assert seen["neutral"] == 200
    assert traj.valid and traj.reward == 1.0 and traj.turns == 1


def test_a_finished_episodes_key_is_refused(stock_chat):
    """A request that outlives its episode (agent code that left a thread behind) gets 409, then 401 once forgotten."""
    statuses = []

    def late(base_url, key):
        time.sleep(0.3)
        r = httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"messages": [{"role": "user", "content": "Compute 1*2."}]})  # fmt: skip
        statuses.append(r.status_code)

    async def run(task, base_url, api_key, model):
        await calc_agent(task, openai.AsyncOpenAI(base_url=base_url, api_key=api_key))
        threading.Thread(target=late, args=(base_url, api_key)).start()
        return "ok"

    def score(task, out):
        time.sleep(1.5)  # the episode has ended but is still being scored when the late request comes
        return 1.0

    engine, _ = _engine(stock_chat, lambda: AgentEnv(calc_tasks(), run, score), group_size=1)
    try:
        traj = engine.run(["train-0"]).groups[0].trajectories[0]
        base_url = engine.harness.endpoint.base_url
        key = "agentrl-unknown"
        assert httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 401  # fmt: skip
    finally:
        engine.close()
    assert statuses == [409] and traj.valid and traj.turns == 2


def test_a_context_overrun_by_the_models_turns_is_a_truncation_and_by_the_harness_prompt_an_infra_failure(stock_chat):
    async def long_prompt(task, client):
        await client.chat.completions.create(model="p", messages=[{"role": "user", "content": "word " * 3000}])
        return "ok"

    env = lambda: AgentEnv(calc_tasks(), long_prompt, lambda t, out: 1.0)  # noqa: E731
    engine, _ = _engine(stock_chat, env, group_size=1, max_total_tokens=512)
    try:
        traj = engine.run(["train-0"]).groups[0].trajectories[0]
    finally:
        engine.close()
    # Nothing was sampled: the agent's own prompt does not fit, which is no fault of the model.
    assert "BadRequestError" in traj.infra_error and "context is 512 tokens" in traj.infra_error

    opening = [{"role": "user", "content": "Compute 11*7."}]
    first = len(stock_chat.encode(opening, [CALC_TOOL], add_generation_prompt=True))
    engine, _ = _engine(stock_chat, lambda: CalcAgentEnv(), group_size=1, max_total_tokens=first + 40)
    try:
        traj = engine.run(["train-0"]).groups[0].trajectories[0]
    finally:
        engine.close()
    # The first turn fits; with its tool result the second prompt does not: the model's episode ran out of room.
    assert traj.valid and traj.truncated and traj.truncated_by == "max_tokens" and traj.reward == 0.0
    assert traj.turns == 1 and sum(traj.mask) > 0


def test_a_malformed_tool_call_comes_back_as_plain_content_and_is_counted(stock_chat):
    bad = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}\n</tool_call>'  # unclosed brace
    got = {}

    async def run(task, client):
        r = await client.chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": task.prompt}],
            tools=[{"type": "function", "function": {"name": "calculator"}}],
        )
        got["message"], got["finish"] = r.choices[0].message, r.choices[0].finish_reason
        return "ok"

    env = lambda: AgentEnv(calc_tasks(), run, lambda t, out: 1.0)  # noqa: E731
    engine, _ = _engine(stock_chat, env, lambda text, rng: bad, group_size=1)
    try:
        batch = engine.run(["train-0"])
    finally:
        engine.close()
    assert got["message"].tool_calls is None and got["message"].content == bad and got["finish"] == "stop"
    assert batch.groups[0].trajectories[0].parse_errors == 1 and batch.metrics["parse_failure_rate"] == 1.0


def test_agent_code_that_raises_is_an_infra_failure_logged_once(stock_chat, caplog):
    engine, _ = _engine(stock_chat, lambda: CalcAgentEnv(agent="raise"))
    with caplog.at_level(logging.WARNING, logger="agentrl.rollout.harness"):
        try:
            batch = engine.run(["train-0", "train-1"])
        finally:
            engine.close()
    trajs = [t for g in batch.groups for t in g.trajectories]
    assert all(t.infra_error == "agent code raised RuntimeError: the agent's own bug" for t in trajs)
    assert batch.metrics["infra_failures"] == 8 and all(g.dropped == "too_few_valid" for g in batch.groups)
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1 and "the agent's own bug" in tracebacks[0].getMessage()


def test_a_side_request_is_answered_but_never_trained(stock_chat):
    async def run(task, client):
        title = await client.chat.completions.create(
            model="p", messages=[{"role": "user", "content": "Title for: " + task.prompt}], metadata={"side": "1"}
        )
        assert title.choices[0].message.content
        return await calc_agent(task, client)

    def env():
        side = lambda body: bool((body.get("metadata") or {}).get("side"))  # noqa: E731
        return AgentEnv(calc_tasks(), run, lambda t, out: float(out == str(t.answer)), select=lambda b: not side(b))

    policy = lambda text, rng: "A title." if "Title for" in text else calc_policy(text, rng)  # noqa: E731
    engine, _ = _engine(stock_chat, env, policy, group_size=2)
    try:
        traj = engine.run(["train-1"]).groups[0].trajectories[0]
    finally:
        engine.close()
    assert [r["trained"] for r in traj.requests] == [False, True, True] and traj.turns == 2
    assert "Title for" not in stock_chat.tokenizer.decode(traj.ids) and not traj.segments


def test_an_unreachable_backend_fails_the_episode_not_the_model(stock_chat):
    class Down:
        name = "down"

        def generate(self, prompts, params):
            raise ConnectionError("server gone")

    engine = RolloutEngine(Down(), stock_chat, lambda: CalcAgentEnv(), RolloutConfig(group_size=2))
    try:
        batch = engine.run(["train-0"])
    finally:
        engine.close()
    trajs = batch.groups[0].trajectories
    assert all(t.infra_error == "generation backend failed: ConnectionError: server gone" for t in trajs)


def test_the_openai_agents_sdk_drives_a_function_tool_through_the_endpoint(stock_chat):
    """A real agent framework from PyPI (the OpenAI Agents SDK), its Chat Completions model pointed at the endpoint."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls = []

    @agents.function_tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        calls.append(expression)
        from agentrl.tools.calculator_tool import calculator as calc

        return str(calc(expression))

    async def run(task, client):
        model = agents.OpenAIChatCompletionsModel(model="policy", openai_client=client)
        agent = agents.Agent(name="calc", instructions="Use the calculator.", tools=[calculator], model=model)
        result = await agents.Runner.run(agent, task.prompt, max_turns=4)
        return result.final_output

    env = lambda: AgentEnv(calc_tasks(), run, lambda t, out: float(str(out).strip() == str(t.answer)))  # noqa: E731
    engine, backend = _engine(stock_chat, env, group_size=4)
    try:
        batch = engine.run(["train-2"])
    finally:
        engine.close()
    trajs = batch.groups[0].trajectories
    assert all(t.valid for t in trajs), [t.infra_error for t in trajs]
    assert len(calls) == 4 and {t.reward for t in trajs} <= {0.0, 1.0}
    assert [t.reward for t in trajs] == [float("+ 1" not in stock_chat.tokenizer.decode(t.ids)) for t in trajs]
    for t in trajs:
        assert t.turns == 2 and t.prefix_breaks == 0
        _check_token_exact(t, backend.record)
    assert json.loads(json.dumps(trajs[0].to_dict()))["requests"][1]["prompt"] == "messages"


def test_check_env_plays_an_agent_env_and_catches_agent_code_that_fails(stock_chat):
    from agentrl.envs.checker import EnvCheckError, check_env

    assert check_env(CalcAgentEnv()) == []
    with pytest.raises(EnvCheckError, match="the agent's own bug"):
        check_env(CalcAgentEnv(agent="raise"))
    with pytest.raises(TypeError, match="not by step"):
        CalcAgentEnv().step("hi")
    with pytest.raises(TypeError, match=r"\(task, client, model\) or \(task, base_url, api_key, model\)"):
        AgentEnv(calc_tasks(), lambda task: None, lambda t, o: 0.0)


def test_agent_episodes_sample_on_a_real_vllm_server_through_the_endpoint(vllm_server, stock_chat):
    """The run's backend is the vllm-server one: agent requests are batched to the real server, and the trained
    tokens are exactly the ids and logprobs vLLM returned."""
    from agentrl.rollout.server_backend import VLLMServerBackend

    served = []

    class Recorded(VLLMServerBackend):
        def generate(self, prompts, params):
            out = super().generate(prompts, params)
            served.extend(zip(map(tuple, prompts), out, strict=True))
            return out

    backend = Recorded([vllm_server.url])
    config = RolloutConfig(group_size=4, zero_variance="keep", max_turns=3, max_total_tokens=1024)
    config.sampling.max_new_tokens = 24
    engine = RolloutEngine(backend, stock_chat, lambda: CalcAgentEnv(), config)
    try:
        batch = engine.run(["train-0", "train-1"])
    finally:
        engine.close()
    trajs = [t for g in batch.groups for t in g.trajectories]
    assert all(t.valid for t in trajs), [t.infra_error for t in trajs]
    by_prompt = {}
    for prompt, comp in served:
        by_prompt.setdefault(prompt, []).append(comp)
    for t in trajs:
        for r in t.requests:
            seq = t.samples()[r["segment"]]
            ids = seq.ids[r["start"] : r["start"] + r["completion_tokens"]]
            logprobs = seq.logprobs[r["start"] : r["start"] + r["completion_tokens"]]
            assert any(c.token_ids == ids and c.logprobs == logprobs for c in by_prompt[tuple(seq.ids[: r["start"]])])
    assert len(served) == sum(len(t.requests) for t in trajs)


def test_the_endpoint_listens_where_the_run_says(stock_chat):
    seen = []

    async def run(task, base_url, api_key, model):
        seen.append(base_url)
        return await calc_agent(task, openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0))

    env = lambda: AgentEnv(calc_tasks(), run, lambda t, out: 1.0)  # noqa: E731
    engine, _ = _engine(stock_chat, env, group_size=1, endpoint_host="127.0.0.2")
    try:
        traj = engine.run(["train-0"]).groups[0].trajectories[0]
    finally:
        engine.close()
    assert seen[0].startswith("http://127.0.0.2:") and traj.valid and traj.turns == 2
