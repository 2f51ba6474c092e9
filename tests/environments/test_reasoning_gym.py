import builtins

import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.environments import reasoning_gym_env
from agentrl.environments.answers import extract_tagged_answer
from agentrl.envs.tasks import check_disjoint

DATASETS = ["leg_counting", "basic_arithmetic", "word_sorting"]


def truth(env):
    return env.unwrapped.task.answer["answer"]


def wrong(answer):
    return "7" if answer != "7" else "8"


def test_default_splits_are_disjoint_and_fixed():
    splits = reasoning_gym_env.splits()
    check_disjoint(splits)
    assert len(splits["train"]) == 1000 and len(splits["test"]) == 200
    assert not {t.content_hash for t in splits["train"]} & {t.content_hash for t in splits["test"]}
    assert all(t.id.startswith("rg-leg_counting-") for s in splits.values() for t in s)
    again = reasoning_gym_env.make_tasks("leg_counting", "test", 50)[0]
    assert [t.id for t in again] == [t.id for t in splits["test"][:50]]


@pytest.mark.parametrize("dataset", DATASETS)
def test_splits_of_other_datasets_and_sizes_stay_disjoint(dataset):
    # Sizes that differ from the defaults still cannot overlap: the split follows the question text.
    train = reasoning_gym_env.make_tasks(dataset, "train", 300)[0]
    test = reasoning_gym_env.make_tasks(dataset, "test", 150)[0]
    check_disjoint({"train": train, "test": test})
    assert len(train) == 300 and len(test) == 150


def test_train_and_test_use_different_seeds():
    train = reasoning_gym_env.make_tasks("leg_counting", "train", 5)[0]
    test = reasoning_gym_env.make_tasks("leg_counting", "test", 5)[0]
    assert {t.metadata["seed"] for t in train} != {t.metadata["seed"] for t in test}


@pytest.mark.parametrize("dataset", DATASETS)
def test_scripted_policy_reaches_reward_one_and_zero(dataset):
    with agentrl.make("reasoning-gym", dataset=dataset, split="test", num_tasks=10) as env:
        for seed in range(3):
            env.reset(seed=seed)
            answer = truth(env)
            _, reward, term, _, info = env.step(f"<think>Let me work it out.</think>\n<answer>{answer}</answer>")
            assert (reward, term) == (1.0, True)
            assert info["reward_components"]["success"] == 1.0
            assert info["reward_components"]["format"] == 1.0
            env.reset(seed=seed)
            _, reward, term, _, info = env.step(f"<answer>{wrong(answer)}</answer>")
            assert reward < 1.0 and term and info["reward_components"]["success"] == 0.0


def test_wrong_number_scores_zero():
    env = agentrl.make("reasoning-gym", split="test", num_tasks=5)
    env.reset(seed=0)
    assert env.step(f"<answer>{int(truth(env)) + 1}</answer>")[1] == 0.0


def test_partial_credit_is_the_datasets_own_and_off_by_default():
    for partial in (False, True):
        env = agentrl.make("reasoning-gym", dataset="word_sorting", split="test", num_tasks=5, partial_credit=partial)
        env.reset(seed=0)
        words = [w.strip() for w in truth(env).split(",")]
        reversed_order = ", ".join(reversed(words))
        _, reward, _, _, info = env.step(f"<answer>{reversed_order}</answer>")
        expected = env.unwrapped.dataset.score_answer(reversed_order, env.unwrapped.task.answer)
        comps = info["reward_components"]
        assert 0.0 < comps["score"] == expected < 1.0 and comps["success"] == 0.0
        assert reward == (expected if partial else 0.0)


@pytest.mark.parametrize("hedge", ["{a} or 7", "1{a}", "{a}0", "{a} {a}1"])
def test_hedged_answers_that_contain_the_reference_earn_nothing(hedge):
    # reasoning_gym's default scorer pays len(reference)/len(answer) for any answer containing it.
    env = agentrl.make("reasoning-gym", split="test", num_tasks=5)
    env.reset(seed=0)
    _, reward, _, _, info = env.step("<answer>" + hedge.format(a=truth(env)) + "</answer>")
    assert reward == 0.0 and info["reward_components"]["score"] > 0.0


def test_a_sentence_period_inside_the_tag_is_not_part_of_the_answer():
    env = agentrl.make("reasoning-gym", split="test", num_tasks=5)
    env.reset(seed=0)
    assert env.step(f"<answer>{truth(env)}.</answer>")[1] == 1.0


@pytest.mark.parametrize(
    "template",
    ["{a}", "The answer is {a}.", "\\boxed{{{a}}}", "Final answer: {a}", "<answer>{a}", "**Answer:** {a}"],
)
def test_missing_tags_fall_back_but_are_flagged(template):
    env = agentrl.make("reasoning-gym", split="test", num_tasks=5)
    env.reset(seed=1)
    _, reward, _, _, info = env.step(template.format(a=truth(env)))
    assert reward == 1.0 and info["reward_components"]["format"] == 0.0


def test_last_tag_wins_and_reasoning_is_ignored():
    assert extract_tagged_answer("<answer>1</answer> no, <answer> 2 </answer>") == ("2", True)
    env = agentrl.make("reasoning-gym", split="test", num_tasks=5)
    env.reset(seed=2)
    answer = truth(env)
    text = f"<think><answer>{wrong(answer)}</answer></think><answer>{answer}</answer>"
    assert env.step(text)[1] == 1.0


def test_tools_flag_controls_the_python_tool():
    without = agentrl.make("reasoning-gym", num_tasks=5)
    assert without.tool_specs == [] and "python" not in without.unwrapped.system_prompt
    with agentrl.make("reasoning-gym", split="test", num_tasks=5, tools=True) as env:
        assert [s["function"]["name"] for s in env.tool_specs] == ["python"]
        assert "python tool" in env.unwrapped.system_prompt
        env.reset(seed=0)
        answer = truth(env)
        obs, _, term, _, _ = env.step(render_call_text("python", {"code": f"print({answer!r})"}))
        assert not term and obs[0]["content"] == answer
        _, reward, _, _, info = env.step(f"<answer>{obs[0]['content']}</answer>")
        assert reward == 1.0 and info["reward_components"]["used_tool"] == 1.0


def test_a_tool_call_without_tools_is_an_error_not_an_answer():
    env = agentrl.make("reasoning-gym", num_tasks=5)
    env.reset(seed=0)
    obs, reward, term, _, _ = env.step(render_call_text("python", {"code": "1"}))
    assert not term and reward == 0.0 and obs[0]["content"].startswith("Error")


def test_dataset_kwargs_reach_the_dataset():
    one_animal = {"min_animals": 1, "max_animals": 1}
    env = agentrl.make("reasoning-gym", dataset="leg_counting", dataset_kwargs=one_animal, num_tasks=50)
    assert len(env.unwrapped.tasks) == 50
    assert all(len(t.answer["metadata"]["animals"]) == 1 for t in env.unwrapped.tasks)
    # A small question space gives fewer tasks than asked for, with a warning, rather than repeats.
    with pytest.warns(UserWarning, match="distinct"):
        env = agentrl.make("reasoning-gym", dataset="leg_counting", dataset_kwargs=one_animal)
    assert 0 < len(env.unwrapped.tasks) < 1000
    assert len({t.content_hash for t in env.unwrapped.tasks}) == len(env.unwrapped.tasks)
    with pytest.raises(ValueError, match="seed"):
        agentrl.make("reasoning-gym", dataset_kwargs={"seed": 3})
    with pytest.raises(ValueError, match="cannot create"):
        agentrl.make("reasoning-gym", dataset_kwargs={"no_such_option": 1})


@pytest.mark.parametrize("dataset", ["leg_counting", "word_sorting"])
def test_passes_check_env(dataset):
    assert agentrl.check_env(agentrl.make("reasoning-gym", dataset=dataset, split="test")) == []


def test_passes_check_env_with_tools():
    with agentrl.make("reasoning-gym", split="test", num_tasks=20, tools=True) as env:
        assert agentrl.check_env(env) == []


def test_unknown_dataset_lists_close_matches():
    with pytest.raises(ValueError, match="'leg_counting'") as err:
        agentrl.make("reasoning-gym", dataset="leg_countin")
    assert "unknown reasoning_gym dataset 'leg_countin'" in str(err.value)


def test_bad_split_rejected():
    with pytest.raises(ValueError, match="split"):
        agentrl.make("reasoning-gym", split="validation")


def test_missing_package_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "reasoning_gym" or name.startswith("reasoning_gym."):
            raise ImportError("No module named 'reasoning_gym'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install reasoning-gym"):
        agentrl.make("reasoning-gym")
