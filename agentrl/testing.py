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
    "ShortRepliesEnv",
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


class ShortRepliesEnv:
    """A second toy environment, for training on a mix beside :class:`LatinLettersEnv`: the reward is for replying
    briefly, 1 for an empty reply falling to 0 at 40 characters.

    It has a tool (the calculator) and a system prompt of its own, which the toy policy never uses but which must
    reach this environment's prompts and never the other's. With the toy policy, ending a reply early is one of
    the two learnable directions (see :func:`toy_policy_path`), so the reward rises within a few steps.
    """

    def __new__(cls, split: str = "train", num_tasks: int = 64, **kwargs):
        from agentrl.envs.tasks import Task
        from agentrl.envs.tool_env import ToolEnv
        from agentrl.tools.calculator_tool import calculator

        class _Short(ToolEnv):
            system_prompt = "Reply in as few characters as you can."

            def score(self, task, answer, messages):
                text = answer.replace("<|im_end|>", "")
                return {"reward": max(0.0, 1.0 - len(text) / 40)}

        tasks = [Task(id=f"{split}-{i}", prompt=f"Be brief ({split} {i}).") for i in range(num_tasks)]
        return _Short(tasks, [calculator], **kwargs)


class ScriptedBackend:
    """A generation backend whose policy is a Python function of the conversation text: exact tokens, no model.

    ``policy(text, rng)`` returns the assistant turn; ``rng`` is seeded by the batch's sampling seed and the
    prompt's place in the batch, so a run repeats itself exactly, like a seeded sampler. The logprob of every
    token is reported as -0.25.
    """

    name = "scripted"

    def __init__(self, tokenizer, policy):
        self.tokenizer, self.policy = tokenizer, policy
        self.batches: list[int] = []

    def generate(self, prompts, params):
        import random

        from agentrl.rollout.generation import Completion

        self.batches.append(len(prompts))
        out = []
        for i, ids in enumerate(prompts):
            rng = random.Random(f"{params.seed}/{i}")
            text = self.policy(self.tokenizer.decode(ids), rng) + "<|im_end|>"
            toks = self.tokenizer.encode(text, add_special_tokens=False)[: params.max_new_tokens]
            end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
            out.append(Completion(toks, [-0.25] * len(toks), "stop" if toks[-1] == end else "length"))
        return out


def product_policy(text: str, rng) -> str:
    """For :class:`ProductEnv`: compute the product with the python tool, then answer with what it printed.

    A coin flip in the first turn makes half of the programs off by one, so every group's rewards vary. It is
    drawn in the first turn because only the first batch of a step has a fixed order (later turns are batched
    as tool calls finish), which keeps a run's rewards a function of its seed alone.
    """
    return _product_then_answer(text, rng, "python", lambda expr: {"code": f"print({expr})"}, "python")


def _product_then_answer(text: str, rng, tool: str, arguments, say: str) -> str:
    """Call ``tool`` with ``arguments(expression)`` for "Compute a*b." (off by one on a coin flip), then answer
    with the tool's last result."""
    import re

    from agentrl.chat.parsing import render_call_text

    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, flags=re.S)
    if results:
        return f"<think>\nThe tool said {results[-1]}.\n</think>\n\n{results[-1].strip()}"
    a, b = re.findall(r"Compute (\d+)\*(\d+)", text)[-1]
    expression = f"{a} * {b}" if rng.random() < 0.5 else f"{a} * {b} + 1"
    return f"<think>\nUse {say}.\n</think>\n\n" + render_call_text(tool, arguments(expression))


class ProductEnv:
    """A two-turn tool environment for fault tests: "Compute a*b." with the real python sandbox tool.

    Reward 1 for the exact product. Every episode makes exactly one sandbox call when played by
    :func:`product_policy`, which makes injected faults countable.
    """

    def __new__(cls, split: str = "train", num_tasks: int = 16, sandbox=None, **kwargs):
        from agentrl.envs.tasks import Task
        from agentrl.envs.tool_env import ToolEnv
        from agentrl.tools.python import python_tool

        class _Product(ToolEnv):
            def score(self, task, answer, messages):
                return float(answer.strip() == str(task.answer))

        offset = 0 if split == "train" else 1000
        tasks = [
            Task(id=f"{split}-{i}", prompt=f"Compute {offset + 11 + i}*{7 + i}.", answer=(offset + 11 + i) * (7 + i))
            for i in range(num_tasks)
        ]
        return _Product(tasks, [python_tool(sandbox, timeout=5)], **kwargs)


def with_cache_form(model, form: str):
    """Put a transformers CausalLM (or the PEFT model around one) behind another cache calling convention,
    in place, and return it. Tests use it to run code that shares KV caches against each form it may meet.

    - ``"cache"``: unchanged; a transformers ``Cache`` is extended in place and returned.
    - ``"legacy"``: Unsloth's CUDA forwards as they behave in unsloth 2026.10 (``models/llama.py``). A
      ``Cache`` handed to the CausalLM is read as the legacy form (a tuple of per-layer ``(key, value)``)
      and never extended in place; the decoder indexes what it is given, so a ``Cache`` handed to it
      directly fails there too; what comes back is a new legacy tuple. In training mode, with no cache
      passed, ``use_cache`` is switched off and no cache is returned.
    - ``"none"``: ``use_cache`` is always off: no cache is ever returned.
    """
    import types

    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    if form not in ("cache", "legacy", "none"):
        raise ValueError(f"form must be cache, legacy or none, got {form!r}")
    if form == "cache":
        return model
    lm = model
    while not hasattr(lm, "lm_head"):
        lm = lm.base_model if hasattr(lm, "base_model") and lm.base_model is not lm else lm.model
    decoder = lm.get_decoder()

    def legacy(cache):
        return tuple((layer.keys, layer.values) for layer in cache.layers)

    def wrap(module, is_decoder: bool):
        original = type(module).forward.__get__(module)

        def forward(self, *args, past_key_values=None, use_cache=None, **kwargs):
            if form == "none":
                return original(*args, past_key_values=past_key_values, use_cache=False, **kwargs)
            if past_key_values is None and self.training:
                use_cache = False
            if isinstance(past_key_values, Cache):
                if is_decoder:  # Unsloth's decoder reads past_key_values[0][0]; a transformers 5 Cache has no [0]
                    raise TypeError(f"'{type(past_key_values).__name__}' object is not subscriptable")
                past_key_values = legacy(past_key_values)
            if is_decoder and past_key_values is not None:
                past_key_values = DynamicCache(past_key_values)  # a fresh object: the caller's is never extended
            out = original(*args, past_key_values=past_key_values, use_cache=use_cache, **kwargs)
            if isinstance(out.past_key_values, Cache):
                out.past_key_values = legacy(out.past_key_values)
            return out

        module.forward = types.MethodType(forward, module)

    wrap(decoder, True)
    wrap(lm, False)
    return model


def calc_tasks(split: str = "train", num_tasks: int = 8):
    """Tasks "Compute a*b." for the calculator pair below."""
    from agentrl.envs.tasks import Task

    offset = 0 if split == "train" else 1000
    return [Task(id=f"{split}-{i}", prompt=f"Compute {offset + 11 + i}*{7 + i}.", answer=(offset + 11 + i) * (7 + i))
            for i in range(num_tasks)]  # fmt: skip


def calc_policy(text: str, rng) -> str:
    """For the calculator pair: call the calculator (off by one on a coin flip, so groups vary), then answer
    with what it returned. Like :func:`product_policy`, the coin is drawn in the first turn only."""
    return _product_then_answer(text, rng, "calculator", lambda expr: {"expression": expr}, "the calculator")


def _calc_score(task, answer) -> float:
    return float((answer or "").strip() == str(task.answer))


class CalcToolEnv:
    """Native half of the calculator pair: a ``ToolEnv`` whose tool is the calculator; reward 1 for the product."""

    def __new__(cls, split: str = "train", num_tasks: int = 8, **kwargs):
        from agentrl.envs.tool_env import ToolEnv
        from agentrl.tools.calculator_tool import calculator

        class _Calc(ToolEnv):
            def score(self, task, answer, messages):
                return _calc_score(task, answer)

        return _Calc(calc_tasks(split, num_tasks), [calculator], **kwargs)


async def calc_agent(task, client, *, stream: bool = False) -> str:
    """Agent half of the calculator pair: the same episode as :class:`CalcToolEnv`, written as an ``openai`` loop."""
    from agentrl.tools.calculator_tool import calculator

    messages = [{"role": "user", "content": task.prompt}]
    for _ in range(8):
        if stream:
            reply = await _streamed(client, messages, [calculator.spec])
        else:
            response = await client.chat.completions.create(model="policy", messages=messages, tools=[calculator.spec])
            reply = response.choices[0].message.model_dump(exclude_none=True)
        answer = _calc_turn(messages, reply)
        if answer is not None:
            return answer
    return ""


def _calc_turn(messages: list, reply: dict) -> str | None:
    """Append the reply and run its calculator calls; the answer when the reply made none."""
    import json

    from agentrl.tools.calculator_tool import calculator

    messages.append(reply)
    if not reply.get("tool_calls"):
        return reply.get("content") or ""
    for call in reply["tool_calls"]:
        out = calculator(**json.loads(call["function"]["arguments"]))
        messages.append({"role": "tool", "name": call["function"]["name"], "content": str(out)})
    return None


async def _streamed(client, messages, tools) -> dict:
    """One streamed completion, reassembled from its chunks as a harness does."""
    content, calls = "", {}
    stream = await client.chat.completions.create(model="policy", messages=messages, tools=tools, stream=True)
    async for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for c in delta.tool_calls or ():
            empty = {"id": c.id, "type": "function", "function": {"name": "", "arguments": ""}}
            slot = calls.setdefault(c.index, empty)
            slot["function"]["name"] += c.function.name or ""
            slot["function"]["arguments"] += c.function.arguments or ""
    reply = {"role": "assistant", "content": content}
    if calls:
        reply["tool_calls"] = [calls[i] for i in sorted(calls)]
    return reply


def calc_agent_sync(task, client) -> str:
    """:func:`calc_agent` with the synchronous ``openai.OpenAI`` client (run in a thread of its own by agentrl)."""
    from agentrl.tools.calculator_tool import calculator

    messages = [{"role": "user", "content": task.prompt}]
    for _ in range(8):
        response = client.chat.completions.create(model="policy", messages=messages, tools=[calculator.spec])
        answer = _calc_turn(messages, response.choices[0].message.model_dump(exclude_none=True))
        if answer is not None:
            return answer
    return ""


class RecordingBackend(ScriptedBackend):
    """:class:`ScriptedBackend` that keeps each prompt's completions (``record``: prompt ids -> completions, a
    group's alike prompts listing several), so a test can check what was sampled where, or deal it again."""

    def __init__(self, tokenizer, policy):
        super().__init__(tokenizer, policy)
        self.record: dict[tuple[int, ...], list] = {}

    def generate(self, prompts, params):
        out = super().generate(prompts, params)
        for p, c in zip(prompts, out, strict=True):
            self.record.setdefault(tuple(p), []).append(c)
        return out


class CalcAgentEnv:
    """The calculator pair's ``AgentEnv``. ``agent``: "async" (default), "stream", "sync", or "raise" (agent code
    that raises on every episode: each is an infrastructure failure)."""

    def __new__(cls, split: str = "train", num_tasks: int = 8, agent: str = "async", **kwargs):
        from agentrl.envs.agent_env import AgentEnv

        async def run(task, client):
            return await calc_agent(task, client, stream=agent == "stream")

        async def raising(task, client):
            raise RuntimeError("the agent's own bug")

        runs = {"async": run, "stream": run, "sync": calc_agent_sync, "raise": raising}
        return AgentEnv(calc_tasks(split, num_tasks), runs[agent], _calc_score, **kwargs)


class LatinLettersAgentEnv:
    """:class:`LatinLettersEnv` as agent code: one chat completion per episode through the endpoint, its content
    scored by the same rule. Trains the toy policy through the endpoint in the trainer tests."""

    def __new__(cls, split: str = "train", num_tasks: int = 64, **kwargs):
        from agentrl.envs.agent_env import AgentEnv
        from agentrl.envs.tasks import Task

        async def run(task, client, model):
            reply = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": task.prompt}]
            )
            return reply.choices[0].message.content or ""

        def score(task, answer):
            return {"reward": sum(_latin(c) for c in answer) / max(len(answer), 1)}

        tasks = [Task(id=f"{split}-{i}", prompt=f"Say something ({split} {i}).") for i in range(num_tasks)]
        return AgentEnv(tasks, run, score, **kwargs)


def child_processes(marker: str) -> list[int]:
    """Live (not zombie) child processes of this one whose command line contains ``marker`` (Linux ``/proc``)."""
    import os

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = stat.with_name("cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and marker in cmdline:
            out.append(int(stat.parent.name))
    return out
