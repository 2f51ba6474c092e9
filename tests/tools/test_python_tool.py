"""The python tool through a real ToolEnv and a real sandbox: sessions per episode, formatting, infra errors."""

import pytest

import agentrl
from agentrl.chat.parsing import render_call_text
from agentrl.envs.tasks import Task
from agentrl.tools import LocalSandbox, python_tool
from agentrl.tools.python import format_result
from agentrl.tools.sandbox.base import ExecError, ExecResult


@pytest.fixture(scope="module")
def sb():
    s = LocalSandbox(pool_size=1)
    yield s
    s.close()


class SquareEnv(agentrl.ToolEnv):
    """Answer n*n; the python tool is available."""

    def __init__(self, sandbox, **kw):
        tasks = [Task(id=str(n), prompt=f"What is {n} squared?", answer=n * n) for n in (12, 345)]
        super().__init__(tasks, [python_tool(sandbox, timeout=2, max_output_chars=300)], **kw)

    def score(self, task, answer, messages):
        return float(answer.strip() == str(task.answer))


def call(code):
    return render_call_text("python", {"code": code})


def test_state_persists_within_an_episode_and_not_across(sb):
    env = SquareEnv(sb)
    env.reset(options={"task_id": "345"})
    obs, *_ = env.step(call("n = 345"))
    assert obs == [{"role": "tool", "name": "python", "content": "(no output)"}]
    obs, *_ = env.step(call("n * n"))
    assert obs[0]["content"] == "119025"
    _, reward, term, _, _ = env.step("119025")
    assert (reward, term) == (1.0, True)
    env.reset(options={"task_id": "12"})
    obs, *_ = env.step(call("n"))
    assert "NameError" in obs[0]["content"]
    env.close()


def test_two_calls_in_one_turn_share_the_session(sb):
    env = SquareEnv(sb)
    env.reset(seed=0)
    obs, _, _, _, info = env.step(call("print('a')") + call("print('b')"))
    assert sorted(m["content"] for m in obs) == ["a", "b"] and info["tool_calls"] == 2
    env.close()


def test_timeout_and_errors_are_explained_to_the_model(sb):
    env = SquareEnv(sb)
    env.reset(seed=0)
    env.step(call("keep = 1"))
    obs, *_ = env.step(call("import time\nprint('started')\ntime.sleep(30)"))
    text = obs[0]["content"]
    assert "started" in text and "timed out after 2 s" in text and "variables are gone" in text
    obs, *_ = env.step(call("keep"))
    assert "NameError" in obs[0]["content"]
    obs, *_ = env.step(call("print('x' * 5000)"))
    assert len(obs[0]["content"]) < 400 and "more characters" in obs[0]["content"]
    env.close()


def test_infra_failure_marks_the_episode_not_the_model(sb):
    class Broken:
        def session(self):
            return self

        def run(self, code, **kw):
            return ExecResult(infra_error="server crashed", exit_code=None)

        def close(self):
            pass

    env = SquareEnv(Broken())
    env.reset(seed=0)
    obs, _, term, _, info = env.step(call("1 + 1"))
    assert not term and "not your fault" in obs[0]["content"]
    assert info["infra_error"] and info["tool_errors"] == ["infra"]
    _, _, term, _, info = env.step("2")
    assert term and info["infra_error"]  # the final step still carries the mark


def test_format_result_parts():
    res = ExecResult(stdout="out\n", stderr="warn\n", result="3")
    assert format_result(res, timeout=1, max_chars=100) == "out\n[stderr]\nwarn\n[result]\n3"
    err = ExecResult(error=ExecError("ValueError", "bad", "Traceback...\nValueError: bad"), exit_code=1)
    assert format_result(err, timeout=1, max_chars=100).startswith("[error]\nTraceback")
    assert format_result(ExecResult(), timeout=1, max_chars=10) == "(no output)"


def test_tool_schema():
    t = python_tool(timeout=3)
    assert t.name == "python" and t.parameters["required"] == ["code"]
    assert t.timeout > 3  # the sandbox enforces the timeout; the tool wrapper only backstops it
