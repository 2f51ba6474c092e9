import gzip
import json
from fractions import Fraction

import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.environments import math_python
from agentrl.environments.answers import numbers_match
from agentrl.envs.tasks import check_disjoint
from agentrl.tools.sandbox.base import ExecResult, Sandbox, Session

GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A car costs $1,200 and a bike $34. What do both cost?", "answer": "1200+34=1234\n#### 1,234"},
    {"question": "Half of a pizza is eaten. What fraction is left?", "answer": "1 - 1/2\n#### 0.5"},
    {"question": "It is 2 degrees and falls by 5. What is the temperature?", "answer": "2-5=-3\n#### -3"},
    {"question": "Ann reads 12 pages a day for 5 days. How many pages?", "answer": "12*5=60\n#### 60"},
    {"question": "A box holds 8 eggs. How many eggs are in 9 boxes?", "answer": "#### 72"},
]


def write_jsonl(path, rows, *, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def many_rows(n):
    return [
        {"question": f"Sam has {i} marbles and finds 2 more. How many now?", "answer": f"#### {i + 2}"}
        for i in range(n)
    ]


# ----- generated tasks ---------------------------------------------------------------------


def test_generated_splits_are_large_disjoint_and_varied():
    splits = math_python.splits()
    check_disjoint(splits)
    assert len(splits["train"]) == 2000 and len(splits["test"]) == 300
    assert not {t.content_hash for t in splits["train"]} & {t.content_hash for t in splits["test"]}
    templates = {t.metadata["template"] for s in splits.values() for t in s}
    assert len(templates) >= 10
    for task in splits["test"]:
        assert isinstance(task.answer, int) or round(task.answer, 2) == task.answer


def test_generated_tasks_are_fixed_and_prefix_stable():
    a = math_python.make_tasks("test", 40)
    b = math_python.make_tasks("test", 90)
    assert [t.id for t in a] == [t.id for t in b[:40]]
    assert [t.prompt for t in a] == [t.prompt for t in math_python.make_tasks("test", 40)]


def test_generated_answers_follow_from_the_numbers():
    # Spot-check one template whose answer is easy to recompute from the question text.
    task = next(t for t in math_python.make_tasks("train", 300) if t.metadata["template"] == "ages")
    words = task.prompt.replace(",", "").split()
    factor = int(words[words.index("times") - 1])
    total = int(words[words.index("are") + 1])
    later = int(words[words.index("in") + 1])
    assert task.answer == total // (factor + 1) * factor + later


# ----- episodes ----------------------------------------------------------------------------


def scripted(env, seed, answer_fn):
    """Compute the answer in the python tool, read the tool's output, then box ``answer_fn(output)``."""
    env.reset(seed=seed)
    truth = env.unwrapped.task.answer
    obs, _, term, _, _ = env.step(render_call_text("python", {"code": f"result = {truth!r}\nprint(result)"}))
    assert not term and obs[0]["role"] == "tool" and obs[0]["name"] == "python"
    value = json.loads(obs[0]["content"])
    return env.step(f"<think>The tool printed {value}.</think>\nThe answer is \\boxed{{{answer_fn(value)}}}.")


def test_scripted_policy_reaches_reward_one_and_zero():
    with agentrl.make("math-python", split="test", num_tasks=20) as env:
        for seed in range(3):
            _, reward, term, _, info = scripted(env, seed, lambda v: v)
            assert (reward, term) == (1.0, True)
            assert info["reward_components"] == {"reward": 1.0, "success": 1.0, "used_tool": 1.0}
            _, reward, term, _, info = scripted(env, seed, lambda v: v + 1)
            assert (reward, term) == (0.0, True)
            assert info["reward_components"]["success"] == 0.0


def test_python_session_persists_within_an_episode():
    with agentrl.make("math-python", num_tasks=5) as env:
        env.reset(seed=0)
        env.step(render_call_text("python", {"code": "x = 21"}))
        obs, *_ = env.step(render_call_text("python", {"code": "x * 2"}))
        assert obs[0]["content"] == "42"


def test_answering_without_the_tool_is_graded_but_not_counted_as_tool_use():
    env = agentrl.make("math-python", num_tasks=5)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(f"\\boxed{{{env.unwrapped.task.answer}}}")
    assert reward == 1.0 and info["reward_components"]["used_tool"] == 0.0


def test_passes_check_env():
    assert agentrl.check_env(agentrl.make("math-python", split="test")) == []


def test_bad_split_and_num_tasks_rejected():
    with pytest.raises(ValueError, match="split"):
        agentrl.make("math-python", split="validation")
    with pytest.raises(ValueError, match="num_tasks"):
        agentrl.make("math-python", num_tasks=0)


class _BrokenSession(Session):
    def run(self, code, *, timeout=None, files=None, stdin=None):
        return ExecResult(exit_code=None, infra_error="sandbox worker vanished")

    def close(self):
        pass


class _BrokenSandbox(Sandbox):
    def run(self, code, *, timeout=None, files=None, stdin=None):
        raise NotImplementedError

    def session(self):
        return _BrokenSession()

    def close(self):
        pass


def test_sandbox_is_passed_through_and_its_failures_are_infra_errors():
    env = agentrl.make("math-python", num_tasks=5, sandbox=_BrokenSandbox())
    env.reset(seed=0)
    _, _, term, _, info = env.step(render_call_text("python", {"code": "1 + 1"}))
    assert not term and "sandbox worker vanished" in info["infra_error"]
    _, _, term, _, info = env.step("\\boxed{0}")
    assert term and info["infra_error"]


# ----- answer grading ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer", "reward"),
    [
        ("\\boxed{1,234}", 1234, 1.0),
        ("The answer is $1,234.", 1234, 1.0),
        ("Answer: 1234.00", 1234, 1.0),
        ("\\boxed{\\$18.90}", 18.9, 1.0),
        ("so each pays 18.9 dollars", 18.9, 1.0),
        ("\\boxed{18.900000001}", 18.9, 1.0),
        ("\\boxed{18.91}", 18.9, 0.0),
        ("\\boxed{\\frac{3}{4}}", 0.75, 1.0),
        ("Answer: 3/4", 0.75, 1.0),
        ("\\boxed{75\\%}", 75, 1.0),
        ("\\boxed{12 \\text{ km}}", 12, 1.0),
        ("\\boxed{1235}", 1234, 0.0),
        ("\\boxed{x}", 0, 0.0),  # a boxed non-number is not replaced by another number
        ("I am not sure.", 0, 0.0),
        ("", 0, 0.0),
    ],
)
def test_answer_formats(tmp_path, text, answer, reward):
    path = write_jsonl(tmp_path / "one.jsonl", [{"id": "q1", "question": "What is it?", "answer": f"#### {answer}"}])
    env = agentrl.make("math-python", data={"test": path}, split="test")
    env.reset(options={"task_id": "q1"})
    assert env.step(text)[1] == reward


def test_integer_answers_compare_exactly():
    assert numbers_match(10**17 + 1, 10**17 + 1)
    assert not numbers_match(10**17 + 1, 10**17)
    assert numbers_match(Fraction(1, 3), Fraction(1, 3))
    assert numbers_match(0.3333333333, Fraction(1, 3))


# ----- GSM8K-format files ------------------------------------------------------------------


def test_gsm8k_file_is_parsed(tmp_path):
    tasks = math_python.load_gsm8k(write_jsonl(tmp_path / "gsm.jsonl", GSM_ROWS))
    assert [t.answer for t in tasks] == [7, 1234, 0.5, -3, 60, 72]
    assert all(t.id.startswith("gsm8k-") for t in tasks)
    assert tasks[0].prompt == GSM_ROWS[0]["question"]


def test_single_file_is_split_by_question_hash(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", many_rows(200))
    splits = math_python.splits(data=path)
    check_disjoint(splits)
    assert len(splits["train"]) + len(splits["test"]) == 200
    assert 20 <= len(splits["test"]) <= 60  # about one in five
    with agentrl.make("math-python", data=str(path), split="test") as env:
        assert env.unwrapped.task_ids == [t.id for t in splits["test"]]
    with agentrl.make("math-python", data=path, split="train", num_tasks=7) as env:
        assert env.unwrapped.task_ids == [t.id for t in splits["train"][:7]]
        check_disjoint({"train": env.unwrapped.tasks, "test": splits["test"]})


def test_separate_files_make_the_splits_and_overlap_leaves_train(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", GSM_ROWS)
    test = write_jsonl(
        tmp_path / "test.jsonl.gz", [dict(r, id=f"t{i}") for i, r in enumerate(GSM_ROWS[:2])], compress=True
    )
    data = {"train": train, "test": test}
    with agentrl.make("math-python", data=data, split="test") as env:
        assert env.unwrapped.task_ids == ["t0", "t1"]
        env.reset(options={"task_id": "t1"})
        assert env.step("\\boxed{1234}")[1] == 1.0
    with agentrl.make("math-python", data=data, split="train") as env:
        assert [t.answer for t in env.unwrapped.tasks] == [0.5, -3, 60, 72]  # the two test questions were dropped
    check_disjoint(math_python.splits(data=data))
    with pytest.raises(ValueError, match="no 'train' file"):
        agentrl.make("math-python", data={"test": test}, split="train")


def test_the_same_id_in_both_files_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [dict(GSM_ROWS[2], id="q1")])
    test = write_jsonl(tmp_path / "test.jsonl", [dict(GSM_ROWS[3], id="q1")])
    with pytest.raises(ValueError, match="q1"):
        agentrl.make("math-python", data={"train": train, "test": test}, split="train")


def test_check_env_passes_on_a_data_file(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", many_rows(60))
    assert agentrl.check_env(agentrl.make("math-python", data=path, split="train")) == []


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "a?", "answer": "#### 1"}', "{not json"], "line 2: not valid JSON"),
        (['{"question": "a?", "answer": "#### 1"}', "", '{"question": "b?", "answer": "b is 2"}'], "line 3: .*####"),
        (['{"answer": "#### 1"}'], "line 1: missing or empty 'question'"),
        (['{"question": "a?"}'], "line 1: missing 'answer'"),
        (['{"question": "a?", "answer": "#### lots"}'], "line 1: cannot read a number"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        ([""], "no problems"),
        (
            ['{"id": 5, "question": "a?", "answer": "#### 1"}', '{"id": "5", "question": "b?", "answer": "#### 2"}'],
            "line 2: id '5' was already used on line 1",
        ),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        math_python.load_gsm8k(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        agentrl.make("math-python", data=tmp_path / "nope.jsonl")
