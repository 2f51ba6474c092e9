"""``arithmetic``: multi-digit arithmetic with a calculator tool.

Tasks are generated from a fixed seed, so every machine sees the same problems. A task goes to the
test split when the hash of its text says so; ids are derived from the text as well, so the splits
are disjoint by id and by content by construction (and checked on load).

Mental multiplication of three-digit numbers is where small models fail and a calculator wins,
which makes the tool matter.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

from agentrl.environments.answers import extract_final_number
from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv
from agentrl.tools.calculator_tool import calculator, evaluate_expression

SYSTEM_PROMPT = (
    "You are a careful assistant. Use the calculator tool for any arithmetic you are not sure of. "
    "When you are done, reply without a tool call and put the final answer in \\boxed{}."
)
_TASK_SEED = 20240611  # fixed: the task set is part of the environment's definition
_TEST_SHARE = 5  # one task in five goes to the test split
# Demonstrations for ``worked_examples``; never part of either split.
_EXAMPLES = [("12 * 34", 408), ("71 - 26", 45), ("58 + 67", 125)]


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _expression(rng: random.Random, digits: int, num_ops: int) -> str:
    parts = [str(_operand(rng, rng.randint(2, digits)))]
    for _ in range(num_ops):
        op = rng.choice(["+", "-", "*", "*"])
        parts += [op, str(_operand(rng, rng.randint(2, digits)))]
    return " ".join(parts)


def make_tasks(split: str, n: int, *, digits: int = 3, num_ops: int = 2) -> list[Task]:
    """The first ``n`` tasks of ``split`` ("train" or "test") for the given difficulty."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{_TASK_SEED}-{digits}-{num_ops}")
    seen: set[str] = set()
    out: list[Task] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct {split} tasks with digits={digits}, num_ops={num_ops}")
        expr = _expression(rng, digits, num_ops)
        if expr in seen or any(expr == e for e, _ in _EXAMPLES):
            continue
        seen.add(expr)
        digest = hashlib.sha256(expr.encode()).hexdigest()
        in_test = int(digest[:8], 16) % _TEST_SHARE == 0
        if in_test != (split == "test"):
            continue
        value = evaluate_expression(expr)
        out.append(
            Task(
                id=f"arith-{digest[:12]}",
                prompt=f"What is {expr}?",
                answer=value,
                metadata={"expression": expr, "digits": digits, "num_ops": num_ops},
            )
        )
    return out


class ArithmeticEnv(ToolEnv):
    """Multi-digit arithmetic with a calculator tool; exact integer answers."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        digits: int = 3,
        num_ops: int = 2,
        worked_examples: int = 0,
        **kwargs: Any,
    ):
        n = num_tasks if num_tasks is not None else (1000 if split == "train" else 200)
        tasks = make_tasks(split, n, digits=digits, num_ops=num_ops)
        if not 0 <= worked_examples <= len(_EXAMPLES):
            raise ValueError(f"worked_examples must be between 0 and {len(_EXAMPLES)}, got {worked_examples}")
        if worked_examples and "few_shot" not in kwargs:
            kwargs["few_shot"] = demonstrations(worked_examples)
        super().__init__(tasks, [calculator], **kwargs)
        self.split = split

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        value = extract_final_number(answer)
        correct = value is not None and value == task.answer
        used_tool = any(m.get("role") == "tool" for m in self.episode_messages)
        return {"reward": float(correct), "correct": float(correct), "used_tool": float(used_tool)}

    def solution(self, task: Task) -> list[Message] | None:
        """Call the calculator with the task's expression, then box the answer."""
        args = {"expression": task.metadata["expression"]}
        call = {"type": "function", "function": {"name": "calculator", "arguments": args}}
        return [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "assistant", "content": f"\\boxed{{{task.answer}}}"},
        ]


def demonstrations(k: int) -> list[Message]:
    """``k`` worked examples as chat turns: question, calculator call, result, boxed answer."""
    msgs: list[Message] = []
    for expr, value in _EXAMPLES[:k]:
        call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expr}}}
        msgs += [
            {"role": "user", "content": f"What is {expr}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "calculator", "content": str(value)},
            {"role": "assistant", "content": f"\\boxed{{{value}}}"},
        ]
    return msgs


def splits(n_train: int = 1000, n_test: int = 200, **kwargs: Any) -> dict[str, list[Task]]:
    """Both splits, checked to be disjoint by id and content."""
    out = {"train": make_tasks("train", n_train, **kwargs), "test": make_tasks("test", n_test, **kwargs)}
    check_disjoint(out)
    return out
