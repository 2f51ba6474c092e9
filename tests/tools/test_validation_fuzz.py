"""Fuzzing tool arguments: every built-in tool answers any JSON arguments with a ``tool`` message.

The model writes a tool's arguments, so they are hostile input. ``ToolRunner.run_one`` must turn
each call into a message, a result or ``Error: ...``, and never raise into the episode. Arguments come
from each tool's own JSON schema (valid ones, so the tools really run) mixed with arbitrary JSON
values (so validation is exercised). For the world tools of ``function-calling``, arguments that pass
the schema must also not make the tool itself crash: a value the world cannot take (an amount that
overflows, an unknown unit) is an ``Error:`` the tool writes, not an exception the runner catches.

The ``python`` tool runs in the real sandbox: its schema is fuzzed without running (``validation_errors``),
and only a few calls run for real, to keep the test fast.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentrl
from agentrl.chat.parsing import ToolCall
from agentrl.tools.runner import ToolOutcome, ToolRunner

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
# Eleven world tools, each example an episode (reset, call, grade): fewer examples per tool.
WORLD = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SANDBOX = settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
ERROR_KINDS = {"unknown_tool", "invalid_arguments", "timeout", "exception", "infra"}

ANY_CHAR = st.characters(codec=None, categories=None)
HUGE_INTS = st.integers(10**300, 10**4000) | st.integers(-(10**4000), -(10**300))
NUMBERS = (
    st.integers()
    | HUGE_INTS
    | st.floats()  # NaN and inf too: a structured tool call from an API server can carry them
    | st.sampled_from([0, -1, 1, 5, 720, 721, 0.001, 0.005, 1e-300, 1e300, 2**53 + 1])
)
JSON_SCALARS = st.none() | st.booleans() | NUMBERS | st.text(ANY_CHAR, max_size=30)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=10), inner, max_size=4),
    max_leaves=12,
)


def values_for(schema: dict[str, Any], hints: list[Any]) -> st.SearchStrategy[Any]:
    """Values meant to fit ``schema`` (so the tool really runs), or values from ``hints``, or anything."""
    types = schema.get("type", [])
    types = types if isinstance(types, list) else [types]
    options: list[st.SearchStrategy[Any]] = []
    if "enum" in schema:
        options.append(st.sampled_from(schema["enum"]))
    if "string" in types:
        if "pattern" in schema:
            options.append(st.from_regex(schema["pattern"]))
        options.append(st.text(ANY_CHAR, min_size=schema.get("minLength", 0), max_size=40))
    if "integer" in types:
        lo, hi = schema.get("minimum"), schema.get("maximum")
        options += [st.integers(lo, hi), HUGE_INTS]
    if "number" in types:
        options.append(NUMBERS)
    if "array" in types:
        options.append(st.lists(values_for(schema.get("items", {}), hints), max_size=4))
    if "null" in types:
        options.append(st.none())
    if hints:
        options.append(st.sampled_from(hints))
    return st.one_of(*options, JSON_VALUES) if options else JSON_VALUES


def arguments_for(parameters: dict[str, Any], hints: list[Any]) -> st.SearchStrategy[Any]:
    """Argument objects shaped by the schema (required keys usually present), plus stray keys and non-objects."""
    props, required = parameters.get("properties", {}), parameters.get("required", [])
    shaped = st.fixed_dictionaries(
        {k: values_for(props[k], hints) for k in required},
        optional={k: values_for(v, hints) for k, v in props.items() if k not in required}
        | {"unexpected": JSON_VALUES, "": JSON_VALUES, "code\x00": JSON_VALUES},
    )
    loose = st.dictionaries(st.sampled_from([*props, "x"]), JSON_VALUES, max_size=4)
    return st.one_of(shaped, shaped, loose, JSON_VALUES)


def run(runner: ToolRunner, name: str, arguments: Any) -> ToolOutcome:
    return asyncio.run(runner.run_one(ToolCall(name=name, arguments=arguments)))


def check_outcome(runner: ToolRunner, name: str, arguments: Any, outcome: ToolOutcome) -> None:
    message = outcome.message
    assert message["role"] == "tool" and message["name"] == name
    assert isinstance(message["content"], str)
    json.dumps(message, ensure_ascii=True)  # the trajectory log and the chat template need it as JSON
    problems = runner.tools[name].validation_errors(arguments)
    assert all(isinstance(p, str) and p for p in problems)
    if problems:
        assert outcome.error_kind == "invalid_arguments" and not outcome.ok
        assert message["content"].startswith(f"Error: invalid arguments for {name!r}: ")
    if outcome.ok:
        assert outcome.error_kind is None
    else:
        assert outcome.error_kind in ERROR_KINDS
        assert message["content"].startswith("Error: ")


# ----- function-calling: eleven tools over a simulated world ---------------------------------------


@pytest.fixture(scope="module")
def world_env():
    env = agentrl.make("function-calling")
    env.reset(seed=0)
    yield env
    env.close()


def world_hints(env) -> list[Any]:
    """Names, ids, dates and cities of the episode's world, so fuzzed calls also hit things that exist."""
    w = env.unwrapped.backend.world
    hints: list[Any] = [c["name"] for c in w.contacts] + [c["email"] for c in w.contacts]
    hints += list(w.events) + [e["date"] for e in w.events.values()] + [e["title"] for e in w.events.values()]
    hints += list(w.products) + [p["name"] for p in w.products.values()] + list(w.accounts)
    hints += ["Lisbon", "oslo ", "2024-06-01", "2024-06-30", "2024-07-01", "2024-02-30", "0000-00-00", "23:59"]
    return hints


def world_tool_names():
    env = agentrl.make("function-calling")
    names = sorted(env.unwrapped.runner.tools)
    env.close()
    return names


@pytest.mark.parametrize("name", world_tool_names())
def test_world_tools_answer_any_arguments(world_env, name):
    runner = world_env.unwrapped.runner
    hints = world_hints(world_env)

    @WORLD
    @given(arguments_for(runner.tools[name].parameters, hints))
    def fuzz(arguments):
        world_env.reset(seed=0)  # a fresh world: earlier examples' orders and transfers do not pile up
        outcome = run(runner, name, arguments)
        check_outcome(runner, name, arguments, outcome)
        # Schema-valid arguments reach the tool, which answers bad values itself instead of crashing.
        assert outcome.error_kind in (None, "invalid_arguments"), outcome.message["content"]
        trace = world_env.unwrapped.backend.trace
        if outcome.ok and not outcome.message["content"].startswith("Error"):
            assert [c["name"] for c in trace] == [name]
        else:
            assert trace == []  # a refused call changes nothing
        # The grader reads the trace whatever it holds.
        _, reward, terminated, _, info = world_env.step("Done.")
        assert terminated and reward in (0.0, 1.0) and math.isfinite(info["reward_components"]["invalid_calls"])

    fuzz()


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        # Each of these used to raise inside the tool (OverflowError, ValueError) or answer "inf km".
        ("convert_units", {"value": 10**400, "from_unit": "km", "to_unit": "mi"}, "Error: the value is out of range"),
        ("convert_units", {"value": 1e308, "from_unit": "mi", "to_unit": "km"}, "Error: the value is out of range"),
        ("convert_units", {"value": float("nan"), "from_unit": "c", "to_unit": "f"}, "Error: the value is out of"),
        ("convert_units", {"value": 12, "from_unit": "kg", "to_unit": "km"}, "Error: cannot convert kg"),
        ("transfer_funds", {"from_account": "-", "to_account": "-", "amount": float("inf")}, "Error: the amount is"),
        ("transfer_funds", {"from_account": "-", "to_account": "-", "amount": 10**400}, "Error: the amount is not"),
    ],
)
def test_world_tools_refuse_values_out_of_range(world_env, name, arguments, expected):
    world_env.reset(seed=0)
    if name == "transfer_funds":  # real accounts, so that the amount is what gets refused
        src, dst = list(world_env.unwrapped.backend.world.accounts)[:2]
        arguments = {**arguments, "from_account": src, "to_account": dst}
    outcome = run(world_env.unwrapped.runner, name, arguments)
    assert outcome.ok and outcome.message["content"].startswith(expected), outcome.message
    assert world_env.unwrapped.backend.trace == []


# ----- the calculator ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calculator_runner():
    from agentrl.tools.calculator_tool import calculator

    return ToolRunner([calculator])


EXPRESSIONS = st.lists(
    st.sampled_from(["1", "9", "0", "2.5", "1e308", "(", ")", "+", "-", "*", "/", "//", "%", "**", "^", "×", "÷"])
    | st.sampled_from([" ", "9" * 400, "x", "__import__", "[1]", "1j", "'a'", "\x00", "\ud800"]),
    max_size=30,
).map("".join)


@FUZZ
@given(arguments_for({"properties": {"expression": {"type": "string"}}, "required": ["expression"]}, []))
def test_calculator_answers_any_arguments(calculator_runner, arguments):
    check_outcome(calculator_runner, "calculator", arguments, run(calculator_runner, "calculator", arguments))


@FUZZ
@given(EXPRESSIONS)
def test_calculator_answers_any_expression(calculator_runner, expression):
    outcome = run(calculator_runner, "calculator", {"expression": expression})
    check_outcome(calculator_runner, "calculator", {"expression": expression}, outcome)
    # A bad expression is the model's error, reported by the tool; a timeout would mean it hung.
    assert outcome.error_kind in (None, "exception"), outcome.message["content"]


def test_every_environment_tool_is_covered():
    """The tools the built-in environments offer are the ones fuzzed here (a new one must be added)."""
    pytest.importorskip("reasoning_gym")  # an optional dependency (in the dev extras)
    offered = set()
    for env_id, kwargs in [
        ("arithmetic", {}),
        ("function-calling", {}),
        ("math-python", {}),
        ("code-tests", {}),
        ("sandbox-puzzles", {}),
        ("reasoning-gym", {"tools": True}),
    ]:
        env = agentrl.make(env_id, num_tasks=1, **kwargs)
        offered |= set(env.unwrapped.runner.tools)
        env.close()
    assert offered == {"calculator", "python", *world_tool_names()}


# ----- the python tool (the real sandbox) -----------------------------------------------------------


@pytest.fixture(scope="module")
def python_runner():
    from agentrl.tools import python_tool

    runner = ToolRunner([python_tool(timeout=5)])
    yield runner
    runner.close()


@FUZZ
@given(arguments_for({"properties": {"code": {"type": "string"}}, "required": ["code"]}, []))
def test_python_tool_schema_judges_any_arguments(python_runner, arguments):
    # Validation alone: the sandbox is not started for these.
    problems = python_runner.tools["python"].validation_errors(arguments)
    assert all(isinstance(p, str) and p for p in problems)
    valid = isinstance(arguments, dict) and set(arguments) == {"code"} and isinstance(arguments["code"], str)
    assert (problems == []) == valid


@SANDBOX
@given(
    arguments_for({"properties": {"code": {"type": "string"}}, "required": ["code"]}, [])
    | st.sampled_from(["print('x' * 100_000)", "1/0", "import sys; sys.exit(3)", "\ud800", "def f(:"]).map(
        lambda code: {"code": code}
    )
)
def test_python_tool_answers_any_arguments(python_runner, arguments):
    outcome = run(python_runner, "python", arguments)
    check_outcome(python_runner, "python", arguments, outcome)
    assert outcome.error_kind != "infra", outcome.message["content"]  # the model's code never breaks the sandbox
