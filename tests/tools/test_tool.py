import asyncio
import time

import pytest
from transformers.utils import get_json_schema

import agentrl
from agentrl.chat.parsing import ToolCall
from agentrl.tools.runner import ToolRunner
from agentrl.tools.tool import Tool, ToolDefinitionError, format_result, tool


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def test_schema_comes_from_transformers_generator():
    t = tool(add)
    reference = get_json_schema(add)["function"]
    assert t.name == "add" == reference["name"]
    assert t.description == reference["description"]
    assert t.parameters["properties"] == reference["parameters"]["properties"]
    assert t.parameters["required"] == ["a"]
    assert t.parameters["additionalProperties"] is False
    assert t.spec == {
        "type": "function",
        "function": {"name": "add", **{k: v for k, v in t.spec["function"].items() if k != "name"}},
    }
    assert t(2, 3) == 5  # still a plain function


def test_decorator_forms_and_overrides():
    @agentrl.tool(name="plus", timeout=2)
    def f(x: float) -> float:
        """Increment.

        Args:
            x: A number.
        """
        return x + 1

    assert isinstance(f, Tool) and f.name == "plus" and f.timeout == 2
    assert f.parameters["properties"]["x"]["type"] == "number"


def test_missing_docstring_or_hint_is_a_clear_error():
    def nodoc(x: int) -> int:
        return x

    def nohint(x):
        """Do it.

        Args:
            x: thing.
        """

    with pytest.raises(ToolDefinitionError, match="nodoc"):
        tool(nodoc)
    with pytest.raises(ToolDefinitionError, match="nohint"):
        tool(nohint)


def test_validation_messages_name_the_problem():
    t = tool(add)
    assert t.validation_errors({"a": 1}) == []
    errs = t.validation_errors({"a": "1", "c": 2})
    assert any("'1' is not of type 'integer'" in e for e in errs)
    assert any("'c' was unexpected" in e for e in errs)


def run(calls, tools, **kw):
    return asyncio.run(ToolRunner(tools, **kw).run(calls))


def test_runner_reports_each_failure_kind_as_tool_message():
    def boom(x: int) -> int:
        """Fail.

        Args:
            x: ignored.
        """
        raise RuntimeError("kaput")

    outs = run(
        [
            ToolCall("add", {"a": 1, "b": 2}),
            ToolCall("nope", {}),
            ToolCall("add", {"b": 2}),
            ToolCall("boom", {"x": 1}),
        ],
        [add, boom],
    )
    assert [o.ok for o in outs] == [True, False, False, False]
    assert outs[0].message == {"role": "tool", "name": "add", "content": "3"}
    assert [o.error_kind for o in outs[1:]] == ["unknown_tool", "invalid_arguments", "exception"]
    assert "Available tools: add, boom" in outs[1].message["content"]
    assert "'a' is a required property" in outs[2].message["content"]
    assert "RuntimeError: kaput" in outs[3].message["content"]
    assert all(o.message["role"] == "tool" and o.message["content"].startswith("Error:") for o in outs[1:])


def test_sync_and_async_tools_time_out_without_blocking():
    @tool(timeout=0.2)
    def slow_sync(s: float) -> str:
        """Sleep.

        Args:
            s: seconds.
        """
        time.sleep(s)
        return "done"

    @tool(timeout=0.2)
    async def slow_async(s: float) -> str:
        """Sleep.

        Args:
            s: seconds.
        """
        await asyncio.sleep(s)
        return "done"

    t0 = time.perf_counter()
    outs = run([ToolCall("slow_sync", {"s": 5}), ToolCall("slow_async", {"s": 5})], [slow_sync, slow_async])
    assert time.perf_counter() - t0 < 2.0
    assert [o.error_kind for o in outs] == ["timeout", "timeout"]
    assert "timed out after 0.2 s" in outs[0].message["content"]


def test_calls_of_one_turn_run_concurrently():
    @tool
    def nap(ms: int) -> int:
        """Sleep some milliseconds.

        Args:
            ms: milliseconds.
        """
        time.sleep(ms / 1000)
        return ms

    @tool
    async def anap(ms: int) -> int:
        """Sleep some milliseconds.

        Args:
            ms: milliseconds.
        """
        await asyncio.sleep(ms / 1000)
        return ms

    calls = [ToolCall("nap", {"ms": 300}) for _ in range(4)] + [ToolCall("anap", {"ms": 300}) for _ in range(4)]
    t0 = time.perf_counter()
    outs = run(calls, [nap, anap])
    wall = time.perf_counter() - t0
    assert [o.message["content"] for o in outs] == ["300"] * 8
    assert wall < 1.2, f"8 x 300 ms calls took {wall:.2f}s; they ran one after another"


def test_results_are_rendered_and_capped():
    assert format_result({"a": [1, 2]}) == '{"a": [1, 2]}'
    long = format_result("x" * 10000, max_chars=200)
    assert len(long) <= 260 and "truncated" in long
    outs = run([ToolCall("add", {"a": 1})], [add], max_output_chars=100)
    assert outs[0].message["content"] == "1"


def test_duplicate_tool_names_rejected():
    with pytest.raises(ValueError, match="two tools"):
        ToolRunner([add, add])


# ----- regressions: every failure stays a message ---------------------------------------------


def one(fn, args=None, **tool_kw):
    t = tool(fn, **tool_kw)
    return run([ToolCall(t.name, args or {})], [t])[0]


def test_tool_raising_timeout_error_is_its_own_exception():
    def sleepy() -> str:
        """Raise a timeout of its own."""
        raise TimeoutError("upstream")

    for limit in (None, 5):
        out = one(sleepy, timeout=limit)
        assert out.error_kind == "exception" and "TimeoutError: upstream" in out.message["content"]


def test_unrenderable_results_and_errors_do_not_escape():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr")

        __str__ = __repr__

    class BadError(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    def big() -> int:
        """Return a huge int."""
        return 10**5000

    def hostile() -> list:
        """Return something unprintable."""
        return [Hostile()]

    def bad_error() -> None:
        """Raise an unprintable error."""
        raise BadError()

    def exits() -> None:
        """Call sys.exit."""
        raise SystemExit(3)

    async def async_exits() -> None:
        """Call sys.exit from a coroutine."""
        raise SystemExit(4)

    async def cancels() -> None:
        """Raise CancelledError itself."""
        raise asyncio.CancelledError()

    assert one(big).ok and len(one(big).message["content"]) <= 8192
    assert (one(hostile).ok and "unprintable" in one(hostile).message["content"]) or "Hostile" in one(hostile).message[
        "content"
    ]
    for fn in (bad_error, exits, async_exits, cancels):
        out = one(fn)
        assert not out.ok and out.error_kind == "exception" and out.message["content"].startswith("Error:"), fn


def test_error_text_is_capped():
    def loud() -> None:
        """Raise a huge error."""
        raise ValueError("x" * 10**6)

    def takes_int(n: int) -> int:
        """Take an int.

        Args:
            n: a number.
        """
        return n

    assert len(one(loud).message["content"]) < 9000
    out = run([ToolCall("takes_int", {"n": "y" * 10**6})], [tool(takes_int)], max_output_chars=500)[0]
    assert out.error_kind == "invalid_arguments" and len(out.message["content"]) < 600


def test_optional_parameters_accept_null():
    def opt(a: int, b: int | None = None) -> str:
        """Optional b.

        Args:
            a: required.
            b: optional.
        """
        return f"{a}-{b}"

    t = tool(opt)
    assert t.validation_errors({"a": 1, "b": None}) == [] and t.validation_errors({"a": 1, "b": 2}) == []
    assert t.validation_errors({"a": 1, "b": "2"})


def test_harness_timeout_of_self_limiting_tool_is_infra():
    def hang() -> None:
        """Hang."""
        time.sleep(2)

    t = tool(hang, timeout=0.2)
    t.timeout_is_infra = True
    assert run([ToolCall("hang", {})], [t])[0].error_kind == "infra"


def test_partial_is_a_definition_error():
    import functools

    with pytest.raises(ToolDefinitionError):
        tool(functools.partial(add, 1))
