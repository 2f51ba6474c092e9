import pytest

import agentrl
from agentrl import EnvCheckError, check_env
from agentrl.envs.core import Env, ResetNeeded


class Good(Env):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = (options or {}).get("task_id") or str(self.np_random.randint(0, 100))
        self.on = True
        return [{"role": "user", "content": f"task {self.n}"}], {"task_id": self.n}

    def step(self, action):
        if not self.on:
            raise ResetNeeded()
        self.on = False
        return [], 1.0, True, False, {}


def broken(**overrides):
    """A Good env with one method replaced."""
    return type("Broken", (Good,), overrides)()


def test_builtin_and_good_envs_pass():
    check_env(Good())
    with agentrl.make("arithmetic") as env:
        assert check_env(env) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (broken(reset=lambda self, **kw: [{"role": "user", "content": "x"}]), "must return \\(observation, info\\)"),
        (broken(step=lambda self, a: ([], 1.0, True, False)), "must return \\(observation, reward"),
        (broken(step=lambda self, a: ("text", 1.0, True, False, {})), "list of messages"),
        (broken(step=lambda self, a: ([], float("nan"), True, False, {})), "finite float"),
        (broken(step=lambda self, a: ([], 1.0, 1, False, {})), "terminated must be a bool"),
        (broken(step=lambda self, a: ([], 1.0, True, True, {})), "both True"),
        (broken(step=lambda self, a: ([{"role": "robot", "content": ""}], 0.0, False, False, {})), "unknown role"),
        (broken(step=lambda self, a: ([{"role": "tool"}], 0.0, False, False, {})), "string 'content'"),
        (broken(step=lambda self, a: 1 / 0), "ZeroDivisionError"),
    ],
)
def test_contract_violations_are_reported(env, message):
    with pytest.raises(EnvCheckError, match=message):
        check_env(env)


def test_unseeded_reset_is_caught():
    import random

    class Unseeded(Good):
        def reset(self, *, seed=None, options=None):
            self.on = True
            return [{"role": "user", "content": str(random.random())}], {"task_id": "x"}

    with pytest.raises(EnvCheckError, match="reproducible"):
        check_env(Unseeded())


def test_ignoring_task_id_is_caught():
    class IgnoresTaskId(Good):
        def reset(self, *, seed=None, options=None):
            return super().reset(seed=seed, options=None)

    with pytest.raises(EnvCheckError, match="task_id"):
        check_env(IgnoresTaskId())


def test_invalid_tool_schema_is_caught():
    env = Good()
    env.tool_specs = [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]
    with pytest.raises(EnvCheckError, match="invalid JSON schema"):
        check_env(env)


def test_soft_problems_are_warnings():
    class NoTaskIdNoReset(Good):
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.on = True
            return [{"role": "user", "content": "same"}], {}

        def step(self, action):
            return [], 0.0, True, False, {}

    warnings = check_env(NoTaskIdNoReset())
    assert any("task_id" in w for w in warnings)
    assert any("same first observation" in w for w in warnings)
    assert any("ResetNeeded" in w for w in warnings)
