"""Random-weight Qwen3 models and a fixed synthetic GRPO batch, for the device check.

A GPU machine for this check may have no network, so no real weights: each model is built from its
real configuration with random weights, saved as a plain transformers directory (bf16 safetensors, a
small word-level tokenizer and a chat template), and loaded back through the loaders a user's run takes.
Speed and memory depend on the shapes, not on the weights, so random weights measure what matters.

The tokenizer is built here with ``tokenizers`` rather than taken from the Qwen3 tokenizer package,
which the device may lack: nothing in the check decodes text, every input is already token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAD, EOS, UNK = 0, 1, 2
"""Special token ids of the synthetic tokenizer; sampled ids never use them."""

TOKENIZER_WORDS = 256
"""Entries of the synthetic tokenizer. Fewer than the model's vocabulary is fine: nothing is decoded."""

TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=1024,
    tie_word_embeddings=True,
    rope_theta=1_000_000.0,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
)
"""The dry run's model: the same architecture, small enough for a 2-core CPU."""

_CONFIG_KEYS = (*TINY_CONFIG, "hidden_act", "attention_bias")


def _published() -> dict[str, dict[str, Any]]:
    """Qwen3-0.6B, 1.7B and 4B as model kwargs, from the memory preflight's table of published configs."""
    from agentrl.train.memory import KNOWN_CONFIGS

    names = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B")
    return {n: {k: v for k, v in KNOWN_CONFIGS[f"Qwen/{n}"].items() if k in _CONFIG_KEYS} for n in names}


QWEN3_CONFIGS = _published()


def known_configs() -> tuple[dict[str, dict[str, Any]], str]:
    """``(name -> config kwargs, source)`` of the models the check builds."""
    return dict(QWEN3_CONFIGS), "agentrl.train.memory.KNOWN_CONFIGS"


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a dense Qwen3 from its configuration (tied embeddings counted once)."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * config["head_dim"] + 2 * h
    embed = config["vocab_size"] * h
    head = 0 if config.get("tie_word_embeddings", True) else embed
    return embed + n * per_layer + h + head


def kv_bytes_per_token(config: dict[str, Any], element_size: int) -> int:
    """Bytes of keys and values one token adds to the cache, over all layers."""
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * element_size


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer with pad/eos/unk and a chat template: what loaders and trainers insist on."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK} | {f"w{i}": i for i in range(3, TOKENIZER_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok.save_pretrained(path)


def build_model_dir(config: dict[str, Any], path: Path, *, device: str, seed: int = 0) -> dict[str, Any]:
    """Save a random-weight Qwen3 with ``config`` to ``path`` in bf16; what was written.

    The weights are drawn on ``device`` directly in bf16 (on a GPU, drawing 4B random numbers takes a
    moment; the disk write takes longer), then written to disk.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    cfg = Qwen3Config(**config, pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS, dtype="bfloat16")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.save_pretrained(path)
    write_tokenizer(path)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"path": str(path), "parameters": n, "bytes_on_disk": sum(f.stat().st_size for f in path.iterdir())}


@dataclass
class Batch:
    """Fixed GRPO rollouts: prompt and completion ids per sequence, one advantage per sequence."""

    prompts: list[list[int]]
    completions: list[list[int]]
    advantages: list[float]

    @property
    def tokens(self) -> int:
        return sum(len(p) + len(c) for p, c in zip(self.prompts, self.completions, strict=True))

    @property
    def completion_tokens(self) -> int:
        return sum(len(c) for c in self.completions)


def synthetic_batch(sequences: int, seq_len: int, prompt_len: int, vocab: int, seed: int = 0) -> Batch:
    """``sequences`` rows of exactly ``seq_len`` tokens, split at a random point around ``prompt_len``.

    Prompt lengths are uniform in [prompt_len / 2, 3 * prompt_len / 2], so padding and the layouts of
    the two trainers (right-padded whole rows here, left-padded prompts in TRL) are exercised.
    Advantages are standard normal, then z-scored as GRPO's group advantages are.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    lo, hi = max(prompt_len // 2, 1), min(3 * prompt_len // 2, seq_len - 1)
    lengths = torch.randint(lo, hi + 1, (sequences,), generator=g).tolist()
    ids = torch.randint(3, vocab, (sequences, seq_len), generator=g).tolist()
    adv = torch.randn(sequences, generator=g, dtype=torch.float64)
    if sequences > 1:
        adv = (adv - adv.mean()) / adv.std().clamp(min=1e-6)
    return Batch(
        prompts=[row[:n] for row, n in zip(ids, lengths, strict=True)],
        completions=[row[n:] for row, n in zip(ids, lengths, strict=True)],
        advantages=[float(a) for a in adv],
    )


def slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``: a file-name-safe device name."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "unknown"
