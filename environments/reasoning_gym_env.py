"""``reasoning-gym``: any ``reasoning_gym`` dataset as an agentrl environment.

reasoning_gym (https://github.com/open-thought/reasoning-gym) generates puzzles procedurally (leg
counting, word sorting, arithmetic chains, sudoku, ...) and grades answers with each dataset's own
``score_answer``, which may give partial credit. This adapter turns one dataset into fixed train and
test splits and uses that scorer as the reward, so the grading is exactly the dataset's.

Splits. Train and test are generated from different seeds, both derived from one fixed base seed and
the dataset's name. On top of that each question is assigned to one split by a hash of its text, and
a split keeps only the questions that hash to it; a question generated from the test seed that hashes
to train is skipped rather than served. So no training task can share its text with a test task, for
any split sizes and any ``dataset_kwargs``, without having to generate the other split to find out.

Answers. The model is asked for ``<answer>...</answer>``, as reasoning_gym's own prompts do. A missing
tag is tolerated (``\\boxed{}``, "the answer is ...", or the whole reply is scored instead) but is
reported in the ``format`` component. The Python tool is optional (``tools=True``): some datasets are
mostly computation, others are about reasoning without one.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import warnings
from collections.abc import Mapping
from typing import Any

from agentrl.environments.answers import extract_tagged_answer
from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv
from agentrl.errors import MissingDependency

SYSTEM_PROMPT = (
    "Solve the problem, thinking step by step. When you are done, give your final answer between "
    "<answer> and </answer> tags, with nothing else inside the tags, written exactly in the format the "
    "question asks for."
)
TOOLS_PROMPT = " You can run Python code with the python tool to compute or check intermediate results."
_BASE_SEED = 20240613  # fixed: the task sets are part of the environment's definition
_DEFAULT_SIZES = {"train": 1000, "test": 200}
_RESERVED = ("seed", "size")  # chosen by the environment, so the splits stay fixed and disjoint


def _require_reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise MissingDependency(
            "the reasoning-gym environment needs the reasoning_gym package: pip install reasoning-gym"
        ) from exc
    return reasoning_gym


def dataset_names() -> list[str]:
    """Every dataset name reasoning_gym has registered."""
    rg = _require_reasoning_gym()
    return sorted(rg.factory.DATASETS)


def _check_dataset(name: str) -> None:
    names = dataset_names()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        hint = f"Did you mean {', '.join(repr(c) for c in close)}? ({len(names)} datasets in all; see dataset_names())"
    else:
        hint = f"Available: {', '.join(names)}"
    raise ValueError(f"unknown reasoning_gym dataset {name!r}. {hint}")


def split_seed(dataset: str, split: str) -> int:
    """The generator seed of ``split`` for ``dataset``: different per split, fixed forever."""
    digest = hashlib.sha256(f"{_BASE_SEED}-{dataset}-{split}".encode()).hexdigest()
    return int(digest[:8], 16)


def _split_of(task: Task) -> str:
    # One bit of the content hash picks the split, so identical questions always agree.
    return "test" if int(task.content_hash[:8], 16) % 2 == 0 else "train"


def make_tasks(
    dataset: str, split: str, n: int, dataset_kwargs: Mapping[str, Any] | None = None
) -> tuple[list[Task], Any]:
    """The first ``n`` tasks of ``split`` and the reasoning_gym dataset object that scores them.

    Fewer than ``n`` come back (with a warning) when the dataset has too few distinct questions.
    """
    if split not in _DEFAULT_SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise ValueError(f"num_tasks must be at least 1, got {n}")
    rg = _require_reasoning_gym()
    _check_dataset(dataset)
    kwargs = dict(dataset_kwargs or {})
    reserved = [k for k in _RESERVED if k in kwargs]
    if reserved:
        raise ValueError(f"dataset_kwargs may not set {reserved}: the environment fixes them to keep the splits fixed")
    seed = split_seed(dataset, split)
    # About half the draws hash to the other split; the margin covers repeats.
    budget = 4 * n + 100
    try:
        data = rg.create_dataset(dataset, size=budget, seed=seed, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"cannot create reasoning_gym dataset {dataset!r} with {kwargs}: {exc}") from exc
    tasks: list[Task] = []
    seen: set[str] = set()
    for idx in range(budget):
        entry = data[idx]
        probe = Task(id="", prompt=str(entry["question"]))
        if probe.content_hash in seen or _split_of(probe) != split:
            continue
        seen.add(probe.content_hash)
        tasks.append(
            Task(
                id=f"rg-{dataset}-{probe.content_hash[:12]}",
                prompt=probe.prompt,
                answer=entry,  # the whole entry: some scorers read its metadata, not just "answer"
                metadata={"dataset": dataset, "seed": seed, "index": idx},
            )
        )
        if len(tasks) == n:
            break
    if not tasks:
        raise ValueError(f"reasoning_gym dataset {dataset!r} produced no {split} tasks")
    if len(tasks) < n:
        warnings.warn(
            f"reasoning_gym dataset {dataset!r} gave only {len(tasks)} distinct {split} tasks of the {n} asked for",
            stacklevel=2,
        )
    return tasks, data


class ReasoningGymEnv(ToolEnv):
    """One reasoning_gym dataset, graded by the dataset's own ``score_answer``."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        dataset: str = "leg_counting",
        dataset_kwargs: Mapping[str, Any] | None = None,
        tools: bool = False,
        partial_credit: bool = False,
        sandbox: Any = None,
        **kwargs: Any,
    ):
        """Args:
        split: "train" or "test".
        num_tasks: Tasks in the split; 1000 train / 200 test by default.
        dataset: A reasoning_gym dataset name, e.g. "leg_counting", "basic_arithmetic", "word_sorting".
        dataset_kwargs: Extra configuration for the dataset (difficulty settings), passed to ``create_dataset``.
        tools: Offer the sandboxed python tool.
        partial_credit: Use reasoning_gym's score as the reward even below 1. Off by default: several
            scorers pay a share for any answer that merely contains the reference ("154 or 7", "1540"),
            which a policy under RL learns to exploit. The score is always logged as ``score``.
        sandbox: Sandbox backend for the python tool; None uses the process-wide local sandbox.
        """
        if split not in _DEFAULT_SIZES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        n = num_tasks if num_tasks is not None else _DEFAULT_SIZES[split]
        tasks, self.dataset = make_tasks(dataset, split, n, dataset_kwargs)
        tool_list = []
        if tools:
            from agentrl.tools import python_tool  # the sandbox machinery is only needed when offered

            tool_list.append(python_tool(sandbox))
            kwargs.setdefault("system_prompt", SYSTEM_PROMPT + TOOLS_PROMPT)
        super().__init__(tasks, tool_list, **kwargs)
        self.split = split
        self.dataset_name = dataset
        self.partial_credit = partial_credit

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        extracted, tagged = extract_tagged_answer(answer)
        try:
            score = float(self.dataset.score_answer(extracted, task.answer))
        except Exception:  # a scorer tripping over odd model output is that output's failure, not ours
            score = 0.0
        if not math.isfinite(score):
            score = 0.0
        score = min(max(score, 0.0), 1.0)
        used_tool = any(m.get("role") == "assistant" and m.get("tool_calls") for m in self.episode_messages)
        return {
            "reward": score if self.partial_credit else float(score >= 1.0),
            "success": float(score >= 1.0),
            "score": score,
            "format": float(tagged),
            "used_tool": float(used_tool),
        }


def splits(
    n_train: int = 1000,
    n_test: int = 200,
    dataset: str = "leg_counting",
    dataset_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[Task]]:
    """Both splits of ``dataset``, checked to be disjoint by id and content."""
    out = {
        "train": make_tasks(dataset, "train", n_train, dataset_kwargs)[0],
        "test": make_tasks(dataset, "test", n_test, dataset_kwargs)[0],
    }
    check_disjoint(out)
    return out
