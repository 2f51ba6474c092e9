"""Extract a final numeric answer from free text, tolerantly.

Models write answers many ways: ``\\boxed{1,234}``, ``Answer: 1234``, ``**1234**`` or a sentence
ending in the number. The order of preference is explicit markers first, then the last number.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# Each whitespace run is anchored by a token that is not whitespace: two adjacent optional ``\s*`` runs
# (``\s*(?:is)?\s*``) can split the same spaces in quadratically many ways, and three in cubically many,
# so "answer" followed by a few hundred spaces used to take seconds to fail.
_ANSWER_MARK = re.compile(
    r"(?:final answer|answer)\s*(?:(?:is|:|=)\s*)?(?:\*+\s*)?(?:\$\s*)?(" + _NUMBER + ")", re.IGNORECASE
)
_ANY_NUMBER = re.compile(_NUMBER)
# No answer has hundreds of digits; refusing them keeps int()/float() from raising (Python's
# 4300-digit limit, float overflow) on adversarial text, which would look like a grader crash.
_MAX_NUMBER_CHARS = 200


def parse_number(text: str) -> int | float | None:
    """Parse one number, allowing thousands separators; None if ``text`` is not a number.

    Integers stay ``int`` so that large answers compare exactly (a float loses digits past 2**53).
    """
    text = text.strip().replace("$", "").strip()
    if len(text) > _MAX_NUMBER_CHARS or not re.fullmatch(_NUMBER, text):
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


# ----- math answers: fractions, LaTeX, percentages ---------------------------------------------
# The functions above accept plain numbers only. Word-problem answers also come as ``3/4``,
# ``\frac{3}{4}``, ``$1,234.50`` or ``25%``; the functions below accept those and compare values
# numerically, so the grader rewards the right number however the model chose to write it.

_FRAC_LATEX = re.compile(r"^(-?)\\[dt]?frac\{\s*(" + _NUMBER + r")\s*\}\{\s*(" + _NUMBER + r")\s*\}$")
_FRAC_SLASH = re.compile(r"^(" + _NUMBER + r")\s*/\s*(" + _NUMBER + r")$")
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\left|\\right|\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_UNIT_WORDS = re.compile(r"\s+[A-Za-z][A-Za-z .]*$")  # "12 dollars", "3.5 km"
_MATH_NUMBER = re.compile(r"-?\\[dt]?frac\{[^{}]*\}\{[^{}]*\}|" + _NUMBER + r"(?:\s*/\s*" + _NUMBER + r")?")
_MAX_ANSWER_CHARS = 300
_MATH_MARK = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)?\s*[*$\\( ]*", re.IGNORECASE)


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` in ``text``, braces balanced (so ``\\frac{}{}`` fits inside).

    One pass with a stack of open braces: linear in the text, however many ``\\boxed{`` are left open.
    """
    boxed_at = {m.end() - 1 for m in re.finditer(r"\\boxed\s*\{", text)}
    if not boxed_at:
        return []
    found: list[tuple[int, str]] = []
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            if start in boxed_at:
                found.append((start, text[start + 1 : i]))
    return [content for _, content in sorted(found)]


def parse_math_number(text: str) -> int | float | Fraction | None:
    """Parse one written answer: a number, a fraction (``3/4``, ``\\frac{3}{4}``) or a percentage.

    Currency signs, thousands separators, ``\\text{...}`` units, surrounding ``$...$`` and a trailing
    period are ignored. ``25%`` reads as 25, the number written, because questions that ask for a
    percentage expect that number. Fractions stay exact; None if ``text`` is not one number.
    """
    if len(text) > _MAX_ANSWER_CHARS:  # one number, however written, is short; also bounds the regexes
        return None
    text = text.replace("\u2212", "-")  # the Unicode minus sign
    text = _LATEX_NOISE.sub(lambda m: m.group(1) or "", text)
    text = text.rsplit("=", 1)[-1]  # "x = 5"
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "%").strip().strip("*").strip()
    text = _UNIT_WORDS.sub("", text).rstrip(".").rstrip("%").strip()
    if text.startswith("+"):
        text = text[1:]
    text = re.sub(r"^(-?)\.(?=\d)", r"\g<1>0.", text)  # ".5" -> "0.5"
    m = _FRAC_LATEX.match(text) or _FRAC_SLASH.match(text)
    if m is not None:
        sign = -1 if len(m.groups()) == 3 and m.group(1) else 1
        num, den = (parse_number(g) for g in m.groups()[-2:])
        if num is None or den is None or den == 0:
            return None
        value = sign * Fraction(str(num)) / Fraction(str(den))
        return int(value) if value.denominator == 1 else value
    return parse_number(text)


def extract_math_answer(text: str) -> int | float | Fraction | None:
    """The final answer in ``text``: the last ``\\boxed{}``, else the last "answer: ...", else the last number.

    A boxed answer that is not a number is not replaced by some other number from the text: the model
    committed to it, and guessing a different one would reward answers it never gave.
    """
    boxed = boxed_contents(text)
    if boxed:
        return parse_math_number(boxed[-1])
    marks = list(_MATH_MARK.finditer(text))
    if marks:
        m = _MATH_NUMBER.match(text, marks[-1].end())
        if m is not None:
            return parse_math_number(m.group())
    numbers = _MATH_NUMBER.findall(text)
    return parse_math_number(numbers[-1]) if numbers else None


def numbers_match(
    value: int | float | Fraction | None, reference: int | float | Fraction, rel_tol: float = 1e-9
) -> bool:
    """Whether ``value`` equals ``reference``: exactly when both are exact (int, Fraction), else within ``rel_tol``.

    The tolerance only absorbs float rounding: 1e-6 would already accept a cent off on 12,345.67.
    """
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, (int, Fraction)) and isinstance(reference, (int, Fraction)):
        return value == reference
    try:
        a, b = float(value), float(reference)
    except (OverflowError, ValueError):
        return False
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


# ----- free-form answers in tags ---------------------------------------------------------------
_TRAILING_PERIOD = re.compile(r"(?<=\S)\.$")


def extract_tagged_answer(text: str, tag: str = "answer") -> tuple[str, bool]:
    """The final answer in ``text`` as a string, and whether it was properly tagged.

    Preference: the last ``<tag>...</tag>``; an opened ``<tag>`` that was never closed (the rest of the
    text); the last ``\\boxed{}``; the text after the last "final answer:" / "answer:"; the whole text.
    Untagged one-line answers lose a sentence-ending period ("The answer is 42." gives "42").
    """
    text = text or ""
    # The last closing tag and the last opening tag before it: plain searches, linear in the text
    # (a lazy regex rescans the rest of the text for every unclosed opening tag).
    lower, opening, closing = text.lower(), f"<{tag.lower()}>", f"</{tag.lower()}>"
    end = lower.rfind(closing)
    start = lower.rfind(opening, 0, end) if end != -1 else -1
    if start != -1:
        inner = text[start + len(opening) : end].strip()
        return (_TRAILING_PERIOD.sub("", inner) if "\n" not in inner else inner), True
    opened = list(re.finditer(re.escape(f"<{tag}>"), text, flags=re.IGNORECASE))
    if opened:
        return text[opened[-1].end() :].strip(), False
    boxed = boxed_contents(text)
    if boxed:
        return boxed[-1].strip(), False
    marks = list(re.finditer(r"(?:final answer|answer)\s*(?:is\s*:?|:)\s*", text, flags=re.IGNORECASE))
    rest = text[marks[-1].end() :] if marks else text
    rest = rest.strip().strip("*").strip()
    if "\n" not in rest:
        rest = _TRAILING_PERIOD.sub("", rest)
    return rest, False
