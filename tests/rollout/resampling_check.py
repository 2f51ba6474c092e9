"""Shared by the vLLM backends' tests: a zero-variance group that is sampled again gets new completions.

Seeded vLLM sampling gives a prompt the same completion for the same seed, so this holds only if no
sampling seed repeats within a run. The environment's reward is constant, so every group has zero
variance and is sampled again ``max_resamples`` times; a thin wrapper around the real backend keeps
every generate() call.
"""

from __future__ import annotations

from agentrl.envs.tasks import Task
from agentrl.envs.tool_env import ToolEnv
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.generation import SamplingParams, prompt_seed


class Recorder:
    """The real backend, keeping each generate() call's seed, prompts and completions."""

    def __init__(self, backend):
        self.backend, self.name = backend, backend.name
        self.vocab_size = getattr(backend, "vocab_size", None)  # the ids the engine accepts from it
        self.calls: list[tuple[int | None, list[list[int]], list]] = []

    def generate(self, prompts, params):
        out = self.backend.generate(prompts, params)
        self.calls.append((params.seed, [list(p) for p in prompts], out))
        return out

    def use_adapter(self, on):
        return self.backend.use_adapter(on)


class SameReward(ToolEnv):
    """Every answer scores 0: every group has zero variance."""

    def __init__(self):
        super().__init__([Task("same", "Write anything at all.")])

    def score(self, task, answer, messages):
        return 0.0


def check_resampled_groups_get_new_completions(backend, chat, *, group_size: int = 4, max_resamples: int = 2):
    recorder = Recorder(backend)
    config = RolloutConfig(
        group_size=group_size,
        max_turns=1,
        zero_variance="resample",
        max_resamples=max_resamples,
        # Temperature 1 on a random model: distinct seeds give distinct samples (two 8-token samples
        # agree with a probability of about sum(p^2)^8, far below 1e-20 for a near-uniform next-token
        # distribution over 151k ids), while equal seeds give equal ones.
        sampling=SamplingParams(temperature=1.0, max_new_tokens=8),
    )
    batch = RolloutEngine(recorder, chat, SameReward, config).run(["same"], seed=3)
    group = batch.groups[0]
    assert group.resamples == max_resamples and group.dropped == "zero_variance"
    assert all(t.valid for t in group.trajectories), [t.infra_error for t in group.trajectories]
    # One generate() call per attempt, each with the group's one prompt G times.
    assert len(recorder.calls) == 1 + max_resamples
    prompts = {tuple(p) for _, ps, _ in recorder.calls for p in ps}
    assert len(prompts) == 1 and all(len(ps) == group_size for _, ps, _ in recorder.calls)
    seeds = [prompt_seed(seed, i) for seed, ps, _ in recorder.calls for i in range(len(ps))]
    assert len(set(seeds)) == len(seeds), seeds
    samples = [tuple(c.token_ids) for _, _, out in recorder.calls for c in out]
    assert all(samples) and len(set(samples)) == len(samples), "a resampled group was dealt completions it had"
