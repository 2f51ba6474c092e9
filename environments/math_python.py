"""``math-python``: math word problems solved with a sandboxed Python tool.

Two sources of problems:

* Built in: multi-step word problems (shopping with discounts, work rates, unit conversions, ages,
  splitting a bill, compound interest, ...) drawn from a fixed seed. Each template computes its
  answer exactly (with ``Fraction``) from the numbers it drew, and rejects draws whose answer is not
  an integer or a decimal with at most two places, so the reference is never a rounding artefact.
* ``data=``: a GSM8K-format JSONL file (``question``; ``answer`` whose last line is ``#### n``). One
  file is split by a hash of the question; ``data={"train": ..., "test": ...}`` gives one file per
  split instead. No dataset is shipped with the package.

Either way a task's split follows from a hash of its question text, so identical questions always land
in the same split and train and test are disjoint by id and by content.

The verifier reads the final answer tolerantly (``\\boxed{}``, "the answer is", ``$1,234.50``, ``3/4``,
``\\frac{3}{4}``) and compares numbers, not strings: exactly for integers and fractions, within a
relative tolerance of 1e-6 for decimals.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from agentrl.environments.answers import extract_math_answer, numbers_match, parse_math_number
from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv
from agentrl.tools import python_tool

SYSTEM_PROMPT = (
    "You are a careful math assistant with a Python tool. Work out the problem step by step and use the "
    "python tool for the calculations instead of doing arithmetic in your head. When you are done, reply "
    "without a tool call and put only the final number in \\boxed{}, for example \\boxed{42}."
)
_TASK_SEED = 20240612  # fixed: the generated task set is part of the environment's definition
_TEST_SHARE = 5  # one task in five goes to the test split
_NAMES = [
    "Maya", "Liam", "Sofia", "Noah", "Aisha", "Ethan", "Priya", "Lucas", "Chen", "Olivia",
    "Mateo", "Zara", "Kofi", "Hana", "Diego", "Elena", "Omar", "Grace", "Ravi", "Ines",
]  # fmt: skip

Template = Callable[[random.Random], tuple[str, Fraction] | None]


# ----- generated problems ------------------------------------------------------------------
# Each template draws numbers and returns (question, exact answer), or None to ask for a new draw
# when the answer would not be a clean number.


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}" if cents % 100 else f"${cents // 100}"


def _shopping(rng: random.Random) -> tuple[str, Fraction] | None:
    name = rng.choice(_NAMES)
    item_a, item_b = rng.sample(["notebooks", "pens", "mugs", "T-shirts", "candles", "books", "plants"], 2)
    price_a, price_b = rng.randint(2, 30), rng.randint(1, 15)
    qty_a, qty_b = rng.randint(2, 12), rng.randint(2, 20)
    discount = rng.choice([10, 15, 20, 25, 30, 40, 50])
    total = Fraction(qty_a * price_a + qty_b * price_b) * (100 - discount) / 100
    question = (
        f"A shop sells {item_a} for ${price_a} each and {item_b} for ${price_b} each. {name} buys {qty_a} "
        f"{item_a} and {qty_b} {item_b}, and the shop takes {discount}% off the whole purchase. "
        f"How many dollars does {name} pay?"
    )
    return question, total


def _work_rate(rng: random.Random) -> tuple[str, Fraction] | None:
    fast, slow = rng.randint(8, 40), rng.randint(3, 25)
    alone_hours, together_hours = rng.randint(1, 6), rng.randint(1, 10)
    total = fast * alone_hours + (fast + slow) * together_hours
    question = (
        f"Machine A makes {fast} parts per hour and machine B makes {slow} parts per hour. An order of "
        f"{total} parts is started by machine A alone; after {alone_hours} hours machine B joins in and "
        f"both work until the order is done. How many hours does the whole order take?"
    )
    return question, Fraction(alone_hours + together_hours)


def _running(rng: random.Random) -> tuple[str, Fraction] | None:
    name = rng.choice(_NAMES)
    laps, track = rng.randint(2, 12), rng.choice([200, 250, 300, 400, 500])
    rest = rng.randint(0, 3)
    weeks = rng.randint(2, 6)
    run_days = weeks * (7 - rest)
    km = Fraction(laps * track * run_days, 1000)
    question = (
        f"{name} runs {laps} laps of a {track}-meter track "
        + (f"every day except for {rest} rest days each week. " if rest else "every day. ")
        + f"How many kilometers does {name} run in {weeks} weeks?"
    )
    return question, km


def _baking(rng: random.Random) -> tuple[str, Fraction] | None:
    grams, batches = rng.choice([150, 200, 250, 300, 350, 400, 450, 600, 750]), rng.randint(3, 40)
    bag = rng.choice([1, 2, 5])
    need = grams * batches
    bags = -(-need // (bag * 1000))  # whole bags: round up
    question = (
        f"A bakery uses {grams} grams of flour per batch of bread. Flour comes in {bag} kg bags. "
        f"How many bags must it buy to bake {batches} batches?"
    )
    return question, Fraction(bags)


def _ages(rng: random.Random) -> tuple[str, Fraction] | None:
    a, b = rng.sample(_NAMES, 2)
    young = rng.randint(3, 20)
    factor = rng.randint(2, 5)
    later = rng.randint(2, 15)
    question = (
        f"{a} is {factor} times as old as {b}, and together they are {young * (factor + 1)} years old. "
        f"How old will {a} be in {later} years?"
    )
    return question, Fraction(young * factor + later)


def _bill(rng: random.Random) -> tuple[str, Fraction] | None:
    people, bill, tip = rng.randint(2, 9), rng.randint(30, 400), rng.choice([10, 15, 18, 20, 25])
    share = Fraction(bill * (100 + tip), 100 * people)
    if (share * 100).denominator != 1:  # the share must be a whole number of cents
        return None
    question = (
        f"{people} friends have dinner together. The bill is ${bill}, they add a {tip}% tip, and they split "
        f"the total equally. How many dollars does each friend pay?"
    )
    return question, share


def _interest(rng: random.Random) -> tuple[str, Fraction] | None:
    principal, rate, years = rng.randint(5, 200) * 100, rng.choice([2, 3, 4, 5, 6, 8, 10]), rng.randint(2, 5)
    exact = Fraction(principal) * Fraction(100 + rate, 100) ** years
    cents = exact * 100
    frac = cents - (cents.numerator // cents.denominator)
    if abs(frac - Fraction(1, 2)) < Fraction(1, 1000):  # too close to a half cent: rounding would be ambiguous
        return None
    rounded = Fraction(round(cents), 100)
    question = (
        f"A savings account starts with ${principal} and earns {rate}% interest, compounded once a year. "
        f"How many dollars are in the account after {years} years? Round to the nearest cent."
    )
    return question, rounded


def _trip(rng: random.Random) -> tuple[str, Fraction] | None:
    speed1, hours1 = rng.randint(40, 110), rng.randint(1, 5)
    speed2, minutes2 = rng.randint(20, 90), rng.choice([15, 20, 30, 40, 45, 90, 150])
    distance = speed1 * hours1 + Fraction(speed2 * minutes2, 60)
    avg = distance / (hours1 + Fraction(minutes2, 60))
    if (avg * 100).denominator != 1:
        return None
    question = (
        f"A car drives at {speed1} km/h for {hours1} hours, then at {speed2} km/h for {minutes2} minutes. "
        f"What is its average speed for the whole trip, in km/h?"
    )
    return question, avg


def _cookies(rng: random.Random) -> tuple[str, Fraction] | None:
    trays, per_tray = rng.randint(3, 20), rng.choice([12, 16, 20, 24, 25, 30, 36, 40])
    pct, afternoon = rng.choice([10, 20, 25, 40, 50, 60, 75]), rng.randint(5, 60)
    baked = trays * per_tray
    morning = Fraction(baked * pct, 100)
    left = baked - morning - afternoon
    if morning.denominator != 1 or left < 0:
        return None
    question = (
        f"A bakery bakes {trays} trays of {per_tray} cookies. It sells {pct}% of them in the morning and "
        f"{afternoon} more in the afternoon. How many cookies are left?"
    )
    return question, left


def _price_change(rng: random.Random) -> tuple[str, Fraction] | None:
    item = rng.choice(["jacket", "bicycle", "lamp", "phone", "guitar", "desk"])
    price = rng.randint(20, 900)
    up, down = rng.choice([5, 10, 20, 25, 30, 50]), rng.choice([5, 10, 15, 20, 25, 40])
    final = Fraction(price) * Fraction(100 + up, 100) * Fraction(100 - down, 100)
    if (final * 100).denominator != 1:
        return None
    question = (
        f"A {item} costs ${price}. Its price goes up by {up}%, and later the new price is cut by {down}%. "
        f"What is the final price in dollars?"
    )
    return question, final


def _mixture(rng: random.Random) -> tuple[str, Fraction] | None:
    a, b = rng.randint(1, 7), rng.randint(1, 7)
    if a == b:
        return None
    parts = rng.randint(2, 12)
    added = rng.randint(1, 9)
    question = (
        f"A drink is made of juice and water in the ratio {a}:{b}. A jug holds {(a + b) * parts} liters of it. "
        f"After {added} liters of water are added, how many liters of water are in the jug?"
    )
    return question, Fraction(b * parts + added)


def _savings(rng: random.Random) -> tuple[str, Fraction] | None:
    name = rng.choice(_NAMES)
    goal, start = rng.randint(100, 2000), rng.randint(0, 90)
    weekly = rng.choice([5, 8, 10, 12, 15, 20, 25, 30])
    if goal <= start:
        return None
    weeks = -(-(goal - start) // weekly)
    question = (
        f"{name} wants to buy a ${goal} item and has already saved ${start}. {name} saves ${weekly} every week. "
        f"After how many whole weeks will {name} have enough money for the first time?"
    )
    return question, Fraction(weeks)


_TEMPLATES: list[Template] = [
    _shopping,
    _work_rate,
    _running,
    _baking,
    _ages,
    _bill,
    _interest,
    _trip,
    _cookies,
    _price_change,
    _mixture,
    _savings,
]


def _clean(value: Fraction) -> int | float | None:
    """An exact answer as the number a person would write: an int, or a decimal with at most two places."""
    if value.denominator == 1:
        return int(value)
    if (value * 100).denominator != 1:
        return None
    return round(float(value), 2)


def _in_test(task: Task) -> bool:
    return int(task.content_hash[:8], 16) % _TEST_SHARE == 0


def make_tasks(split: str, n: int) -> list[Task]:
    """The first ``n`` generated tasks of ``split`` ("train" or "test"); prefix-stable in ``n``."""
    _check_split(split)
    rng = random.Random(_TASK_SEED)
    seen: set[str] = set()
    out: list[Task] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct {split} tasks")
        template = rng.choice(_TEMPLATES)
        drawn = template(rng)
        if drawn is None:
            continue
        question, exact = drawn
        answer = _clean(exact)
        if answer is None:
            continue
        task = Task(id="", prompt=question, answer=answer, metadata={"source": "generated"})
        if task.content_hash in seen:
            continue
        seen.add(task.content_hash)
        if _in_test(task) != (split == "test"):
            continue
        out.append(
            Task(
                id=f"mathpy-{task.content_hash[:12]}",
                prompt=question,
                answer=answer,
                metadata={"source": "generated", "template": template.__name__.lstrip("_")},
            )
        )
    return out


# ----- GSM8K-format files ------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"math-python data file not found: {path}")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def load_gsm8k(path: str | Path) -> list[Task]:
    """Every problem in a GSM8K-format JSONL file (``.jsonl`` or ``.jsonl.gz``), in file order.

    Each line is an object with ``question`` and ``answer``; the answer's last line reads ``#### n``.
    An optional ``id`` field becomes the task id; otherwise the id comes from the question's hash.
    Repeated questions are kept once.
    """
    path = Path(path)
    tasks: list[Task] = []
    seen: set[str] = set()
    ids: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        question, solution = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: missing or empty 'question'")
        if not isinstance(solution, str | int | float) or isinstance(solution, bool):
            raise ValueError(f"{where}: missing 'answer'")
        solution = str(solution)
        if "####" not in solution:
            raise ValueError(f"{where}: the answer has no '#### <number>' line")
        final = solution.rsplit("####", 1)[1].strip()
        value = parse_math_number(final)
        if value is None:
            raise ValueError(f"{where}: cannot read a number after '####': {final!r}")
        task = Task(id="", prompt=question.strip(), answer=value)
        if task.content_hash in seen:
            continue
        seen.add(task.content_hash)
        row_id = row.get("id")
        task_id = str(row_id) if row_id is not None else f"gsm8k-{task.content_hash[:12]}"
        if task_id in ids:
            raise ValueError(f"{where}: id {task_id!r} was already used on line {ids[task_id]}")
        ids[task_id] = lineno
        tasks.append(
            Task(id=task_id, prompt=task.prompt, answer=value, metadata={"source": str(path.name), "line": lineno})
        )
    if not tasks:
        raise ValueError(f"{path}: no problems in the file")
    return tasks


def load_split(data: str | Path | Mapping[str, str | Path], split: str) -> list[Task]:
    """The ``split`` tasks of user data: one file split by question hash, or ``{"train": ..., "test": ...}``."""
    _check_split(split)
    if isinstance(data, Mapping):
        unknown = set(data) - {"train", "test"}
        if unknown:
            raise ValueError(f"data may only have the keys 'train' and 'test', got {sorted(unknown)}")
        if split not in data:
            raise ValueError(f"no {split!r} file in data (it has {sorted(data)})")
        tasks = load_gsm8k(data[split])
        if split == "train" and "test" in data:
            # Held out means held out: drop training questions that also appear in the test file.
            test_tasks = load_gsm8k(data["test"])
            test_hashes = {t.content_hash for t in test_tasks}
            tasks = [t for t in tasks if t.content_hash not in test_hashes]
            check_disjoint({"train": tasks, "test": test_tasks})  # the same row id in both files
        return tasks
    return [t for t in load_gsm8k(data) if _in_test(t) == (split == "test")]


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


# ----- the environment ---------------------------------------------------------------------


class MathPythonEnv(ToolEnv):
    """Math word problems with a sandboxed Python tool; numeric answers in ``\\boxed{}``."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        data: str | Path | Mapping[str, str | Path] | None = None,
        sandbox: Any = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ):
        """Args:
        split: "train" or "test".
        num_tasks: How many tasks to serve; generated tasks default to 2000 train / 300 test, data files to all.
        data: A GSM8K-format JSONL path, or ``{"train": path, "test": path}``; None for generated problems.
        sandbox: Sandbox backend for the python tool; None uses the process-wide local sandbox.
        timeout: Seconds one python call may run.
        """
        _check_split(split)
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        if data is None:
            n = num_tasks if num_tasks is not None else (2000 if split == "train" else 300)
            tasks = make_tasks(split, n)
        else:
            tasks = load_split(data, split)
            if not tasks:
                raise ValueError(f"the {split!r} split of {data} is empty")
            tasks = tasks[:num_tasks] if num_tasks is not None else tasks
        super().__init__(tasks, [python_tool(sandbox, timeout=timeout)], **kwargs)
        self.split = split

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        value = extract_math_answer(answer)
        correct = numbers_match(value, task.answer)
        used_tool = any(m.get("role") == "assistant" and m.get("tool_calls") for m in self.episode_messages)
        return {"reward": float(correct), "success": float(correct), "used_tool": float(used_tool)}


def splits(n_train: int = 2000, n_test: int = 300, data: Any = None) -> dict[str, list[Task]]:
    """Both splits (generated, or of ``data``), checked to be disjoint by id and content."""
    if data is None:
        out = {"train": make_tasks("train", n_train), "test": make_tasks("test", n_test)}
    else:
        out = {"train": load_split(data, "train"), "test": load_split(data, "test")}
    check_disjoint(out)
    return out
