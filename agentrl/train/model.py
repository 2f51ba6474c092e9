"""Loading the model that trains: a base model with a LoRA adapter, on CPU or CUDA.

This is the one seam between the trainer and the model stack:

- CPU: the base in full precision, a PEFT LoRA on top.
- CUDA with ``load_in_4bit``: Unsloth's ``FastLanguageModel`` (4-bit base, its kernels and
  gradient checkpointing) when Unsloth imports, else transformers + bitsandbytes NF4 + PEFT.

Either way the result is a ``peft.PeftModel``: the trainer saves plain PEFT adapters, the reference
model is the same model under ``disable_adapter()``, and a LoRA is never merged into a 4-bit base.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from agentrl.errors import UserError
from agentrl.models import default_device, load_tokenizer, model_path


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def lora_config(
    model: Any, *, r: int, alpha: int, dropout: float, target_modules: list[str], last_n_layers: int = 0
) -> Any:
    from peft import LoraConfig

    layers = None
    if last_n_layers:
        n = int(model.config.num_hidden_layers)
        layers = list(range(max(n - last_n_layers, 0), n))
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_lora_model(
    name: str,
    *,
    lora: dict[str, Any],
    device: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool | None = None,
    gradient_checkpointing: bool = False,
    adapter: str | None = None,
) -> tuple[Any, Any]:
    """``(peft_model, tokenizer)``. ``lora`` holds :func:`lora_config`'s keyword arguments.

    ``adapter`` resumes from a saved PEFT adapter directory instead of a fresh LoRA.
    """
    device = device or default_device()
    if load_in_4bit is None:
        load_in_4bit = device == "cuda"
    if load_in_4bit and device != "cuda":
        raise UserError("model.load_in_4bit needs a CUDA device; set model.load_in_4bit=false on CPU")
    torch_dtype = resolve_dtype(dtype, device)
    if load_in_4bit and importlib.util.find_spec("unsloth") is not None:
        return _load_unsloth(name, lora, torch_dtype, gradient_checkpointing, adapter)

    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0}
    try:
        base = AutoModelForCausalLM.from_pretrained(model_path(name), **kwargs)
    except OSError as exc:  # no such directory, and no hub to fetch it from
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    if not load_in_4bit:
        base.to(device)
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    if adapter:
        model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(base, **lora))
    return model, load_tokenizer(name)


def _load_unsloth(name: str, lora: dict[str, Any], dtype: torch.dtype, checkpointing: bool, adapter: str | None):
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path(adapter or name), dtype=dtype, load_in_4bit=True, max_seq_length=None
    )
    if adapter:
        return model, tokenizer
    layers = None
    if lora.get("last_n_layers"):
        n = int(model.config.num_hidden_layers)
        layers = list(range(max(n - lora["last_n_layers"], 0), n))
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        layers_to_transform=layers,
        use_gradient_checkpointing="unsloth" if checkpointing else False,
    )
    return model, tokenizer


def trainable_parameters(model: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
