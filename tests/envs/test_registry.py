import subprocess
import sys

import pytest

import agentrl
from agentrl.envs.wrappers import MaxTurns


def test_builtin_is_registered_lazily_and_builds():
    code = (
        "import sys, agentrl; "
        "assert 'arithmetic' in agentrl.registry(); "
        "assert 'agentrl.environments.arithmetic' not in sys.modules; "
        "assert 'torch' not in sys.modules, 'import agentrl must stay light'; "
        "env = agentrl.make('arithmetic'); "
        "assert 'agentrl.environments.arithmetic' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_make_applies_spec_and_overrides():
    env = agentrl.make("arithmetic", split="test", num_tasks=7)
    assert isinstance(env, MaxTurns) and env.max_turns == 4
    assert len(env.unwrapped.tasks) == 7 and env.unwrapped.split == "test"
    assert env.spec.id == "arithmetic"
    assert agentrl.make("arithmetic", max_turns=9).max_turns == 9


def test_make_by_module_path():
    env = agentrl.make("agentrl.environments.arithmetic:ArithmeticEnv", num_tasks=3)
    assert not isinstance(env, MaxTurns)
    assert type(env).__name__ == "ArithmeticEnv"


def test_unknown_ids_give_helpful_errors():
    # All three are the user's mistake (agentrl.UserError): the CLI prints them as one line.
    with pytest.raises(agentrl.UserError, match="Did you mean 'arithmetic'"):
        agentrl.make("arithmetc")
    with pytest.raises(agentrl.UserError, match="no_such_pkg"):
        agentrl.make("no_such_pkg.envs:Env")
    with pytest.raises(agentrl.UserError, match="Nope"):
        agentrl.make("agentrl.environments.arithmetic:Nope")
    with pytest.raises(KeyError):  # still a KeyError, as before
        agentrl.make("arithmetc")
    with pytest.raises(ValueError, match="reserved"):
        agentrl.register("a:b", "x:y")


def test_entry_point_must_return_an_env():
    agentrl.register("not-an-env", dict)
    with pytest.raises(TypeError, match=r"not an agentrl\.Env"):
        agentrl.make("not-an-env")
