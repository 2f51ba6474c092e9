import pytest

from agentrl.tools import calculator, evaluate_expression


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(12 + 7) * 3", 57),
        ("7 / 2", 3.5),
        ("8 / 2", 4),
        ("-3 ** 2", -9),
        ("2^10", 1024),
        ("17 % 5", 2),
    ],
)
def test_arithmetic(expr, value):
    assert evaluate_expression(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "x + 1",
        "(1).__class__",
        "[1, 2]",
        "9 ** 9 ** 9",
        "10 ** 200",
        "1 +",
        "'a' * 3",
        "1" * 600,
    ],
)
def test_rejects_anything_but_bounded_arithmetic(expr):
    with pytest.raises(ValueError):
        evaluate_expression(expr)


def test_tool_schema():
    assert calculator.name == "calculator"
    assert calculator.parameters["required"] == ["expression"]
    assert calculator(expression="6*7") == "42"


def test_division_of_big_ints_is_exact():
    assert evaluate_expression("999999999 * 999999999 / 1") == 999999998000000001
    assert evaluate_expression("7 / 2") == 3.5
