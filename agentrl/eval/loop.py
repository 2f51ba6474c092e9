"""Held-out evaluation with the training rollout loop: the same engine, the same scoring.

Infrastructure failures are left out of ``n`` and counted, so a dead sandbox cannot pass for a bad
model. An episode succeeds when its ``success`` (or ``correct``) reward component is 1, or, for
environments without one, when its reward is at least 1.

:func:`evaluate` samples ``samples`` episodes per task; :func:`eval_metrics` turns them into mean
reward, pass@k and pass^k for every k up to ``samples``, bootstrap CIs over tasks, tool-call,
parse-failure and truncation rates, per-turn statistics and one row per task. On a mix of environments
both also report each environment's episodes alone (``per_env``), labelled by :func:`agentrl.envs.mix.label`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agentrl.eval.stats import mean_with_ci, paired_difference, pass_at_k, pass_hat_k, wilson_interval
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.trajectory import Trajectory

__all__ = [
    "by_env",
    "eval_config",
    "eval_metrics",
    "evaluate",
    "paired_difference",
    "per_task_reward",
    "per_task_success",
    "succeeded",
    "summarize",
]


def succeeded(t: Trajectory) -> bool:
    comps = t.reward_components
    value = comps.get("success", comps.get("correct", t.reward))
    return float(value) >= 1.0 - 1e-9


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """The short summary the trainer records before and after training (with ``per_env`` on a mix)."""
    out = _summary(trajectories)
    envs = by_env(trajectories)
    if envs:
        out["per_env"] = {name: _summary(own) for name, own in envs.items()}
    return out


def _summary(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    valid = [t for t in trajectories if t.valid]
    rewards = [t.reward for t in valid]
    wins = sum(succeeded(t) for t in valid)
    return {
        "mean_reward": statistics.fmean(rewards) if rewards else 0.0,
        "success_rate": wins / len(valid) if valid else 0.0,
        "success_ci95": list(wilson_interval(wins, len(valid))),
        "n": len(valid),
        "infra_failures": len(trajectories) - len(valid),
        "tool_call_rate": sum(t.tool_calls for t in valid) / max(sum(t.turns for t in valid), 1),
        "truncation_rate": sum(t.truncated for t in valid) / max(len(valid), 1),
        # Each reward component's mean over the valid episodes (e.g. used_tool, sandbox_error).
        "components": {
            k: statistics.fmean(t.reward_components.get(k, 0.0) for t in valid)
            for k in sorted({k for t in valid for k in t.reward_components})
        },
    }


def by_env(trajectories: Sequence[Trajectory]) -> dict[str, list[Trajectory]]:
    """A mix's episodes by the environment that played them (``Trajectory.env``), in first-seen order; empty
    when no episode names one (a single environment)."""
    out: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        if t.env is not None:
            out.setdefault(t.env, []).append(t)
    return out


def by_task(trajectories: Sequence[Trajectory]) -> dict[str, list[Trajectory]]:
    """Valid episodes grouped by task id, in first-seen order."""
    out: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        if t.valid:
            out.setdefault(t.task_id, []).append(t)
    return out


def per_task_success(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Success (0/1) of each valid episode by task id; the mean over a task's episodes if it has several."""
    return {k: statistics.fmean(float(succeeded(t)) for t in v) for k, v in by_task(trajectories).items()}


def per_task_reward(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Mean reward of each task's valid episodes, by task id."""
    return {k: statistics.fmean(t.reward for t in v) for k, v in by_task(trajectories).items()}


def _assistant_turns(t: Trajectory) -> list[dict[str, Any]]:
    """The episode's own assistant messages (few-shot demonstrations in the prompt come before them)."""
    turns = [m for m in t.messages if m.get("role") == "assistant"]
    return turns[len(turns) - t.turns :] if t.turns else []


def per_turn_stats(trajectories: Sequence[Trajectory]) -> list[dict[str, float]]:
    """For each turn index: how many episodes reached it, how many called a tool there, the mean step
    reward, and how many ended there. Shows where episodes spend their turns and where they stop."""
    valid = [t for t in trajectories if t.valid]
    rows = []
    for i in range(max((t.turns for t in valid), default=0)):
        reached = [t for t in valid if t.turns > i]
        calls = [bool(_assistant_turns(t)[i].get("tool_calls")) for t in reached if len(_assistant_turns(t)) > i]
        step_rewards = [t.turn_rewards[i] for t in reached if len(t.turn_rewards) > i]
        rows.append(
            {
                "turn": i + 1,
                "episodes": len(reached),
                "tool_call_fraction": sum(calls) / len(calls) if calls else 0.0,
                "mean_step_reward": statistics.fmean(step_rewards) if step_rewards else 0.0,
                "ended_here": sum(t.turns == i + 1 for t in reached) / len(reached),
            }
        )
    return rows


def eval_metrics(trajectories: Sequence[Trajectory], *, k: int, seed: int = 0) -> dict[str, Any]:
    """Everything ``agentrl eval`` reports, from ``k`` (or fewer, after infra failures) episodes per task; on a
    mix also ``per_env``, each environment's metrics (its tasks' rows stay in the whole run's ``per_task``)."""
    out = _eval_metrics(trajectories, k=k, seed=seed)
    envs = by_env(trajectories)
    if envs:
        out["per_env"] = {
            name: {key: v for key, v in _eval_metrics(own, k=k, seed=seed).items() if key != "per_task"}
            for name, own in envs.items()
        }
    return out


def _eval_metrics(trajectories: Sequence[Trajectory], *, k: int, seed: int) -> dict[str, Any]:
    valid = [t for t in trajectories if t.valid]
    tasks = by_task(trajectories)
    rows = []
    for tid, eps in tasks.items():
        n, c = len(eps), sum(succeeded(t) for t in eps)
        rows.append(
            {
                "task_id": tid,
                "n": n,
                "successes": c,
                "mean_reward": statistics.fmean(t.reward for t in eps),
                "pass@1": c / n,
                "pass^k": pass_hat_k(n, c, min(k, n)),
                "turns": statistics.fmean(t.turns for t in eps),
                "tool_calls": statistics.fmean(t.tool_calls for t in eps),
                "truncated": sum(t.truncated for t in eps),
            }
        )
    pass_at, pass_hat = {}, {}
    for j in range(1, k + 1):
        # A task with fewer than j valid samples (infra failures) cannot estimate pass@j; it is left out.
        eligible = [(len(e), sum(succeeded(t) for t in e)) for e in tasks.values() if len(e) >= j]
        pass_at[str(j)] = mean_with_ci([pass_at_k(n, c, j) for n, c in eligible], seed=seed)
        pass_hat[str(j)] = mean_with_ci([pass_hat_k(n, c, j) for n, c in eligible], seed=seed)
    n_valid = max(len(valid), 1)
    return {
        "tasks": len(tasks),
        "episodes": len(valid),
        "samples_per_task": k,
        "infra_failures": len(trajectories) - len(valid),
        "mean_reward": mean_with_ci([r["mean_reward"] for r in rows], seed=seed),
        "success_rate": mean_with_ci([r["pass@1"] for r in rows], seed=seed),
        "pass_at_k": pass_at,
        "pass_hat_k": pass_hat,
        "tool_call_rate": sum(t.tool_calls > 0 for t in valid) / n_valid,
        "tool_calls_per_episode": sum(t.tool_calls for t in valid) / n_valid,
        "parse_failure_rate": sum(t.parse_errors > 0 for t in valid) / n_valid,
        "truncation_rate": sum(t.truncated for t in valid) / n_valid,
        "mean_turns": sum(t.turns for t in valid) / n_valid,
        "mean_generated_tokens": sum(t.generated_tokens for t in valid) / n_valid,
        "per_turn": per_turn_stats(valid),
        "per_task": rows,
    }


def evaluate(
    engine: RolloutEngine,
    task_ids: Sequence[str],
    *,
    samples: int = 1,
    chunk: int = 64,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[list[Trajectory]], None] | None = None,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """Run ``samples`` episodes per task with ``engine`` (its sampling settings apply) and summarise.

    Tasks go through in chunks of about ``chunk`` episodes, so that progress can be shown, finished
    work can be saved (``on_chunk``) and memory stays bounded. Environment resets are seeded per task
    and sample index, so two models evaluated with the same ``seed`` see the same episodes.
    """
    saved = engine.config
    engine.config = replace(saved, group_size=samples, zero_variance="keep", min_valid_fraction=0.0)
    per_chunk = max(1, chunk // samples)
    trajectories: list[Trajectory] = []
    try:
        for start in range(0, len(task_ids), per_chunk):
            ids = list(task_ids[start : start + per_chunk])
            batch = engine.run(ids, seed=seed + start)
            new = [t for g in batch.groups for t in g.trajectories]
            trajectories += new
            if on_chunk:
                on_chunk(new)
            if on_progress:
                on_progress(len(ids))
    finally:
        engine.config = saved
    return summarize(trajectories), trajectories


def eval_config(base: RolloutConfig, *, temperature: float, max_new_tokens: int) -> RolloutConfig:
    """``base`` with evaluation sampling (greedy by default)."""
    sampling = replace(
        base.sampling, temperature=temperature, max_new_tokens=max_new_tokens or base.sampling.max_new_tokens
    )
    return replace(base, sampling=sampling)
