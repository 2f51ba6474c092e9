"""The transformers generation backend: ``model.generate`` on CPU or CUDA, batched, prefix-shared.

It returns exactly what :class:`~agentrl.rollout.generation.GenerationBackend` promises: the sampled
ids, the logprob of each under the distribution it was drawn from, and why the turn ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from agentrl.models import set_training
from agentrl.rollout.generation import Completion, SamplingParams, prompt_seed
from agentrl.rollout.prefix import common_prefix_length, note_once, shareable_cache


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

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 64,
        share_prefix: bool = True,
        drop_finished: bool = True,
    ):
        """``drop_finished``: on a CPU, decode step by step and let finished rows leave the batch
        (:meth:`_decode`); False keeps transformers' ``generate()`` there too (as on a GPU)."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        self.drop_finished = drop_finished
        self._prefix_unshareable: str | None = None
        """Why this model's KV cache cannot be shared across rows (see :func:`shareable_cache`), once found."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)

    def use_adapter(self, on: bool) -> AbstractContextManager:
        """Sample with the model's LoRA adapter (``on``) or with the base model underneath it."""
        has_adapter = hasattr(self.model, "disable_adapter")
        if on and not has_adapter:
            raise ValueError("this model has no adapter to sample with")
        return nullcontext() if on or not has_adapter else self.model.disable_adapter()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch

        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the trainer's mode is restored afterwards
        # A seeded call must not reseed the caller's global RNG: fork it, and the caller's stream is untouched.
        rng = torch.random.fork_rng(devices=_devices(self.model)) if params.seed is not None else nullcontext()
        try:
            with rng:
                if params.seed is not None:
                    torch.manual_seed(prompt_seed(params.seed, 0))  # the whole call samples from one generator
                out: list[Completion | None] = [None] * len(prompts)
                for rows in self._batches(prompts):
                    for row, comp in zip(rows, self._generate_batch([prompts[i] for i in rows], params), strict=True):
                        out[row] = comp
        finally:
            set_training(self.model, was_training)
        return out  # type: ignore[return-value]

    def _batches(self, prompts: list[list[int]]) -> list[list[int]]:
        """Rows of ``prompts`` to run together, at most ``max_batch_size`` each.

        On a GPU, in the given order. On a CPU every padded position costs as much as a real token, and
        a later turn's prompts differ a lot in length (one long tool result pads the whole batch to it),
        so rows are grouped by length: a batch ends where padding would exceed a third of its own tokens.
        """
        order = list(range(len(prompts)))
        if next(self.model.parameters()).device.type != "cpu":
            return [order[i : i + self.max_batch_size] for i in range(0, len(order), self.max_batch_size)]
        shared = common_prefix_length(prompts)
        order.sort(key=lambda i: len(prompts[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        tokens = 0  # own (unshared) tokens in the current batch
        for i in order:
            own = len(prompts[i]) - shared
            padded = (len(current) + 1) * own  # rows are in increasing length: this one sets the width
            if current and (len(current) == self.max_batch_size or padded > 1.33 * (tokens + own) + 64):
                batches.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += own
        if current:
            batches.append(current)
        return batches

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch

        device = next(self.model.parameters()).device
        # Keep at least one token of every prompt outside the shared prefix: generate() needs input.
        share = self.share_prefix and self._prefix_unshareable is None
        shared = common_prefix_length(prompts, min(len(p) for p in prompts) - 1) if share else 0
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
        with torch.no_grad(), _grouped_query_attention_with_masks(device):
            cache, capacity = None, width + params.max_new_tokens
            if shared:
                cache = self._prefix_cache(input_ids[:1, :shared].to(device), len(prompts), capacity)
                if cache is None:  # this model's cache cannot be shared: every row runs whole, now and from now on
                    return self._generate_batch(prompts, params)
            if device.type == "cpu" and self.drop_finished:
                return self._decode(input_ids.to(device), attention.to(device), shared, cache, params, stop_ids)
            if cache is not None:
                kwargs["past_key_values"] = cache
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

    def _decode(
        self, input_ids: Any, attention: Any, shared: int, cache: Any, params: SamplingParams, stop_ids: list[int]
    ) -> list[Completion]:
        """Decode token by token, dropping rows from the batch as they finish (on a CPU).

        ``generate()`` keeps every row in the batch until the longest one stops. On a CPU the cost of
        a step grows with the rows in it (each row reads its whole KV cache), so a batch where most
        turns are short and one runs to ``max_new_tokens`` pays for 64 long rows. Here finished rows
        leave the batch (the cache is compacted once at least an eighth of it is done). Each step
        samples exactly as ``generate()`` does: the same warpers, in the same order, on float32
        logits, and the logprob is taken under the warped distribution the token was drawn from.

        The loop follows whatever cache the model hands back (:meth:`_follow`): a transformers ``Cache`` it
        extends in place, a legacy tuple it returns anew each step, or none at all, in which case every step
        runs the whole sequence again. The tokens and logprobs are the same in all three.
        """
        import torch

        n, width = input_ids.shape
        greedy = params.temperature <= 0
        warpers = None if greedy else _warpers(params)
        stops = set(stop_ids)
        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lps: list[list[float]] = [[] for _ in range(n)]
        reasons = ["length"] * n
        rows = list(range(n))  # the original row of each row still in the batch
        done = [False] * n  # rows that finished but are not yet dropped
        mask = attention
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)  # as generate() sets them
        full_ids, full_pos = input_ids, positions  # every token so far: what a model without a cache is given
        step_ids, step_pos = input_ids[:, shared:], positions[:, shared:]
        capacity = width + params.max_new_tokens
        for _ in range(params.max_new_tokens):
            out = self.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = self._follow(cache, out.past_key_values, capacity)
            scores = out.logits[:, -1, :].float()
            if warpers is not None:
                scores = warpers(None, scores)
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                token = scores.argmax(dim=-1)
            logprob = torch.log_softmax(scores, dim=-1).gather(-1, token[:, None]).squeeze(1)
            for i, (row, t, lp) in enumerate(zip(rows, token.tolist(), logprob.tolist(), strict=True)):
                if done[i]:
                    continue
                out_ids[row].append(t)
                out_lps[row].append(lp)
                if t in stops or (params.stop and _ends_with_stop(out_ids[row], self.tokenizer, params.stop)):
                    done[i], reasons[row] = True, "stop"
            if all(done):
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            full_ids = torch.cat([full_ids, token[:, None]], dim=1)
            full_pos = torch.cat([full_pos, full_pos[:, -1:] + 1], dim=1)
            step_ids, step_pos = (token[:, None], full_pos[:, -1:]) if cache is not None else (full_ids, full_pos)
            if sum(done) * 8 >= len(rows):  # compact: later steps only pay for live rows
                live = [i for i, d in enumerate(done) if not d]
                rows, done = [rows[i] for i in live], [False] * len(live)
                keep = torch.tensor(live, device=mask.device)
                if cache is not None:
                    cache.batch_select_indices(keep)
                mask, step_ids, step_pos = mask[keep], step_ids[keep], step_pos[keep]
                full_ids, full_pos = full_ids[keep], full_pos[keep]
        return [Completion(ids, lps, why) for ids, lps, why in zip(out_ids, out_lps, reasons, strict=True)]

    def _follow(self, passed: Any, returned: Any, capacity: int) -> Any:
        """The cache the next decoding step hands the model, given the one it was handed and what it returned.

        A model that extends the ``Cache`` it was given returns that same object; the first step's new cache is
        preallocated. A model that returns a new legacy tuple each step (Unsloth's forwards) is followed: its
        tuple becomes the next step's cache. A model that returns none gets the whole sequence every step.
        """
        from transformers import DynamicCache

        cache, why = shareable_cache(returned)
        if cache is not None:
            return cache if cache is passed else _preallocate(cache, capacity)
        if returned is None:
            note_once(f"the hf backend recomputes the whole sequence at each decoding step: {why}")
            return None
        note_once(f"the hf backend follows the cache the model returns at each step: {why}")
        return DynamicCache(returned)

    def _prefix_cache(self, prefix_ids: Any, batch: int, capacity: int) -> Any:
        """The shared opening's KV cache, repeated for ``batch`` rows; None when the model's cache form rules
        sharing out (then noted once, and the backend stops trying)."""
        out = self.model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
        cache, why = shareable_cache(out.past_key_values)
        if cache is None:
            self._prefix_unshareable = why
            note_once(f"the hf backend runs each prompt whole instead of sharing their common opening: {why}")
            return None
        cache.batch_repeat_interleave(batch)
        return _preallocate(cache, capacity)


@contextmanager
def _grouped_query_attention_with_masks(device: Any) -> Iterator[None]:
    """Let SDPA attend grouped KV heads directly when there is a padding mask, on a CPU.

    transformers hands SDPA ``enable_gqa`` only when there is no attention mask; with one (every
    left-padded batch) it first copies each layer's whole KV cache once per query head group, at every
    decoding step. torch's CPU kernels take the mask and grouped heads together and give the same
    result (checked in the tests), so on a CPU the copy is skipped while this backend generates.
    """
    if getattr(device, "type", device) != "cpu":
        yield
        return
    from transformers.integrations import sdpa_attention

    original = sdpa_attention.use_gqa_in_sdpa
    sdpa_attention.use_gqa_in_sdpa = lambda attention_mask, key, value: key.shape[-1] == value.shape[-1] <= 256
    try:
        yield
    finally:
        sdpa_attention.use_gqa_in_sdpa = original


def _preallocate(cache: Any, capacity: int) -> Any:
    """``cache`` with its growing layers replaced by preallocated ones of ``capacity`` positions.

    The default layers grow by concatenation, which copies every layer's whole cache at every
    decoding step: on a CPU that costs more than the step's matrix products.
    """
    for i, layer in enumerate(cache.layers):
        if type(layer).__name__ == "DynamicLayer":
            cache.layers[i] = _preallocated(layer, capacity)
    return cache


def _warpers(params: SamplingParams) -> Any:
    """The logits warpers ``generate()`` applies for these settings, in its order."""
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        warpers.append(MinPLogitsWarper(params.min_p))
    return warpers


def _ends_with_stop(ids: list[int], tokenizer: Any, stop: list[str]) -> bool:
    """Whether the text of ``ids`` now ends a stop string (the last few tokens decoded together, as in :func:`_cut`)."""
    window = max(len(s) for s in stop) + 4
    return any(s in tokenizer.decode(ids[-window:]) for s in stop)


def _preallocated(layer: Any, capacity: int) -> Any:
    """A copy of a transformers ``DynamicLayer`` that appends in place into a buffer of ``capacity`` positions.

    ``keys``/``values`` stay views of the filled part, so everything that reads the layer (masks,
    lengths, attention) sees exactly what the growing layer would hold.
    """
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n, new = self.keys.shape[-2], key_states.shape[-2]
            if n + new > self._k.shape[-2]:  # past the planned length: grow (rare; max_new_tokens bounds it)
                self._k, self._v = _grow(self._k, n + new), _grow(self._v, n + new)
            self._k[:, :, n : n + new] = key_states
            self._v[:, :, n : n + new] = value_states
            self.keys, self.values = self._k[:, :, : n + new], self._v[:, :, : n + new]
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            n = self.keys.shape[-2]
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    out = PreallocatedLayer()
    out.dtype, out.device, out.is_initialized = layer.dtype, layer.device, True
    n = layer.keys.shape[-2]
    out._k, out._v = _grow(layer.keys, max(capacity, n)), _grow(layer.values, max(capacity, n))
    out.keys, out.values = out._k[:, :, :n], out._v[:, :, :n]
    return out


def _grow(t: Any, capacity: int) -> Any:
    import torch

    buf = torch.empty((*t.shape[:2], capacity, t.shape[-1]), dtype=t.dtype, device=t.device)
    buf[:, :, : t.shape[-2]] = t
    return buf


def _devices(model: Any) -> list[int]:
    """The CUDA devices the model lives on, whose RNG a seeded call forks too."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _cut(ids: list[int], stop_ids: list[int], tokenizer: Any, stop: list[str]) -> tuple[int, str]:
    """Length of the real completion (through its first stop token or stop string) and why it ended.

    generate() stops *after* the token that completes a stop string, and pads the rows that finished
    early. The last few tokens are decoded together (a token decoded alone can lose a leading space or
    half a multi-byte character), and whichever stop comes first cuts the completion.
    """
    stops = set(stop_ids)
    # A stop string of n characters spans at most n tokens; a few more absorb a split character.
    window = max((len(s) for s in stop), default=0) + 4
    for i, t in enumerate(ids):
        if t in stops:
            return i + 1, "stop"
        if stop and any(s in tokenizer.decode(ids[max(0, i + 1 - window) : i + 1]) for s in stop):
            return i + 1, "stop"
    return len(ids), "length"
