"""Fuzzing ``Env.step`` of every built-in environment with whatever a policy (or a client) might send.

After ``reset``, any action (text with broken or well-formed tool calls, an assistant message dict
with odd ``content`` and ``tool_calls``, plain garbage) must give a valid Gymnasium 5-tuple: new
messages, a finite float reward, ``terminated`` and ``truncated`` never both true, an info dict.
The only exception ``step`` may raise is the documented :class:`ResetNeeded`, after the episode ended.

Environments that run the real sandbox get few examples, and their python tool a short timeout.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentrl
from agentrl.chat.parsing import CLOSE, OPEN, THINK_CLOSE, THINK_OPEN
from agentrl.envs.core import ResetNeeded
from agentrl.envs.registry import registry

PURE = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SANDBOX = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# (id, make kwargs, uses the sandbox): every registered environment, the sandbox ones with short limits.
ENVIRONMENTS = [
    ("arithmetic", {}, False),
    ("codebreaker", {}, False),
    ("codebreaker", {"length": 2, "max_guesses": 1}, False),
    ("function-calling", {}, False),
    ("reasoning-gym", {}, False),
    ("reasoning-gym", {"tools": True}, True),
    ("math-python", {"timeout": 5}, True),
    ("code-tests", {"tool_timeout": 5, "test_timeout": 2}, True),
    ("sandbox-puzzles", {"timeout": 5}, True),
    ("sandbox-puzzles", {"tool_free": True}, False),
    ("sql-mcp", {"tool_timeout": 5}, False),  # its tool is a third-party MCP server's: fuzzed SQL reaches it
]

ANY_CHAR = st.characters(codec=None, categories=None)
ANY_TEXT = st.text(ANY_CHAR, max_size=60)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR, max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(ANY_CHAR, max_size=8), inner, max_size=3),
    max_leaves=8,
)
JSON_OBJECTS = st.dictionaries(st.text(ANY_CHAR, max_size=8), JSON_VALUES, max_size=3)
# Final answers each environment grades: boxed numbers, tags, guesses, code blocks.
ANSWERS = st.sampled_from(
    [
        "\\boxed{42}",
        "\\boxed{}",
        "\\boxed{" + "9" * 5000 + "}",
        "\\boxed{1e999}",
        "\\boxed{\\frac{1}{0}}",
        "The answer is 3/0.",
        "<answer>7</answer>",
        "<answer>",
        "<guess>123</guess>",
        "<guess>0123456789</guess>",
        "<guess>१२३</guess>",
        "12 34 56",
        "```python\ndef f(x):\n    return x\n```",
        "```python\nimport sys; sys.exit(0)\n```",
        "```\n\ud800\n```",
        "```python\n",
        "",
        " ",
        "<|im_end|>",
        THINK_OPEN + "hmm",
        THINK_CLOSE,
        OPEN,
        CLOSE,
    ]
)


# Arguments that fit the built-in tools' schemas, so calls really run (in the sandbox too), besides any JSON.
CODE = st.sampled_from(["print(1)", "x = 2", "x", "1/0", "print('\\ud800')", "import os; os.getpid()", "def f(:", ""])
PLAUSIBLE = {
    "string": CODE
    | st.sampled_from(["2+2", "12 * 34", "7 / 0", "2**1001", "2024-06-03", "10:00", "Lisbon", "EVT-123", "ACC-1234"]),
    "integer": st.integers(-5, 200),
    "number": st.integers(-5, 200) | st.floats(-1e3, 1e3),
    "array": st.lists(st.sampled_from(["a@b.test", "x"]), max_size=2),
}


def plausible_arguments(spec: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    params = spec["function"]["parameters"]
    fields = {}
    for key, schema in params.get("properties", {}).items():
        types = schema.get("type", "string")
        first = types[0] if isinstance(types, list) else types
        fields[key] = st.sampled_from(schema["enum"]) if "enum" in schema else PLAUSIBLE.get(first, JSON_VALUES)
    return st.fixed_dictionaries(fields)


def tool_calls(specs: list[dict[str, Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    """(name, arguments) of a call: to one of the environment's tools with fitting arguments, or anything."""
    fitting = [st.tuples(st.just(s["function"]["name"]), plausible_arguments(s)) for s in specs]
    names = st.sampled_from([*(s["function"]["name"] for s in specs), "nope"]) | JSON_VALUES
    anything = st.tuples(names, JSON_OBJECTS | JSON_VALUES)
    return st.one_of(*fitting, *fitting, anything) if fitting else anything


def tool_call_text(specs: list[dict[str, Any]]) -> st.SearchStrategy[str]:
    """A ``<tool_call>`` block in the Hermes format."""
    return tool_calls(specs).map(
        lambda c: f"{OPEN}{json.dumps({'name': c[0], 'arguments': c[1]}, ensure_ascii=False)}{CLOSE}"
    )


def structured_call(specs: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """An OpenAI-style ``tool_calls`` entry, its arguments an object or a JSON string (valid or not), or junk."""

    def entry(call: tuple[Any, Any], as_string: bool, call_id: Any) -> dict[str, Any]:
        name, arguments = call
        arguments = json.dumps(arguments) if as_string else arguments
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}

    function = st.fixed_dictionaries({}, optional={"name": JSON_VALUES, "arguments": ANY_TEXT | JSON_VALUES})
    return st.builds(entry, tool_calls(specs), st.booleans(), JSON_SCALARS) | function | JSON_VALUES


def actions(specs: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    call = tool_call_text(specs)
    text = st.lists(call | ANSWERS | ANY_TEXT, max_size=4).map("".join)
    parts = st.lists(st.fixed_dictionaries({"type": st.just("text")}, optional={"text": JSON_SCALARS}) | JSON_VALUES)
    message = st.fixed_dictionaries(
        {"role": st.just("assistant") | JSON_SCALARS},
        optional={
            "content": text | st.none() | parts | JSON_VALUES,
            "tool_calls": st.lists(structured_call(specs), max_size=3) | JSON_VALUES,
        },
    )
    garbage = st.none() | st.integers() | st.floats() | st.binary(max_size=20) | st.lists(ANY_TEXT, max_size=3)
    # Tool calls keep an episode going, so they come often; any other turn is a final answer.
    return st.one_of(call, call, text, message, garbage)


def check_step(result: Any) -> bool:
    """A valid ``(observation, reward, terminated, truncated, info)``; returns whether the episode ended."""
    assert isinstance(result, tuple) and len(result) == 5
    obs, reward, terminated, truncated, info = result
    assert isinstance(obs, list)
    for m in obs:
        assert isinstance(m, dict) and m["role"] in ("user", "tool") and isinstance(m["content"], str)
    json.dumps(obs, ensure_ascii=True)  # the trajectory log holds them
    assert isinstance(reward, float) and math.isfinite(reward)
    assert isinstance(terminated, bool) and isinstance(truncated, bool) and not (terminated and truncated)
    assert isinstance(info, dict)
    components = info.get("reward_components", {})
    assert all(isinstance(v, float) and math.isfinite(v) for v in components.values()), components
    if terminated:
        assert obs == []  # the task ended: nothing more is said to the policy
    # Truncation by MaxTurns passes the last step's messages through, as Gymnasium's TimeLimit does.
    return terminated or truncated


@pytest.fixture(scope="module")
def envs():
    made: dict[int, Any] = {}
    yield made
    for env in made.values():
        env.close()


def test_every_built_in_environment_is_fuzzed():
    # Other tests may register their own ids; the built-ins are the ones that point into agentrl.environments.
    built_in = {k for k, spec in registry().items() if str(spec.entry_point).startswith("agentrl.environments.")}
    assert {env_id for env_id, _, _ in ENVIRONMENTS} == built_in


@pytest.mark.parametrize(
    ("index", "env_id", "kwargs", "sandbox"),
    [(i, *e) for i, e in enumerate(ENVIRONMENTS)],
    ids=[f"{e[0]}-{i}" for i, e in enumerate(ENVIRONMENTS)],
)
def test_step_answers_any_action(envs, index, env_id, kwargs, sandbox):
    if env_id == "reasoning-gym":
        pytest.importorskip("reasoning_gym")  # an optional dependency (in the dev extras)
    env = envs.get(index) or envs.setdefault(index, agentrl.make(env_id, num_tasks=3, **kwargs))
    with pytest.raises(ResetNeeded):
        env.step("before reset")

    # Sandbox environments get few episodes, each of several turns, so that tools and grading really run.
    @(SANDBOX if sandbox else PURE)
    @given(st.integers(0, 2), st.lists(actions(env.tool_specs), min_size=3 if sandbox else 1, max_size=6))
    def fuzz(seed, episode):
        env.reset(seed=seed)
        ended = False
        for action in episode:
            if ended:
                with pytest.raises(ResetNeeded):
                    env.step(action)
                break
            ended = check_step(env.step(action))
        if not ended:
            env.on_truncate()  # as a wrapper would: free the episode's sandbox session

    fuzz()
