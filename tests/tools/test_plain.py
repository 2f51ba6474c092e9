import math

import pytest

from agentrl.tools.sandbox.plain import NotPlain, decode, encode, strict_equal

VALUES = [
    None, True, 0, -7, 2**80, 1.5, float("inf"), "naïve", [1, [2, "x"]], (1, 2), {1, 2}, frozenset({"a"}),
    {"k": [1, {"n": None}], 3: (4,)}, [], {},
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES)
def test_round_trip_keeps_types(value):
    back = decode(encode(value))
    assert strict_equal(value, back) and type(back) is type(value)


def test_nan_round_trip():
    assert math.isnan(decode(encode(float("nan"))))


@pytest.mark.parametrize(
    "value",
    [
        object(),
        type("Liar", (int,), {"__eq__": lambda s, o: True})(1),
        [1, lambda: 0],
        {"k": bytearray(b"x")},
        b"bytes",
    ],
)
def test_non_plain_values_are_refused(value):
    with pytest.raises(NotPlain):
        encode(value)


def test_depth_and_size_limits():
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(NotPlain, match="deeper"):
        encode(deep)


@pytest.mark.parametrize(
    "data", [{"tuple": 1}, {"a": 1, "b": 2}, {"set": [[1]]}, {"dict": [[1]]}, {"int": 5}, {"x": []}]
)
def test_malformed_untrusted_data_is_refused(data):
    with pytest.raises((ValueError, TypeError)):
        decode(data)


def test_strict_equal_semantics():
    assert strict_equal(2.0, 2) and strict_equal(0.1 + 0.2, 0.3)
    assert not strict_equal(2, 2.0)  # an int was expected: a float is a different answer
    assert not strict_equal(1, True) and not strict_equal(True, 1)
    assert not strict_equal([1, 2], (1, 2)) and not strict_equal({"a": 1}, {"a": 1, "b": 2})
    assert strict_equal({1, 2}, {2, 1}) and not strict_equal("1", 1)
    assert strict_equal(float("nan"), float("nan"))
