import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.environments import arithmetic
from agentrl.envs.tasks import check_disjoint


def test_splits_are_disjoint_by_id_and_content():
    splits = arithmetic.splits(n_train=1000, n_test=200)
    check_disjoint(splits)  # raises on any overlap
    train_ids = {t.id for t in splits["train"]}
    test_ids = {t.id for t in splits["test"]}
    assert len(train_ids) == 1000 and len(test_ids) == 200 and not train_ids & test_ids
    assert not {t.content_hash for t in splits["train"]} & {t.content_hash for t in splits["test"]}


def test_tasks_are_fixed_across_calls_and_prefix_stable():
    a = arithmetic.make_tasks("test", 50)
    b = arithmetic.make_tasks("test", 80)
    assert [t.id for t in a] == [t.id for t in b[:50]]
    assert all(isinstance(t.answer, int) for t in b)


def scripted(env, seed, answer_fn):
    """A policy that calls the calculator with the task's expression, then answers."""
    obs, info = env.reset(seed=seed)
    expr = info["metadata"]["expression"]
    obs, _, term, _, _ = env.step(render_call_text("calculator", {"expression": expr}))
    assert not term and obs[0]["role"] == "tool"
    result = int(obs[0]["content"])
    return env.step(f"<think>\nThe tool said {result}.\n</think>\n\nThe answer is \\boxed{{{answer_fn(result)}}}.")


def test_scripted_policy_reaches_reward_one_and_zero():
    with agentrl.make("arithmetic", split="test") as env:
        for seed in range(5):
            _, reward, term, _, info = scripted(env, seed, lambda r: r)
            assert (reward, term) == (1.0, True)
            assert info["reward_components"] == {"reward": 1.0, "correct": 1.0, "used_tool": 1.0}
            _, reward, term, _, _ = scripted(env, seed, lambda r: r + 1)
            assert (reward, term) == (0.0, True)


def test_answer_formats_are_accepted():
    env = agentrl.make("arithmetic", num_tasks=5)
    env.reset(seed=0)
    task = env.unwrapped.task
    for text in [f"\\boxed{{{task.answer:,}}}", f"Answer: {task.answer}", f"so it is {task.answer}"]:
        env.reset(options={"task_id": task.id})
        assert env.step(text)[1] == 1.0, text


def test_turn_limit_truncates():
    env = agentrl.make("arithmetic", max_turns=2)
    env.reset(seed=0)
    call = render_call_text("calculator", {"expression": "1+1"})
    env.step(call)
    _, reward, term, trunc, _ = env.step(call)
    assert (reward, term, trunc) == (0.0, False, True)


def test_passes_check_env():
    assert agentrl.check_env(agentrl.make("arithmetic")) == []


def test_bad_split_rejected():
    with pytest.raises(ValueError, match="split"):
        agentrl.make("arithmetic", split="validation")


def test_large_answers_are_graded_exactly():
    env = agentrl.make("arithmetic", digits=7, num_tasks=50)
    for task in env.unwrapped.tasks:
        env.reset(options={"task_id": task.id})
        assert env.step(f"\\boxed{{{task.answer}}}")[1] == 1.0
        env.reset(options={"task_id": task.id})
        assert env.step(f"\\boxed{{{task.answer + 1}}}")[1] == 0.0


def test_worked_examples_open_the_episode_and_do_not_count_as_tool_use():
    env = agentrl.make("arithmetic", split="test", digits=2, num_ops=1, worked_examples=2)
    obs, _ = env.reset(seed=0)
    roles = [m["role"] for m in obs]
    assert roles == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert obs[2]["tool_calls"][0]["function"]["arguments"] == {"expression": "12 * 34"}
    assert obs[3]["content"] == "408" and obs[4]["content"] == "\\boxed{408}"
    # Answering directly after the demonstrations is not "using the tool".
    _, reward, term, _, step_info = env.step(f"\\boxed{{{env.unwrapped.task.answer}}}")
    assert term and reward == 1.0 and step_info["reward_components"]["used_tool"] == 0.0
    # The demonstrated problems are in neither split.
    demos = {e for e, _ in arithmetic._EXAMPLES}
    splits = arithmetic.splits(n_train=1000, n_test=200, digits=2, num_ops=1)
    assert not demos & {t.metadata["expression"] for s in splits.values() for t in s}


def test_worked_examples_out_of_range():
    with pytest.raises(ValueError, match="worked_examples"):
        agentrl.make("arithmetic", worked_examples=9)
