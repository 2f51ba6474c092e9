"""Tasks and held-out splits.

A task is one problem an episode is about. The verifier's data (``answer``, ``tests``) lives on the
task in the trusted process and is never shown to the policy except through ``prompt``.

Held-out means disjoint twice over: no id appears in two splits, and no two splits share a prompt
(compared by a hash of its normalised content), so a renamed duplicate cannot leak across.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.errors import UserError


@dataclass(frozen=True)
class Task:
    """One problem: what the policy sees (``prompt``) and what only the verifier sees."""

    id: str
    """Stable identifier, unique within its environment across all splits."""
    prompt: str | tuple[dict[str, Any], ...]
    """User text, or a sequence of chat messages that opens the episode."""
    answer: Any = None
    """Reference answer for the verifier. Never sent to the policy or the sandbox."""
    tests: Any = None
    """Hidden tests for code tasks. Never sent to the policy or the sandbox."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Free-form extras (difficulty, source, ...) logged with each trajectory."""

    @property
    def content_hash(self) -> str:
        """SHA-256 of the prompt with whitespace and case normalised; used for disjointness checks."""
        if isinstance(self.prompt, str):
            text = self.prompt
        else:
            text = json.dumps(list(self.prompt), sort_keys=True, ensure_ascii=False)
        normalised = " ".join(text.lower().split())
        return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def check_disjoint(splits: Mapping[str, Sequence[Task]]) -> None:
    """Raise ``ValueError`` if two splits share a task id or a prompt's content hash."""
    seen_ids: dict[str, str] = {}
    seen_hashes: dict[str, str] = {}
    for split, tasks in splits.items():
        for task in tasks:
            other = seen_ids.get(task.id)
            if other is not None and other != split:
                raise ValueError(f"task id {task.id!r} is in both {other!r} and {split!r}")
            seen_ids[task.id] = split
            h = task.content_hash
            other = seen_hashes.get(h)
            if other is not None and other != split:
                raise ValueError(f"task {task.id!r} in {split!r} has the same content as a task in {other!r}")
            seen_hashes[h] = split


def index_tasks(tasks: Iterable[Task]) -> dict[str, Task]:
    """Map id -> task, refusing duplicate ids (they would make ``task_id`` selection ambiguous)."""
    out: dict[str, Task] = {}
    for task in tasks:
        if task.id in out:
            raise ValueError(f"duplicate task id {task.id!r}")
        out[task.id] = task
    return out


def select_task(
    tasks: Sequence[Task], by_id: Mapping[str, Task], options: Mapping[str, Any] | None, rng: random.Random, owner: str
) -> Task:
    """The task ``reset(options={"task_id": ...})`` asks for, else one drawn with the environment's ``rng``."""
    task_id = (options or {}).get("task_id")
    if task_id is None:
        return tasks[rng.randrange(len(tasks))]
    if task_id not in by_id:
        raise KeyError(f"unknown task_id {task_id!r} for {owner} ({len(tasks)} tasks)")
    return by_id[task_id]


def split_task_ids(make_env: Callable[[], Any]) -> list[str]:
    """The task ids of the split an environment factory builds (its fixed, ordered task list).

    Training and evaluation both need the whole list up front, to pick tasks by position and to pair
    results task by task; an environment without ``task_ids`` cannot be trained or evaluated on.
    """
    env = make_env()
    try:
        ids = list(getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "task_ids", []) or [])
    finally:
        env.close()
    if not ids:
        raise UserError(f"environment {env!r} exposes no task_ids; training and evaluation need a fixed task list")
    return ids
