import pytest

from agentrl.answers import extract_final_number, parse_number


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
