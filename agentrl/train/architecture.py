"""Model architecture numbers: the configs the memory estimate reads, and what they add up to.

:func:`model_config` reads a model's ``config.json`` (an alias's or a local directory's own, else a
built-in table of the Qwen3 family for hub ids that are not on disk). :func:`parameter_counts` and
:func:`lora_parameters` count parameters by kind; :func:`quantized_kinds` says which kinds a 4-bit
base stores in NF4, by the same ``model.keep_high_precision`` rules the loader applies.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl import quantize
from agentrl.errors import UserError
from agentrl.models import ALIASES, model_path
from agentrl.train.recipe import Recipe

_QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "vocab_size": 151936,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "attention_bias": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "sliding_window": None,
}


def _qwen3(hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool, **extra: Any) -> dict[str, Any]:
    return {
        **_QWEN3,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_window_layers": layers,
        "tie_word_embeddings": tied,
        **extra,
    }


_QWEN3_MOE = {
    **{"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 128},
    **{"num_experts_per_tok": 8, "moe_intermediate_size": 768, "decoder_sparse_step": 1, "mlp_only_layers": []},
    **{"norm_topk_prob": True, "router_aux_loss_coef": 0.001, "output_router_logits": False},
}

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-0.6B": _qwen3(1024, 3072, 28, 16, 8, tied=True),
    "Qwen/Qwen3-1.7B": _qwen3(2048, 6144, 28, 16, 8, tied=True),
    "Qwen/Qwen3-4B": _qwen3(2560, 9728, 36, 32, 8, tied=True),
    "Qwen/Qwen3-8B": _qwen3(4096, 12288, 36, 32, 8, tied=False),
    "Qwen/Qwen3-14B": _qwen3(5120, 17408, 40, 40, 8, tied=False),
    "Qwen/Qwen3-30B-A3B": _qwen3(2048, 6144, 48, 32, 4, tied=False, **_QWEN3_MOE),
}
"""The published ``config.json`` numbers of the Qwen3 models, for hub ids that are not on disk
(``Qwen3Config(**cfg)`` / ``Qwen3MoeConfig(**cfg)`` builds a random-weight model of the same shape)."""


def model_config(name: str) -> dict[str, Any]:
    """The model's ``config.json``: an alias's or a directory's own, else the built-in table, else the hub
    (its local cache when offline). An unknown name raises :class:`~agentrl.errors.UserError`."""
    if name in ALIASES or Path(name).is_dir():
        path = Path(model_path(name)) / "config.json"
        if not path.is_file():
            raise UserError(f"no config.json in {path.parent}: cannot estimate the memory of {name!r}")
        return json.loads(path.read_text())
    for known, cfg in KNOWN_CONFIGS.items():
        if name.lower() in (known.lower(), known.split("/")[1].lower()):
            return copy.deepcopy(cfg)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name).to_dict()
    except Exception:  # offline and not cached, no such repo, or not a repo id at all
        pass
    raise UserError(
        f"unknown model {name!r}: no local config.json, not in the hub cache, and not one of the built-in configs "
        f"({', '.join(KNOWN_CONFIGS)}); pass a local model directory or an alias ({', '.join(ALIASES)})"
    )


@dataclass(frozen=True)
class Architecture:
    """The numbers the estimate needs, with the defaults transformers applies when a config omits them."""

    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int
    experts_per_tok: int
    moe_inter: int
    shared_inter: int
    moe_layers: tuple[bool, ...]
    qk_norm: bool
    file_dtype_bytes: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def architecture(config: dict[str, Any]) -> Architecture:
    c = config.get("text_config", config)  # multimodal configs nest the language model's
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if not c.get(k)]
    if missing:
        raise UserError(f"cannot estimate the memory of this architecture: its config has no {missing[0]}")
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    layers = int(c["num_hidden_layers"])
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    step = int(c.get("decoder_sparse_step") or 1)
    dense_only = set(c.get("mlp_only_layers") or [])
    moe_layers = tuple(bool(experts) and i not in dense_only and (i + 1) % step == 0 for i in range(layers))
    dtype = str(c.get("torch_dtype") or c.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return Architecture(
        hidden=hidden,
        inter=int(c.get("intermediate_size") or 4 * hidden),
        layers=layers,
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        vocab=int(c["vocab_size"]),
        tied=bool(c.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        experts=experts,
        experts_per_tok=int(c.get("num_experts_per_tok") or 0),
        # Mixtral names its expert width intermediate_size; Qwen-MoE has a separate moe_intermediate_size.
        moe_inter=int(c.get("moe_intermediate_size") or c.get("intermediate_size") or 0) if experts else 0,
        shared_inter=int(c.get("shared_expert_intermediate_size") or 0),
        moe_layers=moe_layers,
        qk_norm=str(c.get("model_type", "")).startswith("qwen3"),  # Qwen3 normalises q and k per head
        file_dtype_bytes=4 if "32" in dtype else 2,
    )


def parameter_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameters by kind: embeddings, lm_head (0 when tied), attention, mlp (dense layers), shared_experts,
    experts (fused routed-expert weights), router and norms. Their sum is the model's size."""
    a = architecture(config)
    attention = a.hidden * a.q_dim * 2 + a.hidden * a.kv_dim * 2  # q and o; k and v
    n_moe = sum(a.moe_layers)
    norms = a.layers * (2 * a.hidden + (2 * a.head_dim if a.qk_norm else 0)) + a.hidden
    return {
        "embeddings": a.vocab * a.hidden,
        "lm_head": 0 if a.tied else a.vocab * a.hidden,
        "attention": a.layers * attention,
        "mlp": (a.layers - n_moe) * 3 * a.hidden * a.inter,
        "shared_experts": n_moe * (3 * a.hidden * a.shared_inter + (a.hidden if a.shared_inter else 0)),
        "experts": n_moe * a.experts * 3 * a.hidden * a.moe_inter,
        "router": n_moe * a.hidden * a.experts,
        "norms": norms,
    }


# A representative module name for each kind of parameter, to match model.keep_high_precision against
# the way agentrl.quantize does (a pattern is a run of whole dotted components of the name).
_KIND_NAMES = {
    "embeddings": "model.embed_tokens",
    "lm_head": "lm_head",
    "attention": "model.layers.0.self_attn.q_proj",
    "mlp": "model.layers.0.mlp.gate_proj",
    "shared_experts": "model.layers.0.mlp.shared_expert.gate_proj",
    "experts": "model.layers.0.mlp.experts.gate_up_proj",
    "router": "model.layers.0.mlp.gate",
    "norms": "model.layers.0.input_layernorm",
}
# bitsandbytes replaces nn.Linear and agentrl quantizes fused 3-D expert weights; embeddings and norms
# are neither, and transformers always leaves the output head (tied or not) unquantized.
_QUANTIZABLE = ("attention", "mlp", "shared_experts", "experts", "router")
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
"""Bits per 4-bit weight: the NF4 code, one absmax per 64-weight block double-quantized to 8 bits, and
one fp32 scale per 256 such blocks (about 4.127 bits, 0.516 bytes)."""


def quantized_kinds(arch: Architecture, keep: list[str] | None) -> set[str]:
    """The kinds of :func:`parameter_counts` a 4-bit base stores in NF4, given ``model.keep_high_precision``."""
    # None means the loader's defaults (agentrl.quantize): a dense model keeps its head in 16-bit, an MoE
    # model all but its routed experts, which are most of its weights.
    keep = (quantize.MOE_KEEP if arch.experts else quantize.DENSE_KEEP) if keep is None else keep
    return {k for k in _QUANTIZABLE if not quantize.matches(_KIND_NAMES[k], keep)}


# ----- LoRA ---------------------------------------------------------------------------------------
def _layer_linears(a: Architecture, moe: bool) -> dict[str, tuple[int, int]]:
    """``name -> (in, out)`` of one decoder layer's linear modules, by the names LoRA targets use."""
    out = {
        "q_proj": (a.hidden, a.q_dim),
        "k_proj": (a.hidden, a.kv_dim),
        "v_proj": (a.hidden, a.kv_dim),
        "o_proj": (a.q_dim, a.hidden),
    }
    if not moe:
        return out | {
            "gate_proj": (a.hidden, a.inter),
            "up_proj": (a.hidden, a.inter),
            "down_proj": (a.inter, a.hidden),
        }
    out["mlp.gate"] = (a.hidden, a.experts)  # the router
    if a.shared_inter:
        s = a.shared_inter
        out |= {"shared_expert.gate_proj": (a.hidden, s), "shared_expert.up_proj": (a.hidden, s)}
        out |= {"shared_expert.down_proj": (s, a.hidden), "shared_expert_gate": (a.hidden, 1)}
    return out


def lora_matrix_sizes(a: Architecture, recipe: Recipe) -> list[int]:
    """Elements of each LoRA matrix the recipe adds (A is r x in, B is out x r), for each targeted linear in each
    adapted layer; a fused expert parameter gets one adapter per expert."""
    lora = recipe.lora
    first = max(a.layers - lora.last_n_layers, 0) if lora.last_n_layers else 0
    targets = list(lora.target_modules)
    experts = list(getattr(lora, "target_parameters", None) or [])
    sizes: list[int] = []
    for i in range(first, a.layers):
        for name, (fan_in, fan_out) in _layer_linears(a, a.moe_layers[i]).items():
            # PEFT matches a target against the end of the module's name; all-linear takes every one.
            if "all-linear" in targets or any(name == t or name.endswith("." + t) for t in targets):
                sizes += [lora.r * fan_in, lora.r * fan_out]
        if a.moe_layers[i]:
            fused = {"experts.gate_up_proj": (a.hidden, 2 * a.moe_inter), "experts.down_proj": (a.moe_inter, a.hidden)}
            for name, (fan_in, fan_out) in fused.items():
                if any(("mlp." + name).endswith(t) or t.endswith(name) for t in experts):
                    sizes += [a.experts * lora.r * fan_in, a.experts * lora.r * fan_out]
    return sizes


def lora_parameters(config: dict[str, Any], recipe: Recipe) -> int:
    """Trainable LoRA parameters: r * (in + out) for each targeted linear in each adapted layer."""
    return sum(lora_matrix_sizes(architecture(config), recipe))
