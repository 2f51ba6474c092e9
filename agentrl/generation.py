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

from dataclasses import dataclass, field
from typing import Any, Protocol


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
    finish_reason: str  # "stop" (a stop token or string) or "length"


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Sample one continuation for each prompt (a list of token ids)."""
        ...


class HFBackend:
    """transformers ``generate``, batched with left padding, on CPU or CUDA.

    Prompts in a rollout batch usually share a long opening (system prompt, tool specs, few-shot
    turns). With ``share_prefix`` that common prefix is run through the model once and its KV cache
    is repeated across the batch; each row is then ``prefix + padding + own suffix`` and positions
    come from the attention mask, so every token sees exactly the positions and context it would in
    an unpadded forward. On a CPU, where prompt tokens cost as much compute as sampled ones, this is
    most of the rollout time.
    """

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 64, share_prefix: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        self.min_shared_prefix = 16
        """Shorter common prefixes are not worth a separate forward."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        for i in range(0, len(prompts), self.max_batch_size):
            out.extend(self._generate_batch(prompts[i : i + self.max_batch_size], params))
        return out

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch

        device = next(self.model.parameters()).device
        # Keep at least one token of every prompt outside the shared prefix: generate() needs input.
        shared = _common_prefix_length(prompts, max(len(p) for p in prompts)) if self.share_prefix else 0
        shared = min(shared, min(len(p) for p in prompts) - 1)
        if len(prompts) < 2 or shared < self.min_shared_prefix:
            shared = 0
        suffix_width = max(len(p) - shared for p in prompts)
        width = shared + suffix_width
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            # Padding goes between the shared prefix and the row's own suffix.
            input_ids[row, :shared] = torch.tensor(p[:shared], dtype=torch.long)
            attention[row, :shared] = 1
            input_ids[row, width - (len(p) - shared) :] = torch.tensor(p[shared:], dtype=torch.long)
            attention[row, width - (len(p) - shared) :] = 1
        stop_ids = sorted(set(params.stop_token_ids))
        greedy = params.temperature <= 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "min_new_tokens": 0,
            "do_sample": not greedy,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "eos_token_id": stop_ids or None,
            "pad_token_id": self.pad_id,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if not greedy:
            # Set explicitly, or generate() would fill them from the model's generation_config.
            kwargs.update(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.no_grad():
            if shared:
                kwargs["past_key_values"] = self._prefix_cache(input_ids[:1, :shared].to(device), len(prompts))
            result = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        sequences = result.sequences[:, width:].cpu()
        # scores[t] are the logits of step t after temperature and filtering: the sampling distribution.
        scores = torch.stack(result.scores, dim=1).float().cpu()
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, sequences.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row in range(len(prompts)):
            ids = sequences[row].tolist()
            n, reason = _cut(ids, stop_ids, self.tokenizer, params.stop)
            completions.append(Completion(ids[:n], logprobs[row, :n].tolist(), reason))
        return completions

    def _prefix_cache(self, prefix_ids: Any, batch: int) -> Any:
        out = self.model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(batch)
        return cache


def _common_prefix_length(prompts: list[list[int]], limit: int) -> int:
    first = prompts[0]
    n = min(limit, *(len(p) for p in prompts))
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return n


def _cut(ids: list[int], stop_ids: list[int], tokenizer: Any, stop: list[str]) -> tuple[int, str]:
    """Length of the real completion (through its stop token or string) and why it ended."""
    stops = set(stop_ids)
    for i, t in enumerate(ids):
        if t in stops:
            return i + 1, "stop"
    if stop:
        # generate() stops *after* the token that completes a stop string; find the first such token.
        text = ""
        for i, t in enumerate(ids):
            text += tokenizer.decode([t])
            if any(s in text for s in stop):
                return i + 1, "stop"
    return len(ids), "length"
