"""sandbox-puzzles: fixed disjoint splits, scripted solutions through the REAL local sandbox, strict grading."""

import contextlib
import io
from collections import Counter

import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.environments import sandbox_puzzles as sp
from agentrl.envs.tasks import check_disjoint
from agentrl.tools import LocalSandbox


@pytest.fixture(scope="module")
def sb():
    s = LocalSandbox(pool_size=1)
    yield s
    s.close()


def make(sb, **kw):
    return agentrl.make("sandbox-puzzles", sandbox=sb, **kw)


def call(code):
    return render_call_text("python", {"code": code})


def first_of_kind(env, kind):
    return next(t for t in env.unwrapped.tasks if t.metadata["kind"] == kind)


# ----- tasks -------------------------------------------------------------------------------


def test_splits_are_disjoint_by_id_and_content():
    splits = sp.splits()
    check_disjoint(splits)
    train, test = splits["train"], splits["test"]
    assert len(train) == 2000 and len(test) == 400
    assert len({t.id for t in train}) == 2000 and len({t.id for t in test}) == 400
    assert not {t.id for t in train} & {t.id for t in test}
    assert not {t.content_hash for t in train} & {t.content_hash for t in test}
    assert all(t.id.startswith("sbx-") and len(t.id) == 16 for t in train + test)


def test_tasks_are_deterministic_prefix_stable_and_balanced():
    a, b = sp.make_tasks("test", 30), sp.make_tasks("test", 90)
    assert [(t.id, t.prompt, t.answer) for t in a] == [(t.id, t.prompt, t.answer) for t in b[:30]]
    assert [t.prompt for t in a] == [t.prompt for t in sp.make_tasks("test", 30)]
    for tasks in (b, sp.make_tasks("train", 90)):
        for n in range(4, len(tasks) + 1, 4):
            counts = Counter(t.metadata["kind"] for t in tasks[:n])
            assert counts == dict.fromkeys(sp.KINDS, n // 4)
        assert {t.metadata["kind"] for t in tasks[:8]} == set(sp.KINDS)
    # A subset of kinds alternates in the order given, and picks the same tasks of each kind.
    only = sp.make_tasks("train", 6, kinds=["days", "letters"])
    assert [t.metadata["kind"] for t in only] == ["days", "letters"] * 3
    full = sp.make_tasks("train", 12)
    assert [t.id for t in only if t.metadata["kind"] == "days"] == [t.id for t in full if t.metadata["kind"] == "days"]
    with pytest.raises(ValueError, match="kinds"):
        sp.make_tasks("train", 4, kinds=["letters", "nope"])
    with pytest.raises(ValueError, match="split"):
        sp.make_tasks("validation", 4)


def test_answers_are_ints_that_the_one_line_solution_prints():
    # Test-only check: the reference program, run here, prints exactly the trusted answer.
    for task in sp.make_tasks("train", 200) + sp.make_tasks("test", 40):
        code = task.metadata["solution"]
        assert isinstance(task.answer, int) and task.answer >= 0
        assert "\n" not in code and '"' not in code  # single quotes: nothing to escape in the JSON call
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {})
        assert out.getvalue() == f"{task.answer}\n", task.prompt


def test_parse_integer_accepts_only_plain_integer_literals():
    assert [sp.parse_integer(s) for s in ["42", " 42 ", "-7", "1,234", "12,345,678"]] == [42, 42, -7, 1234, 12345678]
    for s in ["7**43", "3, 4", "1,23", "4.0", "42!", "", "forty-two", "1e3", "+5", "9" * 200]:
        assert sp.parse_integer(s) is None, s


# ----- episodes through the real sandbox ---------------------------------------------------


def test_scripted_solutions_reach_reward_one_for_every_kind(sb):
    with make(sb, num_tasks=40) as env:
        for kind in sp.KINDS:
            for task in [t for t in env.unwrapped.tasks if t.metadata["kind"] == kind][:2]:
                env.reset(options={"task_id": task.id})
                tool_turn, final = env.unwrapped.solution(task)
                obs, reward, term, _, _ = env.step(tool_turn)
                assert not term and obs == [{"role": "tool", "name": "python", "content": str(task.answer)}]
                _, reward, term, _, info = env.step(final)
                assert term and reward == 1.0
                assert info["reward_components"] == {
                    "reward": 1.0,
                    "correct": 1.0,
                    "used_tool": 1.0,
                    "sandbox_error": 0.0,
                    "tool_calls": 1.0,
                }


def test_demonstrations_are_real_solved_episodes(sb):
    env = make(sb, num_tasks=12)
    demos = env.demonstrations(8)
    assert len(demos) == 8
    tasks = env.unwrapped.tasks
    for task, msgs in zip(tasks[:8], demos, strict=True):  # every scripted task succeeds, so they are in order
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
        assert msgs[0]["content"] == sp.SYSTEM_PROMPT and msgs[1]["content"] == task.prompt
        fn = msgs[2]["tool_calls"][0]["function"]
        assert fn == {"name": "python", "arguments": {"code": task.metadata["solution"]}}
        assert msgs[3]["content"] == str(task.answer)  # printed by the sandbox, not copied from the task
        assert msgs[4]["content"] == f"\\boxed{{{task.answer}}}"
    assert {t.metadata["kind"] for t in tasks[:8]} == set(sp.KINDS)


def test_demonstrations_never_come_from_the_test_split(sb):
    with pytest.raises(ValueError, match="test"):
        make(sb, num_tasks=4).demonstrations(2, split="test")
    with pytest.raises(ValueError, match="test"):
        make(sb, split="test", num_tasks=4).demonstrations(2)
    with pytest.raises(RuntimeError, match="only 4 of 5"):
        make(sb, num_tasks=4).demonstrations(5)
    with pytest.raises(NotImplementedError, match="no scripted solutions"):
        make(sb, num_tasks=4, tool_free=True).demonstrations(1)


@pytest.mark.parametrize(
    "final",
    [
        lambda t: " ".join(f"\\boxed{{{i}}}" for i in range(100)),  # every candidate, one box each
        lambda t: "\\boxed{" + ", ".join(map(str, range(100))) + "}",  # every candidate in one box
        lambda t: f"\\boxed{{{t.answer}}} or maybe \\boxed{{{t.answer + 1}}}",  # two boxes, one right
        lambda t: f"\\boxed{{{t.answer + 1}}}, no: \\boxed{{{t.answer}}}",  # the right one last
        lambda t: f"\\boxed{{\\boxed{{{t.answer}}}}}",  # nested boxes are two boxes
        lambda t: f"The answer is {t.answer}.",  # right number, no box
        lambda t: f"\\boxed{{{t.answer}.5}}",
    ],
)
def test_listing_candidates_or_skipping_the_box_scores_zero(sb, final):
    with make(sb, num_tasks=8) as env:
        task = first_of_kind(env, "distinct")
        env.reset(options={"task_id": task.id})
        obs, *_ = env.step(call("print(list(range(100)))"))
        assert obs[0]["content"].startswith("[0, 1, 2")
        _, reward, term, _, info = env.step(final(task))
        assert term and reward == 0.0 and info["reward_components"]["correct"] == 0.0


def test_expressions_in_the_box_score_zero(sb):
    with make(sb, num_tasks=8) as env:
        for kind in ("digit_sum", "distinct"):
            task = first_of_kind(env, kind)
            expr = task.prompt.rsplit(" ", 1)[-1].rstrip("?")  # "7**43", or the list
            for text in (f"\\boxed{{{expr}}}", f"\\boxed{{len(set({expr}))}}", "\\boxed{}"):
                env.reset(options={"task_id": task.id})
                assert env.step(text)[1] == 0.0, text
            env.reset(options={"task_id": task.id})
            _, reward, _, _, info = env.step(f"<think>\\boxed{{0}}</think>So: \\boxed{{ {task.answer} }}")
            assert reward == 1.0 and info["reward_components"]["used_tool"] == 0.0


def test_code_that_raises_or_hangs_is_a_sandbox_error_and_the_episode_goes_on(sb):
    with make(sb, num_tasks=8, timeout=1.0) as env:
        task = first_of_kind(env, "days")
        env.reset(options={"task_id": task.id})
        obs, _, term, _, _ = env.step(call("from datetime import date; print(date(2023,03,14))"))
        assert not term and obs[0]["content"].startswith("[error]") and "SyntaxError" in obs[0]["content"]
        obs, _, term, _, _ = env.step(call("1/0"))
        assert not term and "ZeroDivisionError" in obs[0]["content"]
        obs, _, term, _, _ = env.step(call(task.metadata["solution"]))
        assert not term and obs[0]["content"] == str(task.answer)
        _, reward, term, _, info = env.step(f"\\boxed{{{task.answer}}}")
        assert term and reward == 1.0
        assert info["reward_components"]["sandbox_error"] == 1.0 and info["reward_components"]["tool_calls"] == 3.0

        env.reset(options={"task_id": task.id})
        obs, _, term, _, _ = env.step(call("while True: pass"))
        assert not term and "[timed out" in obs[0]["content"]
        _, _, _, _, info = env.step("\\boxed{0}")
        assert info["reward_components"]["sandbox_error"] == 1.0


def test_tool_free_mode_has_no_tools_and_grades_the_box(sb):
    with make(sb, num_tasks=8, tool_free=True) as env:
        assert env.tool_specs == []
        obs, info = env.reset(seed=0)
        assert info["tools"] == [] and obs[0]["content"] == sp.TOOL_FREE_PROMPT
        task = env.unwrapped.task
        _, reward, term, _, info = env.step(f"\\boxed{{{task.answer}}}")
        assert term and reward == 1.0 and info["reward_components"]["used_tool"] == 0.0
    with make(sb, num_tasks=8) as env:
        assert [s["function"]["name"] for s in env.tool_specs] == ["python"]


def test_registered_with_a_turn_limit_and_passes_check_env(sb):
    env = make(sb, split="test")
    assert env.max_turns == 4 and len(env.unwrapped.tasks) == 400 and env.unwrapped.split == "test"
    assert agentrl.check_env(env) == []
    with pytest.raises(ValueError, match="num_tasks"):
        make(sb, num_tasks=0)


def test_arithmetic_demonstrations_reach_reward_one():
    env = agentrl.make("arithmetic", num_tasks=5)
    demos = env.demonstrations(3)
    for task, msgs in zip(env.unwrapped.tasks[:3], demos, strict=True):
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
        assert msgs[3] == {"role": "tool", "name": "calculator", "content": str(task.answer)}
        assert msgs[4]["content"] == f"\\boxed{{{task.answer}}}"
    with pytest.raises(ValueError, match="test"):
        agentrl.make("arithmetic", split="test", num_tasks=5).demonstrations(1)
