import pytest

import agentrl
from agentrl.envs.core import Env, ResetNeeded
from agentrl.envs.wrappers import MaxTurns, Wrapper


class CountEnv(Env):
    """Counts turns; terminates when the action is 'stop'."""

    def __init__(self):
        self.closed = 0
        self.active = False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.active = True
        return [{"role": "user", "content": f"n={self.np_random.randint(0, 10**6)}"}], {}

    def step(self, action):
        if not self.active:
            raise ResetNeeded("reset first")
        done = action == "stop"
        self.active = not done
        return [] if done else [{"role": "user", "content": "again"}], float(done), done, False, {}

    def close(self):
        self.closed += 1


def test_seeded_reset_is_reproducible():
    env = CountEnv()
    assert env.reset(seed=3)[0] == env.reset(seed=3)[0]
    assert env.reset(seed=3)[0] != env.reset(seed=4)[0]


def test_context_manager_closes():
    with CountEnv() as env:
        env.reset()
    assert env.closed == 1


def test_max_turns_truncates_and_termination_wins():
    env = MaxTurns(CountEnv(), max_turns=2)
    env.reset(seed=0)
    assert env.step("go")[2:4] == (False, False)
    _, _, term, trunc, info = env.step("go")
    assert (term, trunc, info["truncated_by"]) == (False, True, "max_turns")
    with pytest.raises(ResetNeeded):
        env.step("go")
    env.reset()
    env.step("go")
    _, reward, term, trunc, _ = env.step("stop")  # ends on the limit step: terminated, not truncated
    assert (reward, term, trunc) == (1.0, True, False)


def test_max_turns_rejects_nonpositive_limit():
    with pytest.raises(ValueError):
        MaxTurns(CountEnv(), 0)


def test_wrapper_passes_through():
    inner = CountEnv()
    env = Wrapper(inner)
    assert env.unwrapped is inner
    env.reset(seed=1)
    assert env.active is True  # attribute access falls through
    env.close()
    assert inner.closed == 1
    assert "CountEnv" in repr(env)


def test_check_env_accepts_a_minimal_user_env():
    agentrl.check_env(CountEnv())  # a user-written env without tools passes
    warnings = agentrl.check_env(MaxTurns(CountEnv(), 3))
    assert all(isinstance(w, str) for w in warnings)


def test_truncation_releases_the_inner_episode():
    from agentrl.chat.parsing import render_call_text
    from agentrl.envs.tasks import Task
    from agentrl.envs.tool_env import ToolEnv

    resets = []

    @agentrl.tool
    def ping() -> str:
        """Ping."""
        return "pong"

    ping.on_reset = lambda: resets.append(1)

    class E(ToolEnv):
        def __init__(self):
            super().__init__([Task("a", "x")], [ping])

        def score(self, task, answer, messages):
            return 0.0

    env = MaxTurns(E(), 1)
    env.reset()
    before = len(resets)
    _, _, _, trunc, _ = env.step(render_call_text("ping", {}))
    assert trunc and len(resets) == before + 1 and env.unwrapped._active is False


def test_zero_max_turns_is_rejected():
    with pytest.raises(ValueError, match="max_turns"):
        agentrl.make("arithmetic", max_turns=0)


def test_check_env_leaves_the_env_open():
    env = agentrl.make("arithmetic", num_tasks=5)
    agentrl.check_env(env)
    env.reset(seed=0)  # still usable
    assert env.step("0")[2] is True
