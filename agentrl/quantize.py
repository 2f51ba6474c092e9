"""4-bit bases: which loader runs, which weights go to 4-bit, and what a quantized model holds.

The trainer's base model is frozen, so it may be stored in 4-bit NF4 while the LoRA adapter trains in
full precision on top. Three loaders exist, chosen by :func:`choose_loader` (or named by the recipe's
``model.loader``) and logged with a reason:

- ``unsloth`` (CUDA, ``model.load_in_4bit``, Unsloth imports): its 4-bit loader, fused kernels and
  gradient checkpointing. Asked for by name it also runs on a CPU, through Unsloth's CPU fallback (the
  plain transformers model; bitsandbytes for 4-bit), which is how CI tests this path.
- ``bitsandbytes`` (CUDA without Unsloth, any CPU, and every MoE model): transformers'
  ``BitsAndBytesConfig`` NF4 with double quantization. bitsandbytes >= 0.49 runs NF4 on the CPU,
  so this path is the same code on a laptop, in CI and on a GPU.
- ``transformers``: a 16-bit (or fp32) base, no quantization.

Selective quantization. transformers 5 stores an MoE block's experts as fused 3-D parameters
(``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``), not ``nn.Linear``s, and
``BitsAndBytesConfig`` only replaces ``nn.Linear``: out of the box it would quantize attention and
leave the experts, almost all of the weights, in 16-bit. We want the opposite: experts are many,
each sees few tokens and tolerates 4-bit well; attention, the router and shared experts see every
token. So the ``keep`` patterns (``model.keep_high_precision``) name what stays 16-bit, every other
``nn.Linear`` goes to bitsandbytes' ``Linear4bit``, and every other fused 3-D expert parameter is
quantized in place with ``bitsandbytes.nn.parametrize.replace_parameter_4bit``.

A pattern matches a name when it equals a run of whole dotted components of it: ``self_attn``
matches ``model.layers.3.self_attn.q_proj`` but not ``model.layers.3.self_attn_norm``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.errors import UserError

DENSE_KEEP = ["lm_head"]
"""Dense models: every linear layer but the output head goes to 4-bit (bitsandbytes' own default)."""

MOE_KEEP = ["self_attn", "mlp.gate", "shared_expert", "shared_expert_gate", "embed_tokens", "norm", "lm_head"]
"""MoE models: attention, the router, shared experts, embeddings, norms and the head stay 16-bit;
the routed experts (the bulk of the weights) go to 4-bit."""

MIN_BNB_CPU = (0, 49)
"""bitsandbytes runs 4-bit NF4 on the CPU from 0.49 on."""


@dataclass
class LoaderChoice:
    loader: str
    """unsloth, bitsandbytes or transformers."""
    load_in_4bit: bool
    """Whether the base is stored in 4-bit."""
    reason: str
    """One line for the log: why this loader."""


def is_moe(config: Any) -> bool:
    """Whether a transformers config describes a mixture-of-experts model."""
    return bool(getattr(config, "num_experts", 0) or getattr(config, "num_local_experts", 0))


def default_keep(config: Any) -> list[str]:
    return list(MOE_KEEP if is_moe(config) else DENSE_KEEP)


LOADERS = ("auto", "unsloth", "bitsandbytes", "transformers")
"""Values of ``model.loader``: who loads the frozen base."""


def choose_loader(device: str, load_in_4bit: bool | None, *, moe: bool = False, loader: str = "auto") -> LoaderChoice:
    """The loader for ``device``, the recipe's ``model.load_in_4bit`` (None: yes on CUDA, no on CPU) and its
    ``model.loader`` (``auto`` picks; any other value is the user's choice, checked here, never overridden)."""
    if loader not in LOADERS:
        raise UserError(f"model.loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    if loader != "auto":
        return _forced(loader, device, load_in_4bit)
    if load_in_4bit is None:
        if device != "cuda":
            why = "model.load_in_4bit unset: full precision on CPU (true gives a bitsandbytes NF4 base)"
            return LoaderChoice("transformers", False, why)
        load_in_4bit, why = True, "model.load_in_4bit unset: 4-bit on CUDA"
    elif not load_in_4bit:
        return LoaderChoice("transformers", False, "model.load_in_4bit=false: full-precision base")
    else:
        why = "model.load_in_4bit=true"
    bnb = bitsandbytes_version()
    if device == "cuda" and not moe:
        problem = unsloth_problem()
        if problem is None:
            return LoaderChoice("unsloth", True, f"{why}; Unsloth imports: its 4-bit loader, kernels and checkpointing")
        if bnb is None:
            raise UserError(f"model.load_in_4bit on CUDA needs Unsloth or bitsandbytes ({problem}): {_INSTALL_GPU}")
        return LoaderChoice("bitsandbytes", True, f"{why}; bitsandbytes NF4 because {problem}")
    _check_bitsandbytes(device, "model.load_in_4bit=true")
    where = "MoE selective quantization" if moe else "Unsloth is CUDA-only" if device != "cuda" else "MoE"
    return LoaderChoice("bitsandbytes", True, f"{why}; bitsandbytes NF4 ({where})")


def _forced(loader: str, device: str, load_in_4bit: bool | None) -> LoaderChoice:
    """``model.loader`` set by the user: the loader runs as asked, or the recipe is refused in one line."""
    if loader == "transformers":
        if load_in_4bit:
            raise UserError(
                "model.loader=transformers loads a full-precision base; for model.load_in_4bit=true use loader "
                "bitsandbytes, unsloth or auto"
            )
        return LoaderChoice("transformers", False, "model.loader=transformers: full-precision base")
    if loader == "bitsandbytes":
        if load_in_4bit is False:
            raise UserError(
                "model.loader=bitsandbytes loads a 4-bit NF4 base; for model.load_in_4bit=false use loader "
                "transformers, unsloth or auto"
            )
        _check_bitsandbytes(device, "model.loader=bitsandbytes")
        return LoaderChoice("bitsandbytes", True, "model.loader=bitsandbytes: NF4 base")
    problem = unsloth_problem()
    if problem is not None:
        if device != "cuda" and importlib.util.find_spec("unsloth") is None:  # the gpu extra would bring CUDA torch
            problem = f"Unsloth is not installed (on a CPU: pip install --no-deps {_UNSLOTH_CPU})"
        raise UserError(f"model.loader=unsloth, but {problem[0].lower()}{problem[1:]}")
    four = load_in_4bit if load_in_4bit is not None else device == "cuda"
    if four:
        _check_bitsandbytes(device, "model.loader=unsloth with a 4-bit base")
    # On a CPU, Unsloth runs its fallback: the plain transformers model, bitsandbytes for 4-bit, no kernels.
    where = "" if device == "cuda" else " (Unsloth's CPU fallback)"
    return LoaderChoice(
        "unsloth", four, f"model.loader=unsloth{where}: {'4-bit NF4' if four else 'full-precision'} base"
    )


def _check_bitsandbytes(device: str, what: str) -> None:
    bnb = bitsandbytes_version()
    if bnb is None:
        raise UserError(f"{what} needs bitsandbytes, which is not installed: {_install(device)}")
    if device != "cuda" and bnb < MIN_BNB_CPU:
        have = ".".join(map(str, bnb))
        raise UserError(f"4-bit on CPU needs bitsandbytes>=0.49 (installed: {have}): {_install(device)}")


_INSTALL_GPU = "pip install 'agentrl[gpu]'"
_UNSLOTH_CPU = "'unsloth>=2026.10,<2026.11' 'unsloth_zoo>=2026.10,<2026.11'"
"""Unsloth without its CUDA requirements (xformers, torchvision), for its CPU fallback."""


def _install(device: str) -> str:
    return _INSTALL_GPU if device == "cuda" else "pip install 'agentrl[4bit]'"


def bitsandbytes_version() -> tuple[int, int] | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    from importlib.metadata import version

    major, minor = version("bitsandbytes").split(".")[:2]
    return int(major), int(re.match(r"\d+", minor).group())  # type: ignore[union-attr]


def unsloth_problem() -> str | None:
    """None when Unsloth imports here, else why it does not (it needs a GPU and patches torch on import)."""
    if importlib.util.find_spec("unsloth") is None:
        return f"Unsloth is not installed ({_INSTALL_GPU})"
    try:
        import unsloth  # noqa: F401
    except Exception as exc:  # Unsloth raises NotImplementedError, ImportError or RuntimeError on a bad setup
        return f"Unsloth failed to import: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def import_unsloth_first(loader: str, load_in_4bit: bool | None) -> None:
    """Import Unsloth now when it is going to load the base, before anything imports transformers.

    Unsloth patches transformers, PEFT and TRL when it is imported, and warns that optimizations are missing
    when they were imported before it. The command line calls this right after reading its settings; an
    import that fails is reported in one line when the loader is chosen.
    """
    # auto picks Unsloth for a 4-bit base on CUDA only
    auto = loader == "auto" and load_in_4bit is not False and importlib.util.find_spec("unsloth") is not None
    if loader == "unsloth" or (auto and torch.cuda.is_available()):
        unsloth_problem()


# ----- selective quantization -------------------------------------------------------------------
def matches(name: str, patterns: list[str]) -> bool:
    """Whether a pattern equals a run of whole dotted components of ``name``."""
    return any(re.search(rf"(^|\.){re.escape(p)}(\.|$)", name) for p in patterns)


def skip_regexes(patterns: list[str]) -> list[str]:
    """``patterns`` as the regexes transformers' ``llm_int8_skip_modules`` matches module names with.

    transformers anchors each key at the start of the module's full name (``re.match``), so a bare
    ``self_attn`` would never match ``model.layers.0.self_attn.q_proj``.
    """
    return [rf"(?:.*\.)?{re.escape(p)}(?:\..*)?$" for p in patterns]


def bnb_config(compute_dtype: torch.dtype, keep: list[str]) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=skip_regexes(keep),
    )


def fused_expert_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """``(full_name, module, param_name)`` for each fused expert weight: a 3-D floating parameter."""
    out = []
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if param.ndim == 3 and param.is_floating_point():
                out.append((f"{module_name}.{param_name}" if module_name else param_name, module, param_name))
    return out


def quantize_fused_experts(model: torch.nn.Module, keep: list[str]) -> list[str]:
    """Quantize every fused 3-D expert parameter not matched by ``keep`` to NF4 in place; their names."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    done = []
    for full, module, param_name in fused_expert_parameters(model):
        if matches(full, keep):
            continue
        # Statistics are double-quantized, as BitsAndBytesConfig(bnb_4bit_use_double_quant=True) does for linears.
        replace_parameter_4bit(module, param_name, compress_statistics=True, quant_type="nf4")
        done.append(full)
    return done


def keep_training_kernels(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking CPU weights for its inference kernel; the number of layers.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight the first time it runs in
    eval mode without gradients (our rollouts) and from then on uses a kernel that has no backward,
    in training mode too. Gradients through the base's input then vanish without an error (torch only
    warns "an autograd kernel was not registered"), so LoRA weights below that layer get wrong
    gradients. The plain dequantize-and-matmul path is exact in both modes.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def freeze_base(model: torch.nn.Module, *, gradient_checkpointing: bool) -> None:
    """Make a quantized base ready for LoRA training, without casting its 16-bit weights to fp32.

    PEFT's ``prepare_model_for_kbit_training`` upcasts every non-4-bit parameter to fp32, which
    doubles the memory of the parts we deliberately keep in 16-bit (embeddings, attention of an
    MoE). The base is frozen, so its dtype never meets an optimizer; the LoRA weights PEFT adds
    are fp32 by default, and the loss is computed in fp32 by the trainer.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()


# ----- what a model holds -----------------------------------------------------------------------
def is_4bit(param: torch.Tensor) -> bool:
    return type(param).__name__ == "Params4bit" or (param.dtype == torch.uint8 and param.ndim == 2)


def four_bit_names(model: torch.nn.Module) -> list[str]:
    """Names of the weights stored in 4-bit: ``Linear4bit`` weights and parametrized expert tensors.

    A parametrized weight is reported under its logical name (``...experts.gate_up_proj``), not under
    ``parametrizations.gate_up_proj.original``.
    """
    out = []
    for name, p in model.named_parameters():
        if not is_4bit(p):
            continue
        out.append(name.replace(".parametrizations.", ".").removesuffix(".original"))
    return out


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, quantization statistics of 4-bit weights included."""
    total = 0
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        total += _quant_state_bytes(_quant_state(model, t))
    return total


def base_digest(model: torch.nn.Module) -> str:
    """A hash of every non-LoRA weight (4-bit data and quantization statistics included).

    Equal before and after training means the base was never touched: the adapter was not merged
    into it, and no optimizer reached it.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        if t.is_floating_point() or t.dtype == torch.uint8:
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


def _quant_state(model: torch.nn.Module, t: torch.Tensor) -> Any:
    state = getattr(t, "quant_state", None)
    if state is not None:
        return state
    if t.dtype != torch.uint8:
        return None
    for module in model.modules():  # parametrized expert weights keep their state on the parametrization
        for plist in getattr(module, "parametrizations", {}).values():
            if plist.original is t:
                return getattr(plist[0], "quant_state", None)
    return None


def _quant_state_bytes(state: Any) -> int:
    if state is None:
        return 0
    total = 0
    for attr in ("absmax", "code"):
        t = getattr(state, attr, None)
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)
