"""Training agent code through the endpoint (AgentEnv): it learns, it matches the native engine's update, it trains
every segment of a harness that rewrites its history, and its failures stop a run as the native engine's do."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

from agentrl.cli import main
from agentrl.envs.agent_env import AgentEnv
from agentrl.errors import RunStopped
from agentrl.eval.jsonl import trajectory_problem
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.testing import RecordingBackend, ScriptedBackend, calc_agent, calc_policy, calc_tasks, toy_policy_path
from agentrl.train.metrics import read_metrics
from agentrl.train.recipe import load_recipe
from agentrl.train.trainer import Trainer

pytestmark = pytest.mark.slow


def _recipe(out, env_id, *extra):
    return load_recipe(None, [
        f"model.name={toy_policy_path()}", f"env.id={env_id}", "grpo.tasks_per_step=4", "grpo.group_size=8",
        "grpo.learning_rate=3e-3", "grpo.micro_batch_size=16", "lora.r=8", "lora.alpha=16", "report_to=[]",
        f"output_dir={out}", *extra,
    ])  # fmt: skip


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_tiny_qwen3_learns_the_toy_reward_through_the_endpoint(tmp_path):
    """The native trainer test's run and assertions (tests/train/test_trainer.py), with the episodes played by agent
    code over the openai SDK: the real model samples through the endpoint, and the update trains what it sampled."""
    out = tmp_path / "run"
    toy = ("sampling.max_new_tokens=12", "sampling.stop=[.]", "eval.num_tasks=16", "eval.temperature=1.0")
    recipe = _recipe(out, "agentrl.testing:LatinLettersAgentEnv", "grpo.steps=6", "grpo.max_turns=1", *toy)
    trainer = Trainer(recipe, show_progress=False)
    before = _lora(trainer.model)
    summary = trainer.train()
    rows = read_metrics(out)
    rewards = [r["reward_mean"] for r in rows]
    assert max(rewards[-2:]) > rewards[0] + 0.1, rewards
    after = _lora(trainer.model)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    assert summary["eval_after"]["mean_reward"] > summary["eval_before"]["mean_reward"] + 0.05
    assert all(r["harness_episodes"] == 32 and r["prefix_break_rate"] == 0 and r["infra_failures"] == 0 for r in rows)

    saved = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(saved) == 6 * 32 and all(trajectory_problem(r) is None for r in saved)
    assert {r["requests"][0]["policy_version"] for r in saved if r["step"] == 3} == {2}
    assert main(["view", str(out)]) == 0 and "Say something" in (out / "trajectories.html").read_text()


class Replay:
    """Deals each prompt the completions a :class:`Recording` backend gave it, in order."""

    name = "replay"

    def __init__(self, record):
        self.record = {k: list(v) for k, v in record.items()}

    def generate(self, prompts, params):
        return [self.record[tuple(p)].pop(0) for p in prompts]


def _by_tokens(batch):
    for g in batch.groups:
        g.trajectories.sort(key=lambda t: (t.ids, t.reward))
    return batch


def test_recorded_rollouts_give_the_same_update_as_the_native_engine(tmp_path):
    """Agent episodes recorded by the endpoint, then the same sampled turns dealt to the native engine on the
    equivalent ToolEnv: the same sequences, masks, logprobs and rewards, and an identical update."""
    settings = ("agentrl.testing:CalcToolEnv", "grpo.steps=1", "grpo.max_turns=4", "sampling.max_new_tokens=64",
                "grpo.zero_variance=keep", "eval.before=false", "eval.after=false")  # fmt: skip
    trainers = [Trainer(_recipe(tmp_path / d, *settings), show_progress=False) for d in "ab"]
    chat = trainers[0].chat
    recording = RecordingBackend(chat.tokenizer, calc_policy)
    config = RolloutConfig(group_size=6, max_turns=4, zero_variance="keep", seed=3)
    tasks = ["train-0", "train-1", "train-2"]
    harness = RolloutEngine(recording, chat, lambda: AgentEnv(calc_tasks(), calc_agent, _score), config)
    try:
        recorded = _by_tokens(harness.run(tasks))
    finally:
        harness.close()
    native = _by_tokens(RolloutEngine(Replay(recording.record), chat, trainers[1].train_env, config).run(tasks))
    rewards = [t.reward for g in recorded.groups for t in g.trajectories]
    assert 0 < sum(rewards) < len(rewards)  # groups with signal
    for ga, gb in zip(recorded.groups, native.groups, strict=True):
        for a, b in zip(ga.trajectories, gb.trajectories, strict=True):
            assert (a.ids, a.mask, a.logprobs, a.reward) == (b.ids, b.mask, b.logprobs, b.reward)
    before = _lora(trainers[0].model)
    assert all(torch.equal(before[n], p) for n, p in _lora(trainers[1].model).items())  # the same seed, the same start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scripted logprobs are not the model's
        trainers[0].update(recorded.groups)
        trainers[1].update(native.groups)
    a, b = _lora(trainers[0].model), _lora(trainers[1].model)
    assert any(not torch.equal(before[n], a[n]) for n in a)
    assert all(torch.equal(a[n], b[n]) for n in a)


def _score(task, answer):
    return float((answer or "").strip() == str(task.answer))


def test_a_harness_that_trims_its_history_trains_each_segment_with_the_episodes_advantage(tmp_path, caplog):
    """After the tool call the harness sends only the tool's result as a fresh question (it trims the history): a
    prefix break. Both segments train, each a sample with the episode's advantage; each sampled token once."""

    async def trimming(task, client, model):
        messages = [{"role": "user", "content": task.prompt}]
        first = (await client.chat.completions.create(model=model, messages=messages, tools=_TOOLS)).choices[0]
        call = first.message.tool_calls[0]
        result = str(eval(json.loads(call.function.arguments)["expression"]))  # the test's own trusted text
        fresh = [{"role": "user", "content": f"<tool_response>\n{result}\n</tool_response>"}]
        return (await client.chat.completions.create(model=model, messages=fresh)).choices[0].message.content

    trainer = Trainer(_recipe(tmp_path / "run", "agentrl.testing:CalcToolEnv", "grpo.steps=1", "grpo.max_turns=4",
                              "sampling.max_new_tokens=64", "eval.before=false", "eval.after=false"),
                      show_progress=False)  # fmt: skip
    env = lambda: AgentEnv(calc_tasks(), trimming, _score)  # noqa: E731
    engine = RolloutEngine(ScriptedBackend(trainer.tokenizer, calc_policy), trainer.chat, env,
                           RolloutConfig(group_size=6, seed=1))  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="agentrl.rollout.harness"):
            batch = engine.run(["train-0", "train-1"])
    finally:
        engine.close()
    trajs = [t for g in batch.groups for t in g.trajectories]
    assert all(t.valid and t.prefix_breaks == 1 and len(t.segments) == 1 for t in trajs)
    assert any("12 of 12 agent episodes broke the token prefix" in r.getMessage() for r in caplog.records)
    assert batch.metrics["prefix_break_rate"] == 1.0 and batch.metrics["prefix_break_segments"] == 12
    scored = trainer._scored(batch.groups)
    assert len(scored) == 2 * sum(len(g.valid) for g in batch.trainable_groups)
    for t in trajs:
        first, last = t.samples()
        assert [r["segment"] for r in t.requests] == [0, 1]
        assert (
            sum(first.mask) == t.requests[0]["completion_tokens"]
            and sum(last.mask) == t.requests[1]["completion_tokens"]
        )
        assert "<tool_call>" in trainer.tokenizer.decode([i for i, m in zip(first.ids, first.mask, strict=True) if m])
    advantages = {}
    for sample, adv in scored:
        advantages.setdefault((sample.task_id, sample.group_index), []).append(adv)
    assert all(len(v) == 2 and v[0] == v[1] for v in advantages.values())
    before = _lora(trainer.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.update(batch.groups)
    assert any(not torch.equal(before[n], p) for n, p in _lora(trainer.model).items())


_TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]


def test_agent_code_that_keeps_failing_stops_the_run_as_infrastructure_failures_do(tmp_path):
    recipe = _recipe(tmp_path / "run", "agentrl.testing:CalcAgentEnv", "env.kwargs={agent: raise}", "grpo.steps=3",
                     "eval.before=false", "eval.after=false")  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    before = _lora(trainer.model)
    with pytest.raises(RunStopped) as err:
        trainer.train()
    message = str(err.value)
    assert "limits.max_infra_failure_rate" in message and "the agent's own bug" in message and "\n" not in message
    assert all(torch.equal(before[n], p) for n, p in _lora(trainer.model).items())
