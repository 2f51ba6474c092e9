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

Sampling seeds are packed, not hashed, so that none repeats within a run (:func:`batch_seed`,
:func:`prompt_seed`): seeded vLLM sampling gives a prompt the same completion for the same seed, and
a zero-variance group that is sampled again must get new completions.
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
    """Seed for reproducible sampling; prompt ``i`` of a call samples with :func:`prompt_seed` ``(seed, i)``."""


@dataclass
class Completion:
    """One sampled continuation."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """"stop" (a stop token or string ended the turn) or "length" (``max_new_tokens`` cut it)."""
    error: str | None = None
    """Why this prompt got no completion (it failed on every server); the rollout engine makes its
    episode, and only that one, an infrastructure failure. None for a real completion."""


SEED_BITS = 63
"""Sampling seeds lie in ``[0, 2**63)``: vLLM accepts any int64 seed, and ``torch.manual_seed`` any
value below 2**64."""
PROMPT_BITS = 20
"""Prompts in one ``generate`` call: at most 2**20 (1,048,576) get distinct seeds."""
BATCH_BITS = 19
"""``generate`` calls in one :meth:`~agentrl.rollout.engine.RolloutEngine.run`: at most 2**19 (524,288)."""
CALL_BITS = SEED_BITS - BATCH_BITS - PROMPT_BITS
"""What is left for the run call's own seed: 24 bits."""


def batch_seed(call_seed: int, batch: int) -> int:
    """The sampling seed of generate() call number ``batch`` of a rollout run seeded with ``call_seed``.

    The seed packs ``call_seed mod 2**24``, ``batch`` and room for :func:`prompt_seed`'s index into
    63 bits, each in its own bit field, so distinct ``(call_seed mod 2**24, batch, prompt index)``
    give distinct seeds, by construction. Call seeds collide only when they differ by a multiple of
    2**24 (16,777,216): the trainer's, ``seed * 1_000_003 + step``, are consecutive within a run, so
    a run of fewer than 16.7M steps never repeats a seed; the evaluation's are ``seed + start`` for
    its chunks, likewise. Two runs whose call seeds are 2**24 apart share seeds (as two runs with the
    same seed do). ``batch`` must be below 2**19.
    """
    if not 0 <= batch < 1 << BATCH_BITS:
        raise ValueError(f"batch {batch} outside [0, 2**{BATCH_BITS}): more generate() calls than one run seeds")
    return ((call_seed % (1 << CALL_BITS)) << BATCH_BITS | batch) << PROMPT_BITS


def prompt_seed(seed: int, index: int) -> int:
    """The seed a generator is given for prompt ``index`` of a generate() call whose ``SamplingParams.seed`` is
    ``seed`` (index 0 for backends that seed a whole call at once, as the hf backend does).

    For a seed from :func:`batch_seed`, whose low 20 bits are zero, ``seed + index`` is distinct for every
    prompt of a run; for any other seed (a user's fixed ``SamplingParams.seed``) it repeats only where that
    seed is reused. That value then goes through :func:`_mix`, a bijection of ``[0, 2**63)``, so distinct
    values stay distinct: the mixing is for the generators that read only part of a seed. torch's CPU
    generator (the hf backend on a CPU, vLLM's per-request generators on a CPU) keeps its low 32 bits alone,
    where the packed fields would put only the batch and prompt index, the same at every step. Mixed, the low
    32 bits depend on every field. ``index`` must be below 2**20.
    """
    if not 0 <= index < 1 << PROMPT_BITS:
        raise ValueError(f"prompt index {index} outside [0, 2**{PROMPT_BITS}): too many prompts in one call")
    return _mix((seed + index) % (1 << SEED_BITS))


_MASK = (1 << SEED_BITS) - 1


def _mix(x: int) -> int:
    """A bijection of ``[0, 2**63)`` that spreads every input bit over the low ones: xor-shifts and multiplications
    by odd constants modulo 2**63, each invertible on its own (the finalizer of splitmix64, at 63 bits)."""
    x ^= x >> 31
    x = (x * 0x7FB5D329728EA185) & _MASK
    x ^= x >> 27
    x = (x * 0x01DADEF4BC2DD44D) & _MASK
    x ^= x >> 33
    return x


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
