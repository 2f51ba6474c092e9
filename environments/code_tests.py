"""``code-tests``: write a Python function that passes hidden unit tests.

The prompt shows a function's signature and docstring with one or two examples (HumanEval style),
or a description and one example assert (MBPP style). The model may try code in a sandboxed
``python`` tool, then answers with the complete function in a fenced code block. The reward is 1.0
when every hidden test passes, else 0.0; the share of passing asserts is logged on the side.

Why it is built this way
    * The hidden tests never reach the model or the sandbox. Grading goes through
      :func:`agentrl.tools.grading.grade_asserts`: the candidate runs in a :class:`LocalSandbox`
      session and the asserts run here, in the trusted process, on plain values decoded from the
      sandbox. A return value with a lying ``__eq__``, ``sys.exit(0)`` at import time or a printed
      "PASSED" cannot fake a pass. Grading therefore always uses a LocalSandbox, while the tool may
      run on any backend (E2B, ...).
    * The answer is the *last* fenced block of the final turn (untagged or tagged python), so a
      model may show drafts first. No block means reward 0 with ``format: 0``.
    * Code the prompt itself defines (imports, helper functions such as HumanEval's ``poly``) is
      part of the task: it is run before the answer in the sandbox, so an answer need not repeat
      it, and before the tests in the trusted process, where some tests call those helpers.
    * A sandbox failure during grading says nothing about the answer: the episode is marked with
      ``infra_error`` and excluded, never scored 0.

Data
    By default, a small task set shipped with the package (``data/code_tests.jsonl``); each row
    carries its ``split``. ``data=PATH`` loads a ``.jsonl`` or ``.jsonl.gz`` file whose rows are in
    HumanEval format (``task_id``, ``prompt``, ``entry_point``, ``test``, optional
    ``canonical_solution``) or MBPP format (``task_id``, ``text`` or ``prompt``, ``test_list``,
    optional ``code``, ``test_setup_code``, ``test_imports``), detected row by row. A row's
    ``split`` field wins; otherwise one prompt in five goes to the test split by a hash of its
    normalised text, so identical prompts always share a split. ``data={"train": P1, "test": P2}``
    takes each split from its own file. Either way the splits are checked to be disjoint by id
    and by content.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import gzip
import json
import os
import re
import textwrap
from collections.abc import Mapping
from importlib import resources
from typing import Any

from agentrl.envs.core import Message
from agentrl.envs.tasks import Task, check_disjoint
from agentrl.envs.tool_env import ToolEnv
from agentrl.tools import SandboxError, default_sandbox, python_tool
from agentrl.tools.grading import GradeResult, grade_asserts
from agentrl.tools.sandbox.base import Sandbox

SYSTEM_PROMPT = (
    "You are an expert Python programmer. Write the requested function so that it passes hidden unit tests, "
    "which check more cases than the examples shown. You may run code with the python tool to try your "
    "solution on the examples. When you are done, reply without a tool call and give the complete function, "
    "with any imports it needs, in a ```python code block. Only the last code block of that reply is graded."
)
DEFAULT_DATA = "code_tests.jsonl"
_TEST_SHARE = 5  # without an explicit split, one prompt in five goes to the test split
_SPLITS = ("train", "test")
# An opening fence: ``` plus an optional language tag; a closing fence: ``` alone on its line.
_OPEN_FENCE = re.compile(r"^\s*```[ \t]*([\w+.-]*)[ \t]*$")
_CLOSE_FENCE = re.compile(r"^\s*```\s*$")
_PYTHON_TAGS = {"", "python", "python3", "py"}


# ----- answers --------------------------------------------------------------------------------


def extract_code(text: str) -> str | None:
    """The content of the last fenced code block in ``text`` that is untagged or tagged Python.

    Blocks tagged with another language (``text``, ``bash``, ...) are skipped; an unclosed block
    does not count. Returns None when there is no such block.
    """
    last: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _OPEN_FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if _CLOSE_FENCE.match(lines[j])), None)
        if end is None:
            break
        if opening.group(1).lower() in _PYTHON_TAGS:
            last = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"  # a block indented in a list item
        i = end + 1
    return last


# ----- loading --------------------------------------------------------------------------------


class DataError(ValueError):
    """A data file or one of its rows is malformed."""


def _prompt_context(prompt: str, entry_point: str) -> str:
    """The prompt's code other than the stub of ``entry_point``: imports, helpers, constants.

    Returns "" when the prompt is not Python source (then there is nothing to reuse).
    """
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        segment = ast.get_source_segment(prompt, node, padded=True)
        if segment:
            kept.append(segment)
    return "\n\n".join(kept) + "\n" if kept else ""


def _called_names(source: str) -> list[str]:
    """Names called as plain functions in ``source``, in source order, builtins excluded."""
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    names = []
    for call in calls:
        name = call.func.id  # type: ignore[attr-defined]
        if not hasattr(builtins, name) and name not in names:
            names.append(name)
    return names


def _defined_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _str_field(row: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _humaneval_task(row: Mapping[str, Any], task_id: str, where: str) -> Task:
    prompt = _str_field(row, "prompt", where)
    entry_point = _str_field(row, "entry_point", where).strip()
    test = _str_field(row, "test", where)
    solution = _str_field(row, "canonical_solution", where, required=False)
    try:
        tree = ast.parse(test)
    except SyntaxError as exc:
        raise DataError(f"{where}: 'test' is not valid Python ({exc.msg}, line {exc.lineno})") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body):
        raise DataError(f"{where}: 'test' must define check(candidate)")
    context = _prompt_context(prompt, entry_point)
    user = (
        f"Complete the Python function `{entry_point}` below.\n\n```python\n{prompt.rstrip()}\n```\n\n"
        "Reply with the complete function in a ```python code block."
    )
    return Task(
        id=task_id,
        prompt=user,
        answer=prompt + solution if solution else None,
        # The prompt's own helpers are trusted data: the tests may call them (HumanEval's `poly`).
        tests=context + "\n" + test if context else test,
        metadata={"format": "humaneval", "entry_point": entry_point, "context": context},
    )


def _mbpp_task(row: Mapping[str, Any], task_id: str, where: str) -> Task:
    text = row.get("text") if row.get("text") is not None else row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: an MBPP row needs a non-empty 'text' (or 'prompt') string")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise DataError(f"{where}: 'test_list' must be a non-empty list of assert strings")
    for t in tests:
        try:
            ast.parse(t)
        except SyntaxError as exc:
            raise DataError(f"{where}: test {t[:60]!r} is not valid Python ({exc.msg})") from None
    code = _str_field(row, "code", where, required=False)
    # Setup code the asserts rely on (imports, helper data); it runs with the tests, on the trusted side.
    setup = _str_field(row, "test_setup_code", where, required=False)
    imports = row.get("test_imports") or []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise DataError(f"{where}: 'test_imports' must be a list of strings")
    setup = "\n".join([*imports, setup]).strip()
    # The entry point is the function the first assert calls; prefer one the reference code defines,
    # since the assert may wrap the call in helpers (`set(f(x)) == ...`, `math.isclose(f(x), ...)`).
    called = _called_names(tests[0])
    defined = _defined_names(code)
    entry_point = next((n for n in called if n in defined), called[0] if called else None)
    if entry_point is None:
        raise DataError(f"{where}: cannot tell which function the first assert calls: {tests[0][:80]!r}")
    user = (
        f"{text.strip()}\n\nWrite a Python function `{entry_point}`. It must pass this test:\n\n"
        f"```python\n{tests[0].strip()}\n```\n\nReply with the complete function in a ```python code block."
    )
    return Task(
        id=task_id,
        prompt=user,
        answer=code or None,
        tests=[f"{setup}\n{t}" if setup else t for t in tests],
        metadata={"format": "mbpp", "entry_point": entry_point, "context": ""},
    )


def _row_task(row: Any, where: str) -> Task:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    task_id = row.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or str(task_id).strip() == "":
        raise DataError(f"{where}: missing 'task_id' (a string or an integer)")
    task_id = str(task_id)
    if "test_list" in row:
        return _mbpp_task(row, task_id, where)
    if "test" in row and "entry_point" in row:
        return _humaneval_task(row, task_id, where)
    raise DataError(
        f"{where}: not a HumanEval row (task_id, prompt, entry_point, test) "
        f"nor an MBPP row (task_id, text, test_list); its keys are {sorted(row)}"
    )


def _open(path: str | os.PathLike[str]):
    name = os.fspath(path)
    if name.endswith(".jsonl.gz"):
        return gzip.open(name, "rt", encoding="utf-8")
    if name.endswith(".jsonl"):
        return open(name, encoding="utf-8")
    raise DataError(f"{name}: expected a .jsonl or .jsonl.gz file")


def load_file(path: str | os.PathLike[str]) -> list[tuple[Task, str | None]]:
    """Every task of a HumanEval- or MBPP-format file, with the split its row names (or None)."""
    name = os.fspath(path)
    out: list[tuple[Task, str | None]] = []
    seen: dict[str, int] = {}
    with _open(name) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{name}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            task = _row_task(row, where)
            if task.id in seen:
                raise DataError(f"{where}: task_id {task.id!r} already used on line {seen[task.id]}")
            seen[task.id] = lineno
            split = row.get("split")
            if split is not None and split not in _SPLITS:
                raise DataError(f"{where}: 'split' must be 'train' or 'test', got {split!r}")
            out.append((task, split))
    if not out:
        raise DataError(f"{name}: no tasks in the file")
    return out


def _hash_split(task: Task) -> str:
    return "test" if int(task.content_hash[:8], 16) % _TEST_SHARE == 0 else "train"


def load_splits(data: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> dict[str, list[Task]]:
    """Both splits of ``data`` (see the module docstring), checked to be disjoint."""
    if data is None:
        with resources.as_file(resources.files("agentrl.environments") / "data" / DEFAULT_DATA) as path:
            return load_splits(path)
    if isinstance(data, Mapping):
        unknown = set(data) - set(_SPLITS)
        if unknown:
            raise ValueError(f"data may map only 'train' and 'test' to files, got {sorted(unknown)}")
        # An explicit file per split: rows' own split fields do not apply.
        out = {s: [t for t, _ in load_file(data[s])] if s in data else [] for s in _SPLITS}
    else:
        out = {"train": [], "test": []}
        for task, split in load_file(data):
            out[split or _hash_split(task)].append(task)
    check_disjoint(out)
    return out


def splits(data: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> dict[str, list[Task]]:
    """Both splits (the shipped task set by default), checked to be disjoint by id and content."""
    return load_splits(data)


# ----- the environment ------------------------------------------------------------------------


class CodeTestsEnv(ToolEnv):
    """Write a function that passes hidden unit tests; a python tool to try it, trusted grading."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        data: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        sandbox: Sandbox | None = None,
        grading_sandbox: Sandbox | None = None,
        tool_timeout: float = 10.0,
        test_timeout: float = 5.0,
        **kwargs: Any,
    ):
        """
        Args:
            split: "train" or "test".
            num_tasks: Use the first ``num_tasks`` tasks of the split (all by default).
            data: None for the shipped tasks, a ``.jsonl``/``.jsonl.gz`` path, or ``{"train": P1, "test": P2}``.
            sandbox: Backend of the python tool; the process-wide LocalSandbox by default.
            grading_sandbox: LocalSandbox for grading; the process-wide one by default.
            tool_timeout: Seconds one python tool call may run.
            test_timeout: Seconds the candidate may take to load and for each call a test makes.
        """
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        tasks = load_splits(data)[split]
        if not tasks:
            raise ValueError(f"the data has no {split!r} tasks")
        tasks = tasks[:num_tasks] if num_tasks is not None else tasks
        super().__init__(tasks, [python_tool(sandbox, timeout=tool_timeout)], **kwargs)
        self.split = split
        self.grading_sandbox = grading_sandbox
        self.test_timeout = test_timeout

    def grade(self, task: Task, code: str) -> GradeResult:
        """Run ``task``'s hidden tests against ``code`` (the prompt's helpers are defined first)."""
        meta = task.metadata
        source = f"{meta['context']}\n{code}" if meta.get("context") else code
        # Not __main__: a solution ending in `if __name__ == "__main__": main()` must not read stdin here.
        # The module stays registered under its new name, so dataclasses and enums still find it.
        source = (
            f"import sys as _sys\n_sys.modules['solution'] = _sys.modules[__name__]\n__name__ = 'solution'\n{source}"
        )
        sandbox = self.grading_sandbox or default_sandbox()
        try:
            return grade_asserts(
                sandbox, source, task.tests, meta["entry_point"], style=meta["format"], timeout=self.test_timeout
            )
        except SandboxError as exc:
            return GradeResult(0, 0, infra_error=f"grading sandbox failed: {exc}")

    async def ascore(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        # Grading waits on the sandbox, for seconds when a candidate is slow. Do it in a worker thread
        # so the event loop keeps serving other episodes. (A plain worker thread is safe here: the
        # sandbox bounds every call, so grading cannot hang.)
        return await asyncio.to_thread(self.score, task, answer, messages)

    def score(self, task: Task, answer: str, messages: list[Message]) -> Mapping[str, float]:
        used_tool = float(any(m.get("role") == "tool" for m in self.episode_messages))
        code = extract_code(answer)
        if code is None:
            return {"reward": 0.0, "success": 0.0, "format": 0.0, "tests_passed_fraction": 0.0, "used_tool": used_tool}
        result = self.grade(task, code)
        if result.infra_error:
            self.infra_error = result.infra_error  # excluded from training and evaluation, not scored 0
        passed = float(result.success)
        return {
            "reward": passed,
            "success": passed,
            "format": 1.0,
            "tests_passed_fraction": result.score,
            "used_tool": used_tool,
        }
