"""Every built-in environment: registered, importable, passes check_env, and has disjoint splits."""

import importlib

import pytest

import agentrl
from agentrl.envs.checker import check_env
from agentrl.envs.registry import registry
from agentrl.envs.tasks import check_disjoint

BUILTIN = sorted(
    s.id
    for s in registry().values()
    if isinstance(s.entry_point, str) and s.entry_point.startswith("agentrl.environments.")
)


def test_the_suite_is_registered():
    assert {"arithmetic", "math-python", "code-tests", "reasoning-gym", "codebreaker", "function-calling"} <= set(
        BUILTIN
    )


@pytest.mark.parametrize("env_id", BUILTIN)
def test_train_and_test_are_disjoint_by_id_and_by_content(env_id):
    module = importlib.import_module(registry()[env_id].entry_point.partition(":")[0])
    splits = module.splits()
    assert set(splits) == {"train", "test"} and splits["train"] and splits["test"]
    check_disjoint(splits)  # raises on a shared id or a shared prompt
    train, test = splits["train"], splits["test"]
    assert not {t.id for t in train} & {t.id for t in test}
    assert not {t.content_hash for t in train} & {t.content_hash for t in test}
    # The environment serves exactly its split's tasks.
    with agentrl.make(env_id, split="test", num_tasks=len(test)) as env:
        assert set(env.unwrapped.task_ids) == {t.id for t in test}


@pytest.mark.parametrize("env_id", BUILTIN)
def test_check_env_passes(env_id):
    with agentrl.make(env_id, split="test") as env:
        check_env(env)


@pytest.mark.parametrize("env_id", BUILTIN)
def test_an_unknown_split_is_refused(env_id):
    with pytest.raises(ValueError, match="split"):
        agentrl.make(env_id, split="validation")
