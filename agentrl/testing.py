"""Test assets only: a toy policy and environment for trainer tests. No production module imports this.

The offline Qwen3 tokenizer and tiny Qwen3 live in :mod:`agentrl.assets` (the ``tiny-qwen3`` alias is
a production feature); they are re-exported here for tests' convenience.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agentrl.assets import (
    CACHE_VERSION,
    TINY_QWEN3_CONFIG,
    atomic_build,
    cache_dir,
    qwen3_tokenizer,
    qwen3_tokenizer_path,
    tiny_qwen3,
    tiny_qwen3_path,
)

__all__ = [
    "LatinLettersEnv",
    "qwen3_tokenizer",
    "qwen3_tokenizer_path",
    "tiny_qwen3",
    "tiny_qwen3_path",
    "toy_policy_path",
]


def _latin(c: str) -> bool:
    return c == " " or (c.isascii() and c.isalpha())


def toy_policy_path() -> Path:
    """A tiny random Qwen3 whose output head separates "Latin" tokens along one direction.

    Random token embeddings have no class structure, so no small weight change can move a random
    model toward a whole class of tokens. Here the untied head gets ``+c·u`` on tokens made of
    ASCII letters and spaces and ``-c·u`` on the rest, for one random unit vector ``u``: the
    class is then one direction away, which a LoRA update can find in a few steps. Used with
    :class:`LatinLettersEnv` to check that the trainer learns.

    A reply that runs out of tokens is truncated, not scored, and a random model practically never
    writes its end-of-turn token. So the toy's turns end at a ``"."`` (``sampling.stop=["."]``, about
    4% of the vocabulary), and tokens containing one are a second class along another direction
    ``v``: ending the reply in time is learnable too.
    """

    def build(out: Path) -> None:
        import torch
        from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(**{**TINY_QWEN3_CONFIG, "tie_word_embeddings": False}))
        tok = qwen3_tokenizer()
        vocab = model.config.vocab_size
        sign, stop = torch.full((vocab,), -1.0), torch.full((vocab,), -1.0)
        for i in range(min(vocab, len(tok))):
            text = tok.decode([i])
            if text and all(_latin(c) for c in text):
                sign[i] = 1.0
            if "." in text:
                stop[i] = 1.0
        u, v = torch.randn(model.config.hidden_size), torch.randn(model.config.hidden_size)
        u, v = u / u.norm(), v / v.norm()
        with torch.no_grad():
            model.lm_head.weight.add_(0.2 * sign[:, None] * u[None, :] + 0.2 * stop[:, None] * v[None, :])
        model.generation_config = GenerationConfig(
            eos_token_id=[TINY_QWEN3_CONFIG["eos_token_id"]], pad_token_id=TINY_QWEN3_CONFIG["pad_token_id"]
        )
        model.save_pretrained(out)
        shutil.copytree(qwen3_tokenizer_path(), out, dirs_exist_ok=True)

    return atomic_build(cache_dir() / CACHE_VERSION / "toy-latin-qwen3-stop", build)


class LatinLettersEnv:
    """A toy environment for trainer tests: the reward is the share of ASCII letters and spaces in the reply.

    A random model's replies mix scripts, so the reward starts in the middle and has variance within
    every group; any working policy-gradient loop raises it within a few dozen steps. Single turn, no
    tools. Built lazily so importing :mod:`agentrl.testing` does not import the environment stack.
    """

    def __new__(cls, split: str = "train", num_tasks: int = 64, **kwargs):
        from agentrl.envs.tasks import Task
        from agentrl.envs.tool_env import ToolEnv

        class _Latin(ToolEnv):
            system_prompt = None

            def score(self, task, answer, messages):
                text = answer.replace("<|im_end|>", "")
                return {"reward": sum(_latin(c) for c in text) / max(len(text), 1)}

        tasks = [Task(id=f"{split}-{i}", prompt=f"Say something ({split} {i}).") for i in range(num_tasks)]
        return _Latin(tasks, **kwargs)
