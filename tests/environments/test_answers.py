from fractions import Fraction

import pytest

from agentrl.environments.answers import (
    boxed_contents,
    extract_final_number,
    extract_math_answer,
    extract_tagged_answer,
    numbers_match,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("so \\boxed{1,234}", 1234),
        ("\\boxed{7} but later 9", 7),
        ("Answer: -42", -42),
        ("The final answer is **3.5**", 3.5),
        ("first 3 then 15", 15),
        ("no numbers here", None),
        ("\\boxed{x}", None),
    ],
)
def test_extract_final_number(text, value):
    assert extract_final_number(text) == value


def test_parse_number_strictness():
    assert parse_number("1,000,000") == 1_000_000
    assert parse_number("$12") == 12
    assert parse_number("1,00") is None
    assert parse_number("12abc") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
        ("\\boxed{-\\dfrac{1}{2}}", Fraction(-1, 2)),
        ("\\boxed{6/3}", 2),
        ("The answer is $1,234.50.", 1234.5),
        ("Answer: 3/4 of the cake", Fraction(3, 4)),
        ("\\boxed{25\\%}", 25),
        ("\\boxed{12 \\text{ dollars}}", 12),
        ("\\boxed{x = 5}", 5),
        ("\\boxed{3 or 4}", None),
        ("\\boxed{1/0}", None),
        ("first 3/4, finally 15.", 15),
        ("nothing", None),
    ],
)
def test_extract_math_answer(text, value):
    assert extract_math_answer(text) == value


def test_boxed_contents_balances_braces():
    assert boxed_contents("\\boxed{\\frac{1}{2}} and \\boxed{7}") == ["\\frac{1}{2}", "7"]
    assert boxed_contents("\\boxed{unclosed") == []


def test_numbers_match():
    assert numbers_match(7, 7) and not numbers_match(7, 8)
    assert numbers_match(0.1 + 0.2, 0.3)
    assert numbers_match(Fraction(3, 4), 0.75)
    assert not numbers_match(None, 0) and not numbers_match(True, 1)
    assert not numbers_match(2**60 + 1, 2**60)  # ints compare exactly


def test_adversarial_numbers_score_as_no_answer_instead_of_raising():
    from agentrl.environments.answers import extract_math_answer, numbers_match, parse_math_number

    assert extract_math_answer("\\boxed{" + "9" * 400 + "}") is None
    assert extract_math_answer("\\boxed{" + "9" * 5000 + "}") is None
    assert parse_number("9" * 5000) is None
    assert not numbers_match(10**400, 1.5)
    # Pathological text (many unclosed \\boxed{, unit-like words, unclosed tags) still parses.
    assert extract_math_answer("\\boxed{" * 5000 + "1") == 1  # no box closes: the last number
    assert parse_math_number("a " * 30000) is None
    assert extract_tagged_answer("<answer>" * 8000) == ("", False)


def test_tolerance_only_absorbs_float_rounding():
    from agentrl.environments.answers import numbers_match

    assert numbers_match(0.1 + 0.2, 0.3) and numbers_match(12345.67, 12345.67)
    assert not numbers_match(12345.68, 12345.67)  # a cent off is wrong
    assert not numbers_match(2000001.0, 2000000)


def test_more_ways_to_write_a_number():
    from agentrl.environments.answers import boxed_contents, parse_math_number

    assert parse_math_number("\u22125") == -5 and parse_math_number(".5") == 0.5 and parse_math_number("-.25") == -0.25
    assert boxed_contents("\\boxed{\\frac{1}{2}} and \\boxed{\\boxed{5}}") == ["\\frac{1}{2}", "\\boxed{5}", "5"]
    assert extract_tagged_answer("<answer>x <ANSWER>y</answer>") == ("y", True)
