"""The clipped GRPO loss, its token aggregations, and the correction for a mismatched rollout engine.

Definitions follow TRL's GRPOTrainer, which the tests use as an oracle over a whole optimizer step:

- the PPO ratio is ``exp(logprob - old)``, where ``old`` is the *trainer's* logprob under its weights
  at the start of this update, before its first optimizer step (the trainer decides how it gets it, by
  TRL's rule). In the synchronous loop those are the weights that sampled the batch; an asynchronous
  batch was sampled by an older adapter, and that gap is the rollout correction's, below. With
  ``importance_sampling_level="sequence"`` (GSPO) one ratio per sequence is used instead, the
  exponential of the mean per-token log-ratio;
- the ratio is clipped to ``[1 - epsilon_low, 1 + epsilon_high]`` and the per-token loss is
  ``-min(ratio * A, clipped * A)``;
- the rollout engine (vLLM, a 16-bit engine against a 4-bit trainer, an older adapter) samples from a
  slightly different distribution than the trainer's. :func:`rollout_correction` weighs each token
  by ``pi_trainer_old / pi_engine``, truncated at a cap or masked beyond it, per token or per
  sequence (the product over its tokens), as TRL's ``vllm_importance_sampling_mode`` does;
- the optional KL to the reference is the k3 estimator ``exp(ref - lp) - (ref - lp) - 1``, added
  after the correction;
- token aggregation (``loss_type``): ``grpo`` averages tokens within each sequence, then sequences;
  ``bnpo`` averages the tokens of a micro-batch; ``dr_grpo`` divides the token sum by
  ``sequences * max_completion_length``; ``dapo`` divides it by the tokens of the whole step.
  Sequences whose advantage is 0 still count in every normaliser and carry their KL term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
IS_LEVELS = ("token", "sequence")
CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class LossNorm:
    """Whole-step totals that make micro-batch losses add up to the step's loss."""

    sequences: int
    """Sequences in the optimizer step (all micro-batches)."""
    tokens: int
    """Trained tokens in the optimizer step."""
    micro_batches: int
    """Micro-batches accumulated into the step."""
    max_completion_length: int
    """Normaliser of ``dr_grpo``: the completion token budget."""


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    norm: LossNorm,
    *,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    importance_sampling_level: str = "token",
    correction: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss of one micro-batch; ``[B, T]`` tensors, ``advantages`` is ``[B]``.

    ``correction`` holds :func:`rollout_correction`'s weights (``[B, T]`` or ``[B, 1]``), or None.
    Summing the returned losses over the micro-batches of a step gives the step's loss.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling_level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IS_LEVELS}, got {importance_sampling_level!r}")
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    # Positions outside the mask hold arbitrary logprobs; zero the difference there so exp() stays finite.
    log_ratio = (logprobs - old_logprobs) * mask
    if importance_sampling_level == "sequence":  # GSPO: one ratio per sequence, from the mean log-ratio
        log_ratio = (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if correction is not None:
        per_token = per_token * correction
    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        delta = (ref_logprobs - logprobs) * mask
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl

    masked = per_token * mask
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / max(norm.sequences, 1)
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0) / max(norm.micro_batches, 1)
    elif loss_type == "dr_grpo":
        loss = masked.sum() / (max(norm.sequences, 1) * norm.max_completion_length)
    else:  # dapo
        loss = masked.sum() / max(norm.tokens, 1)

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        if importance_sampling_level == "sequence":  # one ratio per sequence: fractions of sequences, as TRL
            low_f, high_f, ratio_mean = float(low.mean()), float(high.mean()), float(ratio.mean())
        else:
            low_f, high_f = float((low * mask).sum() / n), float((high * mask).sum() / n)
            ratio_mean = float((ratio * mask).sum() / n)
        stats = {
            "clip_low_fraction": low_f,
            "clip_high_fraction": high_f,
            "ratio_mean": ratio_mean,
            "trained_tokens": float(mask.sum()),
        }
        if kl is not None:
            stats["kl"] = float((kl * mask).sum() / n)
    return loss, stats


def rollout_correction(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Importance weights ``pi_trainer / pi_engine`` for tokens the engine sampled, and their statistics.

    ``mode``: ``token_truncate`` (truncated IS: each token's ratio capped at ``cap``), ``token_mask``
    (tokens whose ratio exceeds ``cap`` get weight 0), ``sequence_truncate`` / ``sequence_mask`` (one
    ratio per sequence, the product over its tokens, capped or masked). ``none`` returns no weights.
    Weights are constants (no gradient): they reweigh samples, they are not part of the policy.
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"rollout correction must be one of {CORRECTIONS}, got {mode!r}")
    if mode == "none":
        return None, {}
    with torch.no_grad():
        m = mask.to(torch.float32)
        diff = ((trainer_logprobs - engine_logprobs) * m).nan_to_num(nan=0.0)
        if mode.startswith("sequence"):
            diff = diff.sum(-1, keepdim=True)
        ratio = torch.exp(diff.clamp(max=50.0))  # e^50 is far beyond any cap; avoids inf * 0 below
        over = ratio > cap
        weights = ratio.clamp(max=cap) if mode.endswith("truncate") else ratio.masked_fill(over, 0.0)
        n = m.sum().clamp(min=1.0)
        per_token = ratio.expand_as(m)
        stats = {
            "rollout_is_ratio_mean": float((per_token * m).sum() / n),
            "rollout_is_ratio_max": float(per_token[m.bool()].max()) if m.any() else 1.0,
            ("rollout_is_clipped_fraction" if mode.endswith("truncate") else "rollout_is_masked_fraction"): float(
                (over.expand_as(m).to(m.dtype) * m).sum() / n
            ),
        }
    return weights, stats
