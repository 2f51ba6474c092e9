"""Micro-batches: a step's episodes as right-padded tensors, with what the loss needs besides logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.rollout.trajectory import Trajectory

TOKEN_LIMITS = ("max_new_tokens", "max_tokens")
"""Truncations that cut a sequence mid-generation (``grpo.mask_truncated`` leaves them out of the loss)."""


def _pad(rows: list[list[float]], value: float, dtype: torch.dtype) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


@dataclass
class MicroBatch:
    """One forward/backward's worth of sequences, right-padded, with what the loss needs besides logprobs."""

    ids: torch.Tensor
    attention: torch.Tensor
    mask: torch.Tensor
    """1 on the tokens the loss is computed on (sampled tokens; none for a masked truncated episode)."""
    engine_logprobs: torch.Tensor
    """The rollout engine's logprob of each sampled token (NaN where it reported none)."""
    advantages: torch.Tensor
    old: torch.Tensor | None = None
    """pi_old: the trainer's logprobs before the first optimizer step, when computed (see the module doc)."""
    ref: torch.Tensor | None = None
    """The reference's logprobs (adapter disabled), when ``beta > 0``."""
    correction: torch.Tensor | None = None
    """Importance weights pi_old / pi_engine, when the rollout correction is on."""


def micro_batches(
    scored: list[tuple[Trajectory, float]], size: int, *, mask_truncated: bool, pad_id: int, device: str | torch.device
) -> list[MicroBatch]:
    """Episodes with their advantages, cut into micro-batches of ``size`` and moved to ``device`` once."""
    out = []
    for i in range(0, len(scored), size):
        chunk = scored[i : i + size]
        trajs = [t for t, _ in chunk]
        # grpo.mask_truncated: an episode cut by a token limit keeps its place in the normalisers, no tokens.
        cut = [mask_truncated and t.truncated_by in TOKEN_LIMITS for t in trajs]
        masks = [[0] * len(t.mask) if c else t.mask for t, c in zip(trajs, cut, strict=True)]
        engine = [[float("nan") if x is None else x for x in t.logprobs] for t in trajs]
        out.append(
            MicroBatch(
                ids=_pad([t.ids for t in trajs], pad_id, torch.long).to(device),
                attention=_pad([[1] * len(t.ids) for t in trajs], 0, torch.long).to(device),
                mask=_pad(masks, 0, torch.long).to(device),
                engine_logprobs=_pad(engine, 0.0, torch.float32).to(device),
                advantages=torch.tensor([a for _, a in chunk], dtype=torch.float32, device=device),
            )
        )
    return out
