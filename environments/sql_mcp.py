"""``sql-mcp``: answer questions about a SQLite database through a third-party MCP server's SQL tool.

The tool is not agentrl's: it is ``execute_query`` from MCP Alchemy (``mcp-alchemy`` on PyPI), a
SQLAlchemy-based MCP server, started over stdio and reached through the ``mcp`` SDK by
:func:`agentrl.tools.mcp_tools.from_mcp`. The environment supplies the database, the questions and the
grading.

The database is generated from a fixed seed: made-up towns with random populations, founding years and
regions, so no model can know an answer without querying. Answers are computed here with Python's
``sqlite3`` from the same file, never by the model or the server. The server opens the file read-only
(SQLite's ``mode=ro``), so one server can be shared by every episode of a run: no query can change
what the next episode sees.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentrl.environments.answers import extract_final_number
from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv

SYSTEM_PROMPT = (
    "You answer questions about a SQLite database. Its table towns has the columns name, region, population "
    "and founded. Query it with the execute_query tool. When you are done, reply without a tool call and put "
    "the final answer in \\boxed{}."
)
_SEED = 20261207  # fixed: the database and the questions are part of the environment's definition
_NUM_TOWNS = 1200
_TEST_SHARE = 4  # one town in four is asked about only in the test split
_REGIONS = ["North", "South", "East", "West", "Coast", "Hills"]
_SYLLABLES = ["ka", "lo", "mi", "ra", "to", "ve", "su", "den", "mar", "bel", "or", "tin", "qua", "zel", "fen", "dro"]
# Questions: (kind, text, SQL of the worked example). {town} is filled in.
_QUESTIONS = {
    "population": "What is the population of {town}?",
    "founded": "In which year was {town} founded?",
}
_EXAMPLE_TOWNS = ["Aldmere", "Brookvale", "Corwick"]  # in the database, never in a split


def _towns() -> list[tuple[str, str, int, int]]:
    rng = random.Random(_SEED)
    names: set[str] = set(_EXAMPLE_TOWNS)
    rows = [(name, rng.choice(_REGIONS), rng.randint(1000, 99999), rng.randint(1200, 1999)) for name in _EXAMPLE_TOWNS]
    while len(rows) < _NUM_TOWNS:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name in names:
            continue
        names.add(name)
        rows.append((name, rng.choice(_REGIONS), rng.randint(1000, 99999), rng.randint(1200, 1999)))
    return rows


def database_path(directory: str | os.PathLike | None = None) -> Path:
    """The generated database, written once per machine (atomically, so concurrent processes agree)."""
    rows = _towns()
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:12]
    path = Path(directory or tempfile.gettempdir()) / f"agentrl-sql-mcp-{digest}.db"
    if path.exists():
        return path
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with sqlite3.connect(tmp) as db:
        db.execute("CREATE TABLE towns (name TEXT PRIMARY KEY, region TEXT, population INTEGER, founded INTEGER)")
        db.executemany("INSERT INTO towns VALUES (?, ?, ?, ?)", rows)
    os.replace(tmp, path)
    return path


def make_tasks(split: str, n: int, path: Path, kinds: tuple[str, ...] = ("population", "founded")) -> list[Task]:
    """The first ``n`` questions of ``split``; answers read from the database with ``sqlite3``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = [k for k in kinds if k not in _QUESTIONS]
    if unknown or not kinds:
        raise ValueError(f"question kinds must be among {sorted(_QUESTIONS)}, got {list(kinds)}")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT name, population, founded FROM towns ORDER BY rowid").fetchall()
    out: list[Task] = []
    for name, population, founded in rows:
        if name in _EXAMPLE_TOWNS:
            continue
        digest = hashlib.sha256(name.encode()).hexdigest()
        if (int(digest[:8], 16) % _TEST_SHARE == 0) != (split == "test"):
            continue
        kind = kinds[int(digest[8:12], 16) % len(kinds)]
        answer = {"population": population, "founded": founded}[kind]
        out.append(
            Task(
                id=f"sql-{kind}-{digest[:10]}",
                prompt=_QUESTIONS[kind].format(town=name),
                answer=answer,
                metadata={"town": name, "kind": kind},
            )
        )
        if len(out) == n:
            return out
    raise ValueError(f"the database has only {len(out)} {split} questions of kinds {list(kinds)}; asked for {n}")


def server_command() -> list[str]:
    """MCP Alchemy's stdio server, run by this interpreter (no console script needs to be on PATH)."""
    return [sys.executable, "-c", "from mcp_alchemy.server import main; main()"]


class SqlMcpEnv(ToolEnv):
    """Questions about a generated SQLite database, answered with MCP Alchemy's ``execute_query`` tool."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        kinds: tuple[str, ...] | list[str] = ("population", "founded"),
        worked_examples: int = 2,
        per_episode: bool = False,
        tool_timeout: float = 30.0,
        **kwargs: Any,
    ):
        from agentrl.tools.mcp_tools import from_mcp

        path = database_path()
        n = num_tasks if num_tasks is not None else (800 if split == "train" else 250)
        tasks = make_tasks(split, n, path, tuple(kinds))
        if not 0 <= worked_examples <= len(_EXAMPLE_TOWNS):
            raise ValueError(f"worked_examples must be between 0 and {len(_EXAMPLE_TOWNS)}, got {worked_examples}")
        try:
            import mcp_alchemy  # noqa: F401
        except ImportError:
            from agentrl.errors import UserError

            raise UserError("the sql-mcp environment runs MCP Alchemy: pip install 'agentrl[mcp-sql]'") from None
        tools = from_mcp(
            server_command(),
            env={"DB_URL": f"sqlite:///file:{path}?mode=ro&uri=true", "EXECUTE_QUERY_MAX_CHARS": "2000"},
            tools=["execute_query"],
            per_episode=per_episode,
            timeout=tool_timeout,
        )
        if worked_examples and "few_shot" not in kwargs:
            kwargs["few_shot"] = demonstrations(worked_examples, tools[0], tuple(kinds))
        super().__init__(tasks, tools, **kwargs)
        self.split = split

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        value = extract_final_number(answer)
        correct = value is not None and value == task.answer
        queried = any(m.get("role") == "tool" for m in self.episode_messages)
        return {"reward": float(correct), "correct": float(correct), "used_tool": float(queried)}

    def solution(self, task: Task) -> list[Message] | None:
        """Query the one column the question asks for, then box it."""
        return [_query_turn(task.metadata["kind"], task.metadata["town"]), {"role": "assistant",
                "content": f"\\boxed{{{task.answer}}}"}]  # fmt: skip


def _query_turn(kind: str, town: str) -> Message:
    sql = f"SELECT {kind} FROM towns WHERE name = '{town}'"
    call = {"type": "function", "function": {"name": "execute_query", "arguments": {"query": sql}}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


_SHOWN: dict[tuple, list[Message]] = {}


def demonstrations(k: int, tool: Any, kinds: tuple[str, ...]) -> list[Message]:
    """``k`` worked examples as chat turns; the tool results are the real server's output (read once)."""
    key = (k, kinds)
    if key not in _SHOWN:
        import asyncio
        import concurrent.futures

        msgs: list[Message] = []
        for i, town in enumerate(_EXAMPLE_TOWNS[:k]):
            kind = kinds[i % len(kinds)]
            turn = _query_turn(kind, town)
            query = turn["tool_calls"][0]["function"]["arguments"]
            # In a thread of its own: environments are also built inside running event loops.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                result = pool.submit(asyncio.run, tool.acall(query)).result()
            with sqlite3.connect(f"file:{database_path()}?mode=ro", uri=True) as db:
                (value,) = db.execute(f"SELECT {kind} FROM towns WHERE name = ?", (town,)).fetchone()
            msgs += [
                {"role": "user", "content": _QUESTIONS[kind].format(town=town)},
                turn,
                {"role": "tool", "name": tool.name, "content": result},
                {"role": "assistant", "content": f"\\boxed{{{value}}}"},
            ]
        _SHOWN[key] = msgs
    return [dict(m) for m in _SHOWN[key]]


def splits(n_train: int = 800, n_test: int = 250) -> dict[str, list[Task]]:
    """Both splits, checked to be disjoint by id and content."""
    path = database_path()
    out = {"train": make_tasks("train", n_train, path), "test": make_tasks("test", n_test, path)}
    check_disjoint(out)
    return out
