"""Generation backends behind one interface: token ids in, sampled token ids and logprobs out.

The rollout engine only ever hands a backend *token ids* (the token-exact conversation so far) and
gets back the sampled ids with their logprobs; text is never the interface, so nothing is
re-tokenized.

Logprobs are those of the distribution each token was actually drawn from: ``log_softmax(logits /
temperature)`` after top-k/top-p/min-p filtering (plain ``log_softmax(logits)`` when greedy). That is
what vLLM reports in its ``processed_logprobs`` mode, so both backends agree. With the default
sampling parameters (no filtering) it is exactly the quantity the trainer recomputes.

Only the fields of :class:`SamplingParams` shape sampling: a model's own ``generation_config``
defaults (Qwen3 ships ``top_k=20``, ``top_p=0.95``) are overridden, never silently inherited.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SamplingParams:
    """How to sample one turn. Both backends honour every field the same way."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1 disables it."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it."""
    min_p: float = 0.0
    """Drop tokens below this fraction of the top token's probability; 0 disables it."""
    max_new_tokens: int = 256
    """Tokens to sample at most in this turn."""
    stop: list[str] = field(default_factory=list)
    """Strings that end the turn (the matched text is kept)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end the turn (kept); the end-of-turn token is always one of them."""
    seed: int | None = None
    """Seed for reproducible sampling."""


@dataclass
class Completion:
    """One sampled continuation."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """"stop" (a stop token or string ended the turn) or "length" (``max_new_tokens`` cut it)."""


class GenerationBackend(Protocol):
    """What the rollout engine needs from a sampler. Implemented by
    :class:`~agentrl.rollout.hf_backend.HFBackend` and :class:`~agentrl.rollout.vllm_backend.VLLMBackend`."""

    name: str
    """"hf" or "vllm"."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Sample one continuation for each prompt (a list of token ids)."""
        ...

    def use_adapter(self, on: bool) -> AbstractContextManager:
        """Within the ``with`` block, sample with the LoRA adapter (``on``) or with the base model.

        This is the one switch between base and adapter, for training rollouts and for evaluation alike.
        """
        ...
