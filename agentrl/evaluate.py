"""Held-out evaluation with the training rollout loop: one episode per task, scored the same way.

Infrastructure failures are left out of ``n`` and counted, so a dead sandbox cannot pass for a bad
model. An episode succeeds when its ``success`` (or ``correct``) reward component is 1, or, for
environments without one, when its reward is at least 1.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from agentrl.rollout import RolloutConfig, RolloutEngine
from agentrl.trajectory import Trajectory


def succeeded(t: Trajectory) -> bool:
    comps = t.reward_components
    value = comps.get("success", comps.get("correct", t.reward))
    return float(value) >= 1.0 - 1e-9


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    valid = [t for t in trajectories if t.valid]
    rewards = [t.reward for t in valid]
    return {
        "mean_reward": statistics.fmean(rewards) if rewards else 0.0,
        "success_rate": sum(succeeded(t) for t in valid) / len(valid) if valid else 0.0,
        "n": len(valid),
        "infra_failures": len(trajectories) - len(valid),
        "tool_call_rate": sum(t.tool_calls for t in valid) / max(sum(t.turns for t in valid), 1),
        "truncation_rate": sum(t.truncated for t in valid) / max(len(valid), 1),
    }


def per_task_success(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Success (0/1) of each valid episode by task id; the mean over a task's episodes if it has several."""
    by_task: dict[str, list[float]] = {}
    for t in trajectories:
        if t.valid:
            by_task.setdefault(t.task_id, []).append(float(succeeded(t)))
    return {k: statistics.fmean(v) for k, v in by_task.items()}


def paired_difference(
    before: Mapping[str, float], after: Mapping[str, float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``after - before`` over the tasks both evaluated, with a paired bootstrap 95% CI.

    Pairing by task removes the between-task variance, so the interval is much tighter than the
    one of two independent success rates.
    """
    common = sorted(set(before) & set(after))
    if not common:
        return {"difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "n": 0}
    diffs = [after[k] - before[k] for k in common]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return {
        "difference": statistics.fmean(diffs),
        "ci95_low": means[int(0.025 * (resamples - 1))],
        "ci95_high": means[int(0.975 * (resamples - 1))],
        "n": len(common),
    }


def evaluate(
    engine: RolloutEngine,
    task_ids: Sequence[str],
    *,
    chunk: int = 64,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """Run one episode per task with ``engine`` (its sampling settings apply) and summarise.

    Tasks go through in chunks so that progress can be shown and memory stays bounded.
    """
    saved = engine.config
    engine.config = replace(saved, group_size=1, zero_variance="keep", min_valid_fraction=0.0)
    trajectories: list[Trajectory] = []
    try:
        for start in range(0, len(task_ids), chunk):
            batch = engine.run(list(task_ids[start : start + chunk]), seed=seed + start)
            trajectories += [t for g in batch.groups for t in g.trajectories]
            if on_progress:
                on_progress(min(chunk, len(task_ids) - start))
    finally:
        engine.config = saved
    return summarize(trajectories), trajectories


def eval_config(base: RolloutConfig, *, temperature: float, max_new_tokens: int) -> RolloutConfig:
    """``base`` with evaluation sampling (greedy by default)."""
    sampling = replace(
        base.sampling, temperature=temperature, max_new_tokens=max_new_tokens or base.sampling.max_new_tokens
    )
    return replace(base, sampling=sampling)
