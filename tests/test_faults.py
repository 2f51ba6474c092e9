"""Faults injected into a live rollout: each affected episode becomes an infrastructure failure, left out of
its group's statistics and counted, and the other episodes are untouched. The trainer's side (non-finite
updates, a full disk, the failure-rate limit, a faulted training run) is tests/train/test_fault_tolerance.py."""

from __future__ import annotations

import asyncio

import pytest

import agentrl
from agentrl import faults
from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import ToolCall
from agentrl.envs.tasks import Task
from agentrl.rollout.engine import RolloutConfig, RolloutEngine, invalid_completion
from agentrl.rollout.generation import Completion
from agentrl.testing import ProductEnv, ScriptedBackend, product_policy, qwen3_tokenizer
from agentrl.tools import LocalSandbox
from agentrl.tools.runner import ToolRunner


@pytest.fixture(scope="module")
def sandbox():
    sb = LocalSandbox(pool_size=2)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(qwen3_tokenizer("training"), enable_thinking=True)


def _engine(chat, sandbox, **cfg):
    backend = ScriptedBackend(chat.tokenizer, product_policy)
    config = RolloutConfig(**{"group_size": 4, "max_turns": 3, "zero_variance": "keep", **cfg})
    return RolloutEngine(backend, chat, lambda: ProductEnv(num_tasks=4, sandbox=sandbox), config)


TASKS = ["train-0", "train-1", "train-2"]


def test_a_fault_point_fires_on_repeatable_calls_and_is_inert_outside_inject():
    assert faults.fire("tool.call", name="x") is None  # nothing installed: every real run
    with faults.inject("loss", lambda loss: loss * 2, rate=0.5, seed=3) as f:
        hits = [faults.fire("loss", loss=1.0) for _ in range(40)]
    with faults.inject("loss", lambda loss: loss * 2, rate=0.5, seed=3):
        again = [faults.fire("loss", loss=1.0) for _ in range(40)]
    assert hits == again and f.calls == 40 and f.fired == hits.count(2.0) and 5 < f.fired < 35
    assert faults.fire("loss", loss=1.0) is None
    with faults.inject("write", faults.raises(lambda: OSError(28, "No space left on device")), skip=1, times=1) as f:
        assert faults.fire("write", path="a") is None
        with pytest.raises(OSError, match="No space"):
            faults.fire("write", path="b")
        assert faults.fire("write", path="c") is None
    assert f.contexts == [{"path": "b"}]
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.Fault("nowhere", print)


def test_declared_infrastructure_exceptions_are_not_the_models_fault():
    def lookup(city: str) -> str:
        """Weather of a city.

        Args:
            city: The city.
        """
        if city == "down":
            raise ConnectionError("weather service refused the connection")
        if city == "bug":
            raise agentrl.InfraError("quota exhausted")
        raise ValueError(f"no such city: {city}")

    class Weather(agentrl.ToolEnv):
        infra_exceptions = (ConnectionError,)

        def score(self, task, answer, messages):
            return 1.0

    runner = ToolRunner([lookup], infra_exceptions=(ConnectionError,))
    outcomes = asyncio.run(runner.run([ToolCall("lookup", {"city": c}) for c in ("down", "bug", "Paris")]))
    assert [o.error_kind for o in outcomes] == ["infra", "infra", "exception"]
    assert "not your fault" in outcomes[0].message["content"]
    assert "no such city" in outcomes[2].message["content"]  # the model's own mistake, for it to read

    env = Weather([Task("t", "Weather?")], [lookup])
    env.reset(seed=0)
    _, _, done, _, info = env.step('<tool_call>\n{"name": "lookup", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert not done and "infra_error" not in info
    _, _, done, _, info = env.step('<tool_call>\n{"name": "lookup", "arguments": {"city": "down"}}\n</tool_call>')
    assert "refused the connection" in info["infra_error"]
    # Without the declaration, the same exception is information for the model.
    plain = agentrl.ToolEnv.__new__(Weather)
    agentrl.ToolEnv.__init__(plain, [Task("t", "Weather?")], [lookup], infra_exceptions=())
    plain.reset(seed=0)
    _, _, _, _, info = plain.step('<tool_call>\n{"name": "lookup", "arguments": {"city": "down"}}\n</tool_call>')
    assert "infra_error" not in info and info["tool_errors"] == ["exception"]


def test_tool_infra_errors_mark_exactly_the_faulted_episodes(chat, sandbox):
    down = faults.raises(lambda: agentrl.InfraError("search API down"))
    with faults.inject("tool.call", down, rate=0.3, seed=1) as f:
        batch = _engine(chat, sandbox).run(TASKS, seed=5)
    trajs = [t for g in batch.groups for t in g.trajectories]
    failed = [t for t in trajs if t.infra_error]
    assert f.fired >= 1 and len(failed) == f.fired == batch.metrics["infra_failures"]
    assert all("search API down" in t.infra_error for t in failed)
    for g in batch.groups:  # left out of the group's statistics
        assert g.rewards == [t.reward for t in g.trajectories if not t.infra_error]
    assert batch.metrics["infra_failure_rate"] == pytest.approx(len(failed) / len(trajs))
    assert all(t.reward in (0.0, 1.0) for t in trajs if not t.infra_error)


def test_a_service_hanging_past_the_harness_timeout_is_an_infrastructure_failure(chat, sandbox):
    async def hang():
        await asyncio.sleep(30)

    with faults.inject("tool.call", lambda **_: hang(), times=2) as f:
        batch = _engine(chat, sandbox, step_timeout=1.0).run(TASKS[:1], seed=5)
    failed = [t for t in batch.groups[0].trajectories if t.infra_error]
    assert f.fired == 2 and len(failed) == 2
    assert all("harness timeout of 1 s" in t.infra_error for t in failed)
    assert len(batch.groups[0].valid) == 2 and batch.groups[0].dropped is None


def test_a_backend_raising_or_returning_garbage_fails_only_its_episodes(chat, sandbox):
    with faults.inject("generate", faults.raises(lambda: ConnectionError("server reset")), times=1) as f:
        batch = _engine(chat, sandbox).run(TASKS[:1], seed=5)
    assert f.fired == 1 and all("server reset" in t.infra_error for t in batch.groups[0].trajectories)
    assert batch.groups[0].dropped == "too_few_valid"

    def garbage(completions):
        completions[0].token_ids[1] = 10**9  # an id beyond the vocabulary
        completions[1].logprobs[0] = 3.0  # not a log-probability
        completions[2].token_ids.append(-1)

    with faults.inject("generate", garbage, times=1):
        batch = _engine(chat, sandbox).run(TASKS[:1], seed=5)
    errors = [t.infra_error for t in batch.groups[0].trajectories]
    assert "outside the vocabulary" in errors[0] and "not a log-probability" in errors[1]
    assert "token id -1" in errors[2] and errors[3] is None
    assert batch.groups[0].trajectories[3].reward in (0.0, 1.0) and batch.groups[0].trajectories[3].turns == 2
    # Nothing of a garbage completion entered the token sequence.
    assert all((t.turns == 1 and t.ids == []) or 10**9 not in t.ids for t in batch.groups[0].trajectories)


def test_invalid_completion_accepts_what_real_backends_return():
    assert invalid_completion(Completion([1, 2], [-0.5, float("nan")], "stop"), 10) is None
    assert invalid_completion(Completion([], [], "length"), 10) is None
    assert "2 logprobs for 1" in invalid_completion(Completion([1], [-1.0, -1.0], "stop"), 10)
    assert "finish reason" in invalid_completion(Completion([1], [-1.0], "eos?"), 10)
    assert "type" in invalid_completion(Completion(None, [], "stop"), 10)
    import numpy as np

    assert invalid_completion(Completion([np.int64(3)], [np.float32(-0.5)], "stop"), 10) is None
    assert "outside the vocabulary" in invalid_completion(Completion([True], [-0.5], "stop"), 10)


def test_a_reward_function_raising_is_an_infrastructure_failure(chat, sandbox):
    with faults.inject("score", faults.raises(lambda: KeyError("grader state")), times=3) as f:
        batch = _engine(chat, sandbox).run(TASKS[:2], seed=5)
    failed = [t for g in batch.groups for t in g.trajectories if t.infra_error]
    assert f.fired == 3 and len(failed) == 3
    assert all("environment step failed: KeyError" in t.infra_error for t in failed)
    assert batch.metrics["infra_failures"] == 3
