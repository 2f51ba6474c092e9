"""GRPO's arithmetic: group-relative advantages, chunked token logprobs, and the clipped loss.

Definitions follow TRL's GRPOTrainer so that TRL can serve as an oracle in the tests:

- advantages: ``grpo`` is ``(r - mean) / (std + 1e-4)`` with the unbiased std of the group,
  ``dr_grpo`` drops the std, ``rloo`` subtracts the mean of the *other* members of the group;
- the PPO-clip ratio is taken against the rollout engine's logprobs, clipped to
  ``[1 - epsilon_low, 1 + epsilon_high]``;
- the optional KL to the reference is the k3 estimator ``exp(ref - lp) - (ref - lp) - 1``;
- token aggregation (``loss_type``): ``grpo`` averages tokens within each sequence, then sequences;
  ``bnpo`` averages the tokens of a micro-batch; ``dr_grpo`` divides the token sum by
  ``sequences * max_completion_length``; ``dapo`` divides it by the tokens of the whole step.

Logprobs come from the decoder's hidden states, a chunk of positions at a time, under activation
checkpointing: the ``[tokens, vocab]`` logits of one chunk exist at a time, forward and backward, so
``[B, T, vocab]`` never does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
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


# ----- logprobs from hidden states ----------------------------------------------------------------
def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers CausalLM inside a PEFT wrapper (LoRA layers stay injected and active)."""
    inner = model
    while hasattr(inner, "base_model") and inner.base_model is not inner and not hasattr(inner, "lm_head"):
        inner = inner.base_model
    if hasattr(inner, "model") and not hasattr(inner, "lm_head") and hasattr(inner.model, "lm_head"):
        inner = inner.model
    if not hasattr(inner, "get_output_embeddings"):
        raise TypeError(f"cannot find the language-model head of {type(model).__name__}")
    return inner


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Logprob of each token given its prefix, at positions where ``loss_mask`` is 1 (0 elsewhere).

    Only the positions that are trained on go through the LM head, ``chunk_size`` at a time, and
    each chunk is recomputed in the backward pass instead of keeping its logits alive.

    Rows are right-padded. With ``share_prefix``, the opening that every row has in common (system
    prompt, tool specs, few-shot turns; never a trained token) runs through the decoder once, and
    the rows continue from its KV cache. Gradients still flow through the prefix's keys and values,
    so the result equals the plain forward in value and gradient.
    """
    lm = _causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    shared = _shared_prefix_length(input_ids, attention_mask, loss_mask) if share_prefix else 0
    if shared and getattr(lm, "is_gradient_checkpointing", False) and torch.is_grad_enabled():
        shared = 0  # checkpointed layers would replay their cache updates in the backward pass
    if shared:
        cache = decoder(input_ids=input_ids[:1, :shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(input_ids.shape[0])
        positions = torch.arange(shared, input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        hidden = decoder(
            input_ids=input_ids[:, shared:],
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=positions,
            use_cache=True,
        ).last_hidden_state
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # The token at t is predicted from the hidden state at t - 1; hidden starts at position `shared`.
    select = loss_mask[:, shared + 1 :].bool()
    h = hidden[:, :-1][select]
    targets = input_ids[:, shared + 1 :][select]
    pieces = []
    for start in range(0, h.shape[0], chunk_size):
        hc, tc = h[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and hc.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, head, hc, tc, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, hc, tc, temperature))
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, shared + 1 :][select] = flat
    return out


MIN_SHARED_PREFIX = 16
"""Shorter common openings are not worth the extra decoder call."""


def _shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> int:
    """Length of the opening all rows share, stopping before the token that predicts the first trained one."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    n = int(same.long().cumprod(0).sum())
    trained = loss_mask.bool().any(0)
    if trained.any():
        n = min(n, int(trained.long().argmax()) - 1)
    n = min(n, input_ids.shape[1] - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def naive_token_logprobs(model, input_ids, attention_mask, loss_mask, *, temperature: float = 1.0) -> torch.Tensor:
    """The textbook version (full ``[B, T, vocab]`` logits); kept for tests and the memory benchmark."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = lp * loss_mask[:, 1:]
    return out


# ----- the loss ----------------------------------------------------------------------------------
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss of one micro-batch; ``[B, T]`` tensors, ``advantages`` is ``[B]``.

    Summing the returned losses over the micro-batches of a step gives the step's loss.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    # Positions outside the mask hold arbitrary logprobs; zero the difference there so exp() stays finite.
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
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
        stats = {
            "clip_low_fraction": float((low * mask).sum() / n),
            "clip_high_fraction": float((high * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
            "trained_tokens": float(mask.sum()),
        }
        if kl is not None:
            stats["kl"] = float((kl * mask).sum() / n)
    return loss, stats
