"""The rollout engine with scripted policies (exact control) and with the real HF backend."""

import re
import time

import pytest

import agentrl
from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import render_call_text
from agentrl.envs.tasks import Task
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.generation import (
    BATCH_BITS,
    PROMPT_BITS,
    SEED_BITS,
    Completion,
    SamplingParams,
    batch_seed,
    prompt_seed,
)
from agentrl.rollout.hf_backend import HFBackend
from agentrl.testing import qwen3_tokenizer, tiny_qwen3
from agentrl.tools import LocalSandbox, python_tool


class ScriptedBackend:
    """A policy written in Python: it reads the conversation text and answers with exact tokens."""

    name = "scripted"

    def __init__(self, tok, policy, fail_on_batch=None):
        self.tok, self.policy, self.fail_on_batch, self.batches = tok, policy, fail_on_batch, []

    def generate(self, prompts, params):
        self.batches.append(len(prompts))
        if self.fail_on_batch is not None and len(self.batches) - 1 == self.fail_on_batch:
            raise ConnectionError("backend down")
        out = []
        for ids in prompts:
            text = self.policy(self.tok.decode(ids)) + "<|im_end|>"
            toks = self.tok.encode(text, add_special_tokens=False)[: params.max_new_tokens]
            out.append(Completion(toks, [-0.25] * len(toks), "stop" if toks[-1] == 151645 else "length"))
        return out


class PyEnv(agentrl.ToolEnv):
    """Compute a product with the python sandbox."""

    def __init__(self, sandbox, fail_task=None):
        tasks = [Task(f"t{a}x{b}", f"Compute {a}*{b}.", answer=a * b) for a, b in [(12, 34), (56, 78), (91, 23)]]
        super().__init__(tasks, [python_tool(sandbox, timeout=5)])
        self.fail_task = fail_task

    def score(self, task, answer, messages):
        if task.id == self.fail_task:
            raise RuntimeError("grader crashed")
        return float(answer.strip() == str(task.answer))


def solver(text):
    """Call python on the first turn; answer with the tool's output on the second."""
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, flags=re.S)
    if results:
        return f"<think>\nThe tool said {results[-1]}.\n</think>\n\n{results[-1]}"
    a, b = re.findall(r"Compute (\d+)\*(\d+)", text)[-1]
    return "<think>\nUse python.\n</think>\n\n" + render_call_text("python", {"code": f"print({a} * {b})"})


@pytest.fixture(scope="module")
def sandbox():
    sb = LocalSandbox(pool_size=2)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(qwen3_tokenizer("training"), enable_thinking=True)


def engine(chat, policy, make_env, **cfg):
    return RolloutEngine(ScriptedBackend(chat.tokenizer, policy), chat, make_env, RolloutConfig(**cfg))


def test_scripted_policy_uses_a_real_sandbox(chat, sandbox):
    eng = engine(chat, solver, lambda: PyEnv(sandbox), group_size=3, zero_variance="keep")
    batch = eng.run(["t12x34", "t56x78"])
    assert [g.task_id for g in batch.groups] == ["t12x34", "t56x78"]
    for g in batch.groups:
        assert len(g.trajectories) == 3 and g.rewards == [1.0, 1.0, 1.0] and g.dropped is None
        for t in g.trajectories:
            assert t.terminated and t.turns == 2 and t.tool_calls == 1 and t.valid
            tool_msgs = [m for m in t.messages if m["role"] == "tool"]
            assert tool_msgs[0]["content"] == str(eval(g.task_id[1:].replace("x", "*")))
            # Token exactness: the trained tokens are exactly the two sampled turns, with their logprobs.
            sampled = [i for i, m in zip(t.ids, t.mask, strict=True) if m]
            assert chat.tokenizer.decode(sampled).count("<|im_end|>") == 2
            assert all(lp == -0.25 for lp, m in zip(t.logprobs, t.mask, strict=True) if m)
            assert all(lp is None for lp, m in zip(t.logprobs, t.mask, strict=True) if not m)
    # Generation is batched across every active episode: 6 episodes, 2 turns.
    assert eng.backend.batches[0] == 6
    m = batch.metrics
    assert m["reward_mean"] == 1.0 and m["tool_call_rate"] == 0.5 and m["mean_turns"] == 2.0
    assert m["zero_variance_fraction"] == 1.0 and m["infra_failure_rate"] == 0.0


def test_zero_variance_groups_are_dropped_resampled_or_kept(chat, sandbox):
    dropped = engine(chat, solver, lambda: PyEnv(sandbox), group_size=2).run(["t12x34"])
    assert dropped.groups[0].dropped == "zero_variance" and dropped.trainable_groups == []
    assert dropped.metrics["dropped_zero_variance"] == 1.0
    res = engine(chat, solver, lambda: PyEnv(sandbox), group_size=2, zero_variance="resample", max_resamples=2)
    batch = res.run(["t12x34"])
    assert batch.groups[0].resamples == 2 and batch.groups[0].dropped == "zero_variance"
    assert batch.metrics["resamples"] == 2.0 and sum(res.backend.batches) == 2 * 2 * 3


def test_a_resampled_group_is_sampled_with_seeds_it_never_had(chat, sandbox):
    # Seeded vLLM sampling repeats a prompt's completion for a repeated seed; this records the seed each
    # prompt gets (as the vLLM backends derive it) over a group's attempts, two turns each.
    class Seeds(ScriptedBackend):
        def generate(self, prompts, params):
            self.seeds = getattr(self, "seeds", []) + [prompt_seed(params.seed, i) for i in range(len(prompts))]
            return super().generate(prompts, params)

    cfg = RolloutConfig(group_size=4, zero_variance="resample", max_resamples=2)
    eng = RolloutEngine(Seeds(chat.tokenizer, solver), chat, lambda: PyEnv(sandbox), cfg)
    batch = eng.run(["t12x34"], seed=5)
    assert batch.groups[0].resamples == 2 and sum(eng.backend.batches) == 3 * 4 * 2
    assert len(set(eng.backend.seeds)) == len(eng.backend.seeds) == 24


def test_sampling_seeds_are_distinct_within_a_run_by_construction():
    # What a run uses: the trainer's call seeds (recipe seed * 1_000_003 + step), up to a few dozen
    # generate() calls per step (turns, resamples, batches split as tool calls finish), up to hundreds
    # of prompts per call. Every seed is distinct and in the range vLLM and torch accept.
    for recipe_seed in (0, 1, 42, 2**31 - 1):
        seeds = {
            prompt_seed(batch_seed(recipe_seed * 1_000_003 + step, b), i)
            for step in range(100)
            for b in range(24)
            for i in range(128)
        }
        assert len(seeds) == 100 * 24 * 128 and min(seeds) >= 0 and max(seeds) < 2**SEED_BITS
    # The fields' edges: the last batch and prompt, and consecutive call seeds across the 2**24 wrap.
    last = (2**BATCH_BITS - 1, 2**PROMPT_BITS - 1)
    edges = {prompt_seed(batch_seed(c, b), i) for c in range(2**24 - 2, 2**24 + 2) for b in (0, last[0])
             for i in (0, last[1])}  # fmt: skip
    assert len(edges) == 16 and max(edges) < 2**SEED_BITS
    with pytest.raises(ValueError, match="batch"):
        batch_seed(0, 2**BATCH_BITS)
    with pytest.raises(ValueError, match="prompt index"):
        prompt_seed(0, 2**PROMPT_BITS)
    # A user's own fixed seed: prompt i samples with seed + i (mixed), so it repeats only where the seed does.
    assert len({prompt_seed(11, i) for i in range(3)} | {prompt_seed(2**63 - 1, 1), prompt_seed(0, 0)}) == 4
    # torch's CPU generator reads the low 32 bits of a seed alone: there, too, a step's seeds differ from every
    # other step's for the same generate() call and prompt (packed unmixed, those bits held the batch and the
    # prompt index only, and every step sampled alike).
    import torch

    for b, i in ((0, 0), (3, 5), (last[0], last[1])):
        low = {prompt_seed(batch_seed(1_000_003 + step, b), i) & 0xFFFFFFFF for step in range(1000)}
        assert len(low) == 1000
    draws = {torch.rand(1, generator=torch.Generator().manual_seed(prompt_seed(batch_seed(step, 0), 0))).item()
             for step in range(50)}  # fmt: skip
    assert len(draws) == 50


def test_mixed_rewards_make_a_trainable_group(chat, sandbox):
    counter = iter(range(1000))

    def sometimes_wrong(text):
        out = solver(text)
        return out + "0" if "<tool_response>" in text and next(counter) % 2 else out

    batch = engine(chat, sometimes_wrong, lambda: PyEnv(sandbox), group_size=4).run(["t91x23"])
    group = batch.groups[0]
    assert sorted(group.rewards) == [0.0, 0.0, 1.0, 1.0] and group.dropped is None
    assert batch.trainable_groups == [group]


def test_infra_failures_are_excluded_and_counted(chat, sandbox):
    # The grader of one task crashes: those episodes are infra failures, not zero rewards.
    batch = engine(chat, solver, lambda: PyEnv(sandbox, fail_task="t56x78"), group_size=2, zero_variance="keep").run(
        ["t12x34", "t56x78"]
    )
    ok, broken = batch.groups
    assert ok.rewards == [1.0, 1.0] and broken.rewards == [] and broken.dropped == "too_few_valid"
    assert all("grader crashed" in t.infra_error for t in broken.trajectories)
    assert batch.metrics["infra_failure_rate"] == 0.5 and batch.metrics["reward_mean"] == 1.0
    # The backend failing marks every episode of its batch.
    eng = engine(chat, solver, lambda: PyEnv(sandbox), group_size=2, zero_variance="keep")
    eng.backend.fail_on_batch = 0
    batch = eng.run(["t12x34"])
    assert all("backend down" in t.infra_error for t in batch.groups[0].trajectories)
    assert batch.groups[0].dropped == "too_few_valid"


def test_limits_truncate(chat, sandbox):
    def loop_forever(text):
        return render_call_text("python", {"code": "print(1)"})

    batch = engine(chat, loop_forever, lambda: PyEnv(sandbox), group_size=2, max_turns=3, zero_variance="keep").run(
        ["t12x34"]
    )
    for t in batch.groups[0].trajectories:
        assert t.truncated and t.truncated_by == "max_turns" and t.turns == 3 and t.reward == 0.0
    assert batch.metrics["truncation_rate"] == 1.0
    batch = engine(
        chat, loop_forever, lambda: PyEnv(sandbox), group_size=1, max_total_tokens=300, zero_variance="keep"
    ).run(["t12x34"])
    t = batch.groups[0].trajectories[0]
    assert t.truncated and t.truncated_by == "max_tokens" and t.turns >= 2
    # No token is sampled past the budget; only the environment's last reply may cross it.
    last_sampled = max(i for i, m in enumerate(t.mask) if m)
    assert last_sampled < 300


def test_a_turn_cut_by_max_new_tokens_is_truncated_not_scored(chat, sandbox):
    # The correct answer, but longer than the turn allows: the cut text must never reach the grader.
    def long_answer(text):
        a, b = re.findall(r"Compute (\d+)\*(\d+)", text)[-1]
        return f"{int(a) * int(b)}" + " (checked twice, and then once more to be sure)" * 3

    stepped = []

    class Spy(PyEnv):
        def step(self, action):
            stepped.append(action)
            return super().step(action)

        async def astep(self, action):
            stepped.append(action)
            return await super().astep(action)

    sampling = SamplingParams(max_new_tokens=8)
    batch = engine(chat, long_answer, lambda: Spy(sandbox), group_size=2, sampling=sampling, zero_variance="keep")
    batch = batch.run(["t12x34"])
    for t in batch.groups[0].trajectories:
        assert t.truncated and t.truncated_by == "max_new_tokens" and not t.terminated
        assert t.reward == 0.0 and t.turns == 1 and sum(t.mask) == 8 and t.ids[-1] != chat.end_of_turn_id
    assert stepped == [] and batch.metrics["truncation_rate"] == 1.0
    # With room to finish, the same policy is graded (and wrong: the answer is not only the number).
    batch = engine(chat, long_answer, lambda: Spy(sandbox), group_size=1, zero_variance="keep").run(["t12x34"])
    t = batch.groups[0].trajectories[0]
    assert t.terminated and not t.truncated and len(stepped) == 1


def test_a_user_error_met_mid_rollout_stops_the_run(chat, sandbox):
    from agentrl.errors import MissingDependency

    class NeedsAPackage(PyEnv):
        async def astep(self, action):
            raise MissingDependency("this tool needs the frobnicate package: pip install frobnicate")

    with pytest.raises(MissingDependency, match="pip install frobnicate"):
        engine(chat, solver, lambda: NeedsAPackage(sandbox), group_size=2).run(["t12x34"])


def test_tool_calls_overlap(chat):
    @agentrl.tool
    def nap() -> str:
        """Sleep 300 ms."""
        time.sleep(0.3)
        return "rested"

    class NapEnv(agentrl.ToolEnv):
        def __init__(self):
            super().__init__([Task("a", "rest")], [nap])

        def score(self, task, answer, messages):
            return 1.0

    def policy(text):
        return "done" if "rested" in text else render_call_text("nap", {}) * 2

    t0 = time.perf_counter()
    batch = engine(chat, policy, NapEnv, group_size=8, zero_variance="keep").run(["a"])
    wall = time.perf_counter() - t0
    assert all(t.tool_calls == 2 and t.reward == 1.0 for t in batch.groups[0].trajectories)
    assert wall < 2.0, f"16 naps of 0.3 s took {wall:.2f} s: tools did not overlap"


def test_hf_backend_end_to_end_is_token_exact():
    model, tok = tiny_qwen3("training")
    chat = ChatFormat(tok, enable_thinking=False)
    backend = HFBackend(model, tok)
    cfg = RolloutConfig(
        group_size=3, max_turns=2, sampling=SamplingParams(temperature=1.0, max_new_tokens=16), zero_variance="keep"
    )
    eng = RolloutEngine(backend, chat, lambda: agentrl.make("arithmetic", num_tasks=4), cfg)
    task_ids = agentrl.make("arithmetic", num_tasks=4).unwrapped.task_ids[:2]
    batch = eng.run(task_ids)
    for t in (t for g in batch.groups for t in g.trajectories):
        assert t.valid and len(t.ids) == len(t.mask) == len(t.logprobs)
        assert sum(t.mask) == t.generated_tokens > 0
        assert all(isinstance(lp, float) and lp <= 0 for lp, m in zip(t.logprobs, t.mask, strict=True) if m)
    assert batch.metrics["tokens_per_second"] > 0
