"""Fuzzing the answer extractors: whatever the model's final turn says, grading reads it without raising.

An extractor that raises (or hangs) on odd text would crash the grader of an episode instead of scoring
it 0. For arbitrary text, with lone surrogates, huge numbers and unbalanced markup:

* the numeric extractors return an int, a finite float, a Fraction or None, as documented;
* the string extractors return str (and a bool for "was it tagged"), or None where documented;
* every piece they return comes from the text itself;
* none is super-linear on the repetitive text a degenerate policy writes.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentrl.environments.answers import (
    boxed_contents,
    extract_final_number,
    extract_math_answer,
    extract_tagged_answer,
    numbers_match,
    parse_math_number,
    parse_number,
)
from agentrl.environments.code_tests import extract_code
from agentrl.environments.codebreaker import parse_guess
from agentrl.environments.sandbox_puzzles import parse_integer

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

ANY_CHAR = st.characters(codec=None, categories=None)
# Answer-shaped pieces: markers, LaTeX, separators, numbers of every size, and their broken halves.
PIECES = st.sampled_from(
    [
        "\\boxed{",
        "\\boxed {",
        "}",
        "{",
        "\\frac{",
        "\\dfrac{",
        "}{",
        "\\text{",
        "\\left(",
        "\\right)",
        "\\$",
        "$",
        "%",
        "\\%",
        "=",
        "/",
        "-",
        "+",
        "\u2212",
        ".",
        ",",
        " ",
        "\n",
        "*",
        "**",
        "answer",
        "Answer: ",
        "final answer is",
        "<answer>",
        "</answer>",
        "<ANSWER>",
        "<guess>",
        "</guess>",
        "```",
        "```python\n",
        "```py\n",
        "```text\n",
        "\n```\n",
        "    ",
        "0",
        "7",
        "1,234",
        "1,23",
        "3.5",
        ".5",
        "1e999",
        "9" * 400,
        "9" * 5000,
        "0" * 300 + "1",
        "\u0663",  # an Arabic-Indic digit: \d matches it, int() reads it
        "\ud800",
        "\x00",
    ]
)
TEXT = st.lists(PIECES | st.text(ANY_CHAR, max_size=8), max_size=40).map("".join) | st.text(ANY_CHAR, max_size=200)
REFERENCES = (
    st.integers() | st.integers(10**300, 10**4000) | st.floats() | st.fractions() | st.just(Fraction(10**400, 3))
)
# What an extractor may hand over: a number of any size, or None (nothing found).
VALUES = REFERENCES | st.none() | st.booleans()


def assert_number(value) -> None:
    assert value is None or type(value) in (int, float, Fraction), value
    if isinstance(value, float):
        assert math.isfinite(value)


@FUZZ
@given(TEXT)
@example("answer" + " " * 200 + "x")
@example("\\boxed{" * 50)
@example("\\boxed{\\frac{1}{0}}")
@example("\\boxed{" + "9" * 5000 + "}")
def test_numeric_extractors(text):
    assert_number(parse_number(text))
    assert_number(extract_final_number(text))
    assert_number(parse_math_number(text))
    value = extract_math_answer(text)
    assert_number(value)
    assert numbers_match(value, 42) in (True, False)
    boxes = boxed_contents(text)
    assert isinstance(boxes, list) and all(isinstance(b, str) and b in text for b in boxes)
    assert len(boxes) <= text.count("\\boxed")
    integer = parse_integer(text)
    assert integer is None or type(integer) is int


@FUZZ
@given(VALUES, REFERENCES)
def test_numbers_match_any_pair(value, reference):
    result = numbers_match(value, reference)
    assert result in (True, False)
    if value is None or isinstance(value, bool):
        assert result is False


@FUZZ
@given(TEXT, st.sampled_from(["answer", "guess", "a.b", "x(", "[", "\\d+"]))
def test_extract_tagged_answer(text, tag):
    answer, tagged = extract_tagged_answer(text, tag)
    assert isinstance(answer, str) and isinstance(tagged, bool)
    assert answer.strip(".") in text or answer.strip(".") in text.replace("\n", "")
    if tagged:
        assert f"<{tag}>".lower() in text.lower() and f"</{tag}>".lower() in text.lower()


@FUZZ
@given(TEXT)
def test_extract_code(text):
    code = extract_code(text)
    assert code is None or (isinstance(code, str) and code.endswith("\n"))
    if code is not None:
        assert "```" in text


@FUZZ
@given(TEXT, st.integers(2, 6))
def test_parse_guess(text, length):
    guess, problem = parse_guess(text, length)
    assert (guess is None) != (problem is None)
    if guess is not None:
        assert len(guess) == length and guess.isascii() and guess.isdigit() and len(set(guess)) == length
    else:
        assert isinstance(problem, str) and problem and "\n" not in problem


def _seconds(fn, text: str) -> float:
    start = time.perf_counter()
    fn(text)
    return time.perf_counter() - start


def test_extractors_stay_linear_on_degenerate_text():
    """Repetitive text is what a collapsing policy writes; none of these may backtrack for minutes on it.

    "answer" and 2,000 spaces took about 30 s per 300 spaces, cubically more with more, before the
    answer-marker regex was rewritten; every case here now takes milliseconds (the bound is generous
    for a loaded machine).
    """
    texts = [
        "answer" + " " * 20_000 + "x",
        "final answer is" + " " * 20_000 + "*" * 20_000 + "x",
        "answer: " * 5_000,
        "answer $ " * 5_000,
        "1," * 20_000 + "x",
        "1 " * 20_000 + "/",
        "\\boxed{" * 20_000,
        "\\frac{" * 20_000,
        "<answer>" * 20_000,
        "```python\n" * 20_000,
    ]
    extractors = [extract_final_number, extract_math_answer, extract_tagged_answer, boxed_contents, extract_code]
    for text in texts:
        for fn in extractors:
            assert _seconds(fn, text) < 2.0, (fn.__name__, text[:30])
