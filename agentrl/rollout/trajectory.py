"""Rollout records: a ``Trajectory`` is one episode, a ``Group`` is the G episodes of one task.

Everything the trainer and the evaluator need is here and JSON-serialisable: the token-exact ids,
the loss mask, the rollout logprobs, the messages, the reward and its components, how the episode
ended, timings, and whether the infrastructure failed (then the reward means nothing).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agentrl.envs.core import Message


@dataclass
class Trajectory:
    """One episode of one task."""

    task_id: str
    group_index: int
    """Position within the task's group (0..G-1)."""
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    """1 on sampled tokens, 0 on prompt and environment tokens."""
    logprobs: list[float | None] = field(default_factory=list)
    """Rollout-engine logprob of each sampled token; None elsewhere."""
    prompt_length: int = 0
    messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    """The episode's return: the sum of ``turn_rewards``."""
    turn_rewards: list[float] = field(default_factory=list)
    """Reward of each environment step, in order (non-zero before the last only for shaped rewards)."""
    reward_components: dict[str, float] = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False
    truncated_by: str | None = None
    """Which limit cut the episode, when ``truncated``: "max_new_tokens" (a turn ran out of tokens before
    its end-of-turn token), "max_tokens" (the episode's token budget), "max_turns", or the environment's own."""
    turns: int = 0
    tool_calls: int = 0
    parse_errors: int = 0
    tool_errors: int = 0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    tool_seconds: float = 0.0
    infra_error: str | None = None
    """Set when the harness failed (backend error, sandbox crash, harness timeout); the episode is not scored."""
    segments: list[dict[str, Any]] = field(default_factory=list)
    """Agent-harness episodes only (:class:`~agentrl.envs.agent_env.AgentEnv`): the earlier token sequences,
    each ``{"ids", "mask", "logprobs"}``, that a later request did not extend because the harness trimmed or
    rewrote its history. Each trains as its own sample with the episode's advantage; ``ids`` above is the last."""
    prefix_breaks: int = 0
    """Requests of an agent-harness episode that could not continue its token sequence (a new segment each)."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Agent-harness episodes: one entry per request (prompt and completion lengths, finish reason, how the
    prompt was found, whether it trains). Empty for native episodes."""
    policy_version: int | None = None
    """Optimizer steps the adapter that sampled this episode had taken (training rollouts; None in evaluation).
    With asynchronous rollouts it trails the step that trains on it by at most grpo.max_off_policy_steps."""
    env: str | None = None
    """Runs on a mix of environments (``env.mix``): the name of the one that played this episode; else None."""

    @property
    def valid(self) -> bool:
        return self.infra_error is None

    def stamp(self, version: int) -> None:
        """Record the policy version that sampled this episode, on it and on each of its requests (agent episodes)."""
        self.policy_version = version
        for r in self.requests:
            r["policy_version"] = version

    def samples(self) -> list[Trajectory]:
        """The sequences this episode trains on: itself, preceded by its earlier segments (if any)."""
        if not self.segments:
            return [self]
        earlier = [Trajectory(self.task_id, self.group_index, ids=s["ids"], mask=s["mask"], logprobs=s["logprobs"],
                              policy_version=self.policy_version) for s in self.segments]  # fmt: skip
        return [*earlier, self]

    def record_step(self, reward: float, terminated: bool, truncated: bool, info: dict[str, Any]) -> bool:
        """Add one environment step's outcome (reward, tool counts, how it ended); True when the episode ended.

        The episode's return is the sum of its steps' rewards, as in Gymnasium: environments that shape
        rewards per turn (feedback games) add them up; tool environments reward the last step only.
        """
        self.tool_calls += int(info.get("tool_calls", 0))
        self.parse_errors += len(info.get("parse_errors", ()))
        self.tool_errors += len([k for k in info.get("tool_errors", ()) if k != "infra"])
        if info.get("infra_error"):
            self.infra_error = str(info["infra_error"])
        self.turn_rewards.append(float(reward))
        self.reward = sum(self.turn_rewards)
        if not (terminated or truncated):
            return False
        self.reward_components = dict(info.get("reward_components", {}))
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        if truncated:
            self.truncated_by = info.get("truncated_by", "environment")
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trajectory:
        """Rebuild from a saved row; keys that are not fields (``text``, ``step``, ...) are ignored."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


@dataclass
class Group:
    """The G trajectories of one task; GRPO compares rewards within it."""

    task_id: str
    trajectories: list[Trajectory]
    resamples: int = 0
    """How many times the group was sampled again because its rewards had no variance."""
    dropped: str | None = None
    """Why the group carries no training signal ("zero_variance", "too_few_valid"), or None."""

    @property
    def valid(self) -> list[Trajectory]:
        return [t for t in self.trajectories if t.valid]

    @property
    def rewards(self) -> list[float]:
        """Rewards of valid trajectories only: infrastructure failures never enter group statistics."""
        return [t.reward for t in self.valid]

    @property
    def zero_variance(self) -> bool:
        rewards = self.rewards
        return len(rewards) > 0 and max(rewards) == min(rewards)

    @property
    def reward_std(self) -> float:
        rewards = self.rewards
        return statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
