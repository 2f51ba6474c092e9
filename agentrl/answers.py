"""Extract a final numeric answer from free text, tolerantly.

Models write answers many ways: ``\\boxed{1,234}``, ``Answer: 1234``, ``**1234**`` or a sentence
ending in the number. The order of preference is explicit markers first, then the last number.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_MARK = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)?\s*\**\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def parse_number(text: str) -> int | float | None:
    """Parse one number, allowing thousands separators; None if ``text`` is not a number.

    Integers stay ``int`` so that large answers compare exactly (a float loses digits past 2**53).
    """
    text = text.strip().replace("$", "").strip()
    if not re.fullmatch(_NUMBER, text):
        return None
    digits = text.replace(",", "")
    if "." not in digits:
        return int(digits)
    value = float(digits)
    return value if math.isfinite(value) else None


def extract_final_number(text: str) -> int | float | None:
    """The final numeric answer in ``text``, or None if there is none."""
    boxed = _BOXED.findall(text)
    if boxed:
        return parse_number(boxed[-1])
    marked = _ANSWER_MARK.findall(text)
    if marked:
        return parse_number(marked[-1])
    numbers = _ANY_NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None
