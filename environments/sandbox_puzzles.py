"""``sandbox-puzzles``: questions a small model cannot answer in its head but one line of Python can.

The point of this environment is to make *running code* the skill that pays. Each task is trivial
to compute and hard to guess: counting a letter in a random string, summing the digits of
``7**43``, counting the distinct numbers in a list with repeats, or the number of days between two
dates. A 135M-parameter model answering from memory is almost always wrong; the same model calling
the sandboxed ``python`` tool with one short line and copying the printed integer is almost always
right. The gap between ``tool_free=True`` (no tools) and the default measures how much the tool
helps, and RL on this environment should widen it.

Four kinds of task (``metadata["kind"]``), interleaved round-robin so any prefix of a split is
balanced: ``letters``, ``digit_sum``, ``distinct``, ``days``. Every answer is a non-negative
integer computed in the trusted process with plain Python, never in the sandbox. Each task also
carries a one-line reference program (``metadata["solution"]``), used for scripted demonstrations.

Tasks come from a fixed seed, one random stream per kind. A task goes to the test split when the
hash of its prompt says so (one in five), and its id is derived from the same hash, so the splits
are disjoint by id and by content by construction (and checked by :func:`splits`).

Grading is strict on purpose: the final answer must hold exactly one ``\\boxed{}`` whose content is
a plain integer literal. An expression (``\\boxed{7**43}``), a list of candidates, several boxes or no
box score 0, so the only way to the reward is to know the number.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from agentrl.environments.answers import boxed_contents
from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv
from agentrl.tools import python_tool

SYSTEM_PROMPT = (
    "You are a careful assistant with a python tool. Do not work the answer out in your head: call the "
    "python tool with a short program that prints the result, and read its output. Then reply without a "
    "tool call and put only the final integer in \\boxed{}, for example \\boxed{42}."
)
TOOL_FREE_PROMPT = "Answer the question. Reply with only the final integer in \\boxed{}, for example \\boxed{42}."
KINDS = ("letters", "digit_sum", "distinct", "days")
_TASK_SEED = 20240613  # fixed: the task set is part of the environment's definition
_TEST_SHARE = 5  # one task in five goes to the test split
# A plain integer literal, optionally with a minus sign or thousands commas ("1,234"), nothing else.
_INTEGER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)")
_MAX_ANSWER_CHARS = 100  # no answer here has more than a few digits; also bounds int() on hostile text
_FIRST_DAY, _LAST_DAY = date(2000, 1, 1), date(2030, 12, 31)


# ----- task kinds ----------------------------------------------------------------------------
# Each draws one puzzle from ``rng`` and returns (prompt, answer, one-line solution). Solutions quote
# strings with single quotes: they travel JSON-encoded in a tool call, where a double quote would have
# to be written as \" -- one more thing for a small model to get wrong.


def _letters(rng: random.Random) -> tuple[str, int, str]:
    # A small alphabet makes the target letter repeat (usually 3+ times) and the target is drawn from
    # the string's own letters; a letter that occurs once is redrawn, so "1" is never a safe guess.
    alphabet = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(6, 8))
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(18, 30)))
    letter = rng.choice(text)
    while text.count(letter) < 2:
        letter = rng.choice(text)
    prompt = f'How many times does the letter "{letter}" appear in "{text}"?'
    return prompt, text.count(letter), f"print('{text}'.count('{letter}'))"


def _digit_sum(rng: random.Random) -> tuple[str, int, str]:
    # Base 10 is excluded (its powers have digit sum 1). Exponents run to 99, not 60: bases 3-19 with
    # exponents 20-60 give only 656 distinct puzzles, too few for a quarter of 2000 train + 400 test.
    base = rng.choice([b for b in range(3, 20) if b != 10])
    exponent = rng.randint(20, 99)
    expr = f"{base}**{exponent}"
    answer = sum(int(d) for d in str(base**exponent))
    return f"What is the sum of the digits of {expr}?", answer, f"print(sum(int(d) for d in str({expr})))"


def _distinct(rng: random.Random) -> tuple[str, int, str]:
    # Draw from a small pool so the list has repeats; a list of all-different numbers would make
    # the answer its length, which can be read off without computing anything.
    n = rng.randint(9, 13)  # long enough to be hard to eyeball, short enough to copy into code
    pool = rng.sample(range(1, 31), rng.randint(4, n - 2))
    numbers = [rng.choice(pool) for _ in range(n)]
    shown = "[" + ", ".join(map(str, numbers)) + "]"
    return f"How many distinct numbers are in this list? {shown}", len(set(numbers)), f"print(len(set({shown})))"


def _days(rng: random.Random) -> tuple[str, int, str]:
    gap = rng.randint(30, 900)
    start = _FIRST_DAY + timedelta(days=rng.randint(0, (_LAST_DAY - _FIRST_DAY).days - gap))
    a, b = start.isoformat(), (start + timedelta(days=gap)).isoformat()
    code = f"from datetime import date; print((date.fromisoformat('{b}') - date.fromisoformat('{a}')).days)"
    return f"How many days are there from {a} to {b}?", gap, code


_GENERATORS = {"letters": _letters, "digit_sum": _digit_sum, "distinct": _distinct, "days": _days}


def _in_test(task: Task) -> bool:
    return int(task.content_hash[:8], 16) % _TEST_SHARE == 0


def _stream(kind: str, split: str, limit: int) -> Iterator[Task]:
    """The tasks of one kind in one split, in a fixed order; gives up after ``limit`` draws.

    One random stream per kind, independent of the split and of which other kinds are asked for, so
    a task is the same wherever it appears and both splits filter the very same sequence.
    """
    rng = random.Random(f"{_TASK_SEED}-{kind}")
    seen: set[str] = set()
    for _ in range(limit):
        prompt, answer, solution = _GENERATORS[kind](rng)
        task = Task(id="", prompt=prompt)
        if task.content_hash in seen:
            continue
        seen.add(task.content_hash)
        if _in_test(task) != (split == "test"):
            continue
        yield Task(
            id=f"sbx-{task.content_hash[:12]}",
            prompt=prompt,
            answer=answer,
            metadata={"kind": kind, "solution": solution},
        )


def _check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    if isinstance(kinds, str):
        kinds = [kinds]
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be distinct names from {list(KINDS)}, got {list(kinds)}")
    return kinds


def make_tasks(split: str, n: int, *, kinds: Sequence[str] | None = None) -> list[Task]:
    """The first ``n`` tasks of ``split`` ("train" or "test"), kinds in turn; prefix-stable in ``n``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    kinds = _check_kinds(kinds)
    per_kind = -(-n // len(kinds))
    streams = {k: _stream(k, split, 50 * per_kind + 1000) for k in kinds}
    out: list[Task] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        task = next(streams[kind], None)
        if task is None:
            raise ValueError(f"cannot generate {n} distinct {split} tasks of kinds {list(kinds)} ({kind!r} ran out)")
        out.append(task)
    return out


def splits(n_train: int = 2000, n_test: int = 400, **kwargs: Any) -> dict[str, list[Task]]:
    """Both splits, checked to be disjoint by id and content."""
    out = {"train": make_tasks("train", n_train, **kwargs), "test": make_tasks("test", n_test, **kwargs)}
    check_disjoint(out)
    return out


def parse_integer(text: str) -> int | None:
    """``text`` as a plain integer literal ("42", "-7", "1,234"), or None for anything else."""
    text = text.strip()
    if len(text) > _MAX_ANSWER_CHARS or not _INTEGER.fullmatch(text):
        return None
    return int(text.replace(",", ""))


# ----- the environment -----------------------------------------------------------------------


class SandboxPuzzlesEnv(ToolEnv):
    """Puzzles that one line of Python answers (letter counts, digit sums, distinct counts, date gaps)."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        kinds: Sequence[str] | None = None,
        tool_free: bool = False,
        sandbox: Any = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ):
        """Args:
        split: "train" or "test".
        num_tasks: How many tasks to serve; 2000 train / 400 test by default.
        kinds: Which kinds of puzzle (a subset of ``KINDS``), in the order they alternate; all by default.
        tool_free: No tools and a prompt asking for the bare answer: measures a model WITHOUT running code.
        sandbox: Sandbox backend for the python tool; None uses the process-wide local sandbox.
        timeout: Seconds one python call may run.
        """
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        n = num_tasks if num_tasks is not None else (2000 if split == "train" else 400)
        tasks = make_tasks(split, n, kinds=kinds)
        if tool_free:
            kwargs.setdefault("system_prompt", TOOL_FREE_PROMPT)
        tools = [] if tool_free else [python_tool(sandbox, timeout=timeout)]
        super().__init__(tasks, tools, **kwargs)
        self.split = split
        self.tool_free = tool_free

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        boxes = boxed_contents(answer)
        # Exactly one box: several boxes would let a model list candidates and collect the reward.
        value = parse_integer(boxes[0]) if len(boxes) == 1 else None
        correct = value is not None and value == task.answer
        tool_msgs = [m for m in self.episode_messages if m.get("role") == "tool"]
        errored = any(
            "[error]" in content or "[timed out" in content
            for content in (m.get("content") for m in tool_msgs)
            if isinstance(content, str)
        )
        return {
            "reward": float(correct),
            "correct": float(correct),
            "used_tool": float(bool(tool_msgs)),
            "sandbox_error": float(errored),
            "tool_calls": float(len(tool_msgs)),
        }

    def solution(self, task: Task) -> list[Message] | None:
        """Run the task's one-line reference program, then box the integer it prints."""
        if self.tool_free:  # a measuring mode: demonstrating answers without the work would teach guessing
            return None
        call = {"type": "function", "function": {"name": "python", "arguments": {"code": task.metadata["solution"]}}}
        return [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "assistant", "content": f"\\boxed{{{task.answer}}}"},
        ]
