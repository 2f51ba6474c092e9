"""Token logprobs from the decoder's hidden states, without ever holding ``[B, T, vocab]`` logits.

Only the positions that are trained on go through the LM head, a chunk of positions at a time,
under activation checkpointing: the logits of one chunk exist at a time, forward and backward.
Rows that open with the same prompt share one decoder pass over it (see :mod:`agentrl.rollout.prefix`).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils.checkpoint import checkpoint

from agentrl.rollout.prefix import common_prefix_length, note_once, shareable_cache


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
    if shared and getattr(lm, "is_gradient_checkpointing", False):
        # Checkpointed layers would replay their cache updates in the backward pass. Passes without
        # gradient (pi_old, the reference) take the same path, so that the PPO ratio starts at exactly 1.
        shared = 0
    cache = _prefix_cache(decoder, input_ids[:1, :shared]) if shared else None
    if cache is None:
        shared = 0
    if shared:
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


_UNSHAREABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Decoders whose KV cache was found unshareable (see :func:`shareable_cache`); they are not asked again."""


def _prefix_cache(decoder: torch.nn.Module, prefix: torch.Tensor):
    """The KV cache of the shared opening ``prefix`` (one row), or None when this decoder's cache cannot be
    repeated and handed back (Unsloth's CUDA forwards: none in training mode, a legacy tuple otherwise). Then
    the rows run whole, which gives the same logprobs; the reason is logged once."""
    if decoder in _UNSHAREABLE:
        return None
    cache, why = shareable_cache(decoder(input_ids=prefix, use_cache=True).past_key_values)
    if cache is None:
        _UNSHAREABLE[decoder] = why
        note_once(f"the logprob pass runs each row whole instead of sharing their common opening: {why}")
    return cache


def _shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> int:
    """Length of the opening all rows share, stopping before the token that predicts the first trained one."""
    limit = min(int(attention_mask.bool().all(0).long().cumprod(0).sum()), input_ids.shape[1] - 1)
    trained = loss_mask.bool().any(0)
    if trained.any():
        limit = min(limit, int(trained.long().argmax()) - 1)
    return common_prefix_length(input_ids.tolist(), max(limit, 0))


def naive_token_logprobs(model, input_ids, attention_mask, loss_mask, *, temperature: float = 1.0) -> torch.Tensor:
    """The textbook version (full ``[B, T, vocab]`` logits); kept for tests and the memory benchmark."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = lp * loss_mask[:, 1:]
    return out
