"""Group-relative advantages: each episode's reward against the other episodes of its task.

Definitions follow TRL's GRPOTrainer (``scale_rewards="group"`` for ``grpo``):

- ``grpo``: ``(r - mean) / (std + 1e-4)`` with the unbiased std of the group;
- ``dr_grpo``: ``r - mean`` (Dr. GRPO drops the std, which over-weights near-uniform groups);
- ``rloo``: ``r`` minus the mean of the *other* members (REINFORCE leave-one-out).

Only valid episodes enter a group's statistics; infrastructure failures carry no advantage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
STD_EPS = 1e-4  # TRL's constant; keeps a near-constant group from exploding


def group_advantages(rewards: Sequence[float] | torch.Tensor, kind: str = "grpo") -> torch.Tensor:
    """Advantages of the members of one group, from their rewards."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if kind not in ADVANTAGES:
        raise ValueError(f"advantage must be one of {ADVANTAGES}, got {kind!r}")
    g = r.numel()
    if g < 2:
        return torch.zeros_like(r)  # a lone episode has no baseline to compare against
    centred = r - r.mean()
    if kind == "grpo":
        return centred / (r.std(unbiased=True) + STD_EPS)
    if kind == "dr_grpo":
        return centred
    # rloo: r_i - mean_{j != i} r_j  ==  G / (G - 1) * (r_i - mean)
    return centred * (g / (g - 1))
