"""Loading the model that trains: a base model with a LoRA adapter, on CPU or CUDA, 16-bit or 4-bit.

This is the one seam between the trainer and the model stack. :func:`agentrl.models.load_base` loads the frozen base
through the loader :func:`agentrl.quantize.choose_loader` picks (Unsloth, bitsandbytes NF4 or
plain transformers), and :func:`load_lora_model` puts a PEFT LoRA on it. Whatever the loader, the
result is a ``peft.PeftModel``: the trainer saves plain PEFT adapters, the KL reference is the same
model under ``disable_adapter()``, and a LoRA is never merged into a 4-bit base.
"""

from __future__ import annotations

from typing import Any

import torch

from agentrl import quantize
from agentrl.errors import UserError
from agentrl.models import BaseInfo, default_device, load_base, load_tokenizer, resolve_dtype

__all__ = ["BaseInfo", "load_base", "load_lora_model", "lora_config", "resolve_dtype", "trainable_parameters"]


def lora_config(
    model: Any,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    last_n_layers: int = 0,
    target_parameters: list[str] | None = None,
) -> Any:
    from peft import LoraConfig

    layers = None
    if last_n_layers:
        n = int(model.config.num_hidden_layers)
        layers = list(range(max(n - last_n_layers, 0), n))
    extra: dict[str, Any] = {}
    if target_parameters:
        extra["target_parameters"] = _expert_targets(model, target_parameters, layers)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )


def _expert_targets(model: Any, patterns: list[str], layers: list[int] | None) -> list[str]:
    """Full names of the fused expert parameters that ``lora.target_parameters`` names.

    PEFT cannot put its parameter LoRA on top of bitsandbytes' 4-bit parametrization (both wrap the
    same tensor with ``torch.nn.utils.parametrize``, and PEFT 0.21 then fails in backward), so an
    expert LoRA needs those experts kept in 16-bit; we say so instead of failing deep in PEFT.
    """
    names = []
    for full, _, _ in quantize.fused_expert_parameters(model):
        if not quantize.matches(full, patterns):
            continue
        if layers is not None and not any(f".layers.{i}." in f".{full}" for i in layers):
            continue
        names.append(full)
    parametrized = [
        f"{name}.{p}" for name, m in model.named_modules() for p in getattr(m, "parametrizations", {}) if m is not None
    ]
    clash = [p for p in parametrized if quantize.matches(p, patterns)]
    if clash:
        raise UserError(
            f"lora.target_parameters {clash[0]!r} is stored in 4-bit; PEFT's expert LoRA needs 16-bit experts: add "
            "mlp.experts to model.keep_high_precision, or target attention only"
        )
    if not names:
        raise UserError(f"lora.target_parameters {patterns} match no fused expert parameter of this model")
    return names


def load_lora_model(
    name: str,
    *,
    lora: dict[str, Any],
    device: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool | None = None,
    keep_high_precision: list[str] | None = None,
    gradient_checkpointing: bool = False,
    adapter: str | None = None,
    loader: str = "auto",
    seed: int | None = None,
) -> tuple[Any, Any, BaseInfo]:
    """``(peft_model, tokenizer, base_info)``. ``lora`` holds :func:`lora_config`'s keyword arguments.

    ``adapter`` resumes from a saved PEFT adapter directory instead of a fresh LoRA. ``loader`` is the
    recipe's ``model.loader`` (see :func:`agentrl.quantize.choose_loader`). ``seed`` is the run's: Unsloth
    reseeds every generator when it adds the LoRA (with 3407 unless told), so it is handed the run's own.
    """
    from peft import PeftModel, get_peft_model

    device = device or default_device()
    base, info = load_base(
        name,
        device=device,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        keep_high_precision=keep_high_precision,
        loader=loader,
    )
    if info.choice.loader == "unsloth" and not adapter:
        seed = torch.initial_seed() if seed is None else seed
        return _unsloth_lora(base, lora, gradient_checkpointing, seed), load_tokenizer(name), info
    if info.choice.load_in_4bit:
        quantize.freeze_base(base, gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    if adapter:
        model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(base, **lora))
    return model, load_tokenizer(name), info


def _unsloth_lora(base: Any, lora: dict[str, Any], checkpointing: bool, seed: int) -> Any:
    """The LoRA through Unsloth's ``get_peft_model``, whose kernels and checkpointing need its own wrapper.

    The result is a ``peft.PeftModel`` like any other: it saves plain PEFT adapters and has ``disable_adapter()``.
    """
    from unsloth import FastLanguageModel

    if lora.get("target_parameters"):
        raise UserError(
            "lora.target_parameters (LoRA on fused MoE experts) needs PEFT's own LoRA: set model.loader=bitsandbytes"
        )
    layers = None
    if lora.get("last_n_layers"):
        n = int(base.config.num_hidden_layers)
        layers = list(range(max(n - lora["last_n_layers"], 0), n))
    return FastLanguageModel.get_peft_model(
        base,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        layers_to_transform=layers,
        bias="none",
        # Unsloth's own checkpointing offloads saved activations to CPU memory asynchronously.
        use_gradient_checkpointing="unsloth" if checkpointing else False,
        random_state=seed,
    )


def trainable_parameters(model: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
