"""Fuzzing the tool-call parser: whatever a policy writes, ``parse_turn`` answers with calls and errors.

Policies under RL emit every kind of broken output, and a parser exception would end the episode (or
the training step) instead of teaching the model. These properties hold for any input:

* nothing raises, for arbitrary text (lone surrogates included), near-miss ``<tool_call>`` blocks,
  huge or deeply nested JSON;
* every problem is a ``ParseError`` of a documented kind, with a short message for the model;
* a turn that contains a tool-call tag is tool use (a call or an error), never a final answer;
* tags never leak into the visible content or the reasoning;
* well-formed calls survive the round trip, whatever their arguments.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.chat.parsing import (
    CLOSE,
    DEFAULT_MAX_CALL_CHARS,
    MAX_ERRORS,
    OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    ParseError,
    ToolCall,
    decode_json,
    parse_turn,
    render_call_text,
    validate_payload,
)

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

KINDS = {
    "invalid_json",
    "too_large",
    "empty_call",
    "missing_name",
    "arguments_not_object",
    "not_object",
    "unclosed",
    "stray_close",
    "call_in_think",
    "too_many_calls",
    "too_many_errors",
}
# Every character, lone surrogates and control characters included: decoded model output can hold them.
ANY_CHAR = st.characters(codec=None, categories=None)
ANY_TEXT = st.text(ANY_CHAR, max_size=300)

# JSON values as json.loads returns them (finite floats only: JSON has no NaN).
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(ANY_CHAR, max_size=20)
    | st.sampled_from([OPEN, CLOSE, THINK_OPEN, THINK_CLOSE, f"print('{CLOSE}')"])  # tags inside strings are data
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=8), inner, max_size=4),
    max_leaves=15,
)
JSON_OBJECTS = st.dictionaries(st.text(ANY_CHAR, max_size=8), JSON_VALUES, max_size=4)

# Pieces a broken call is made of: tags and near-miss tags, JSON punctuation, whole good and bad calls.
FRAGMENTS = st.sampled_from(
    [
        OPEN,
        CLOSE,
        THINK_OPEN,
        THINK_CLOSE,
        "<tool_call",
        "tool_call>",
        "</tool_call",
        "<tool_call >",
        "</ tool_call>",
        "<TOOL_CALL>",
        "<think",
        "{",
        "}",
        "[",
        "]",
        '"',
        "\\",
        ":",
        ",",
        " ",
        "\n",
        '"name"',
        '"arguments"',
        '"parameters"',
        '"calculator"',
        "null",
        "NaN",
        "Infinity",
        "1e999",
        "9" * 5000,
        '{"name": "calculator", "arguments": {"expression": "1+1"}}',
        '{"name": "calculator", "arguments": "1+1"}',
        '{"name": "", "arguments": {}}',
        '{"arguments": {}}',
        "[1, 2]",
        '{"name": "x", "arguments": {"s": "</tool_call>"}}',
        '{"name": "x", "arguments": {"s": "\\ud800"}}',
        "<|im_end|>",
        "<|endoftext|>",
        "\ud800",
        "\x00",
    ]
)
PAYLOADS = (
    st.fixed_dictionaries(
        {"name": st.sampled_from(["calculator", "f", " ", ""]) | JSON_VALUES},
        optional={"arguments": JSON_OBJECTS | JSON_VALUES, "parameters": JSON_OBJECTS},
    )
    | JSON_VALUES
)


@st.composite
def near_miss_json(draw) -> str:
    """The JSON of a call, sometimes damaged the way sampled text is: cut short, a character lost, junk spliced in."""
    raw = json.dumps(draw(PAYLOADS), ensure_ascii=draw(st.booleans()))
    how = draw(st.sampled_from(["keep", "keep", "cut", "drop", "splice"]))
    if how == "keep" or not raw:
        return raw
    i = draw(st.integers(0, len(raw) - 1))
    if how == "cut":
        return raw[:i]
    if how == "drop":
        return raw[:i] + raw[i + 1 :]
    return raw[:i] + draw(FRAGMENTS) + raw[i:]


BLOCKS = st.tuples(
    st.sampled_from([OPEN, OPEN, OPEN, "<tool_call", "<tool_call >", ""]),
    st.sampled_from(["", "\n", " \n\t"]),
    near_miss_json(),
    st.sampled_from(["", "\n", "  "]),
    st.sampled_from([CLOSE, CLOSE, CLOSE, "", "</tool_call", CLOSE + CLOSE, OPEN]),
).map("".join)
NEAR_MISS = st.lists(BLOCKS | FRAGMENTS | st.text(ANY_CHAR, max_size=5), max_size=25).map("".join)


def check_turn(text: str, *, max_calls: int = 8) -> None:
    """The invariants every parsed turn keeps, whatever ``text`` is."""
    turn = parse_turn(text, max_calls=max_calls)
    assert isinstance(turn.content, str)
    assert turn.reasoning is None or isinstance(turn.reasoning, str)
    assert len(turn.calls) <= max_calls
    assert len(turn.errors) <= MAX_ERRORS
    for call in turn.calls:
        assert isinstance(call, ToolCall)
        assert isinstance(call.name, str) and call.name.strip() and len(call.name) <= 200
        assert isinstance(call.arguments, dict)
    for err in turn.errors:
        assert isinstance(err, ParseError)
        assert err.kind in KINDS, err
        assert err.message and len(err.message) < 400, err  # a lesson for the model, not a dump of its output
    # A tag means the model tried to use a tool: the turn must be answered, not graded as a final answer.
    assert turn.attempted_tool_use == (OPEN in text or CLOSE in text)
    for part in (turn.content, turn.reasoning or ""):
        for tag in (OPEN, CLOSE, THINK_OPEN, THINK_CLOSE):
            assert tag not in part, (tag, part)
    # The structured message renders to JSON: logs and chat templates need it.
    json.dumps(turn.to_message(), ensure_ascii=True)


@FUZZ
@given(ANY_TEXT)
def test_arbitrary_text_never_raises(text):
    check_turn(text)


@FUZZ
@given(NEAR_MISS)
def test_near_miss_tool_calls_become_parse_errors(text):
    check_turn(text)
    check_turn(text, max_calls=1)


@FUZZ
@given(PAYLOADS, st.data())
def test_each_near_miss_is_reported_with_its_kind(payload, data):
    """One broken call at a time, so the expected kind is known: the model is told what exactly is wrong."""
    raw = json.dumps(payload, ensure_ascii=data.draw(st.booleans()))
    expected = validate_payload(payload)
    kinds = [e.kind for e in parse_turn(f"{OPEN}{raw}{CLOSE}").errors]
    assert kinds == ([] if isinstance(expected, ToolCall) else [expected.kind])
    assert [e.kind for e in parse_turn(f"text {OPEN}\n{raw}").errors] == ["unclosed"]
    if OPEN not in raw and CLOSE not in raw:  # outside a call, a tag in a JSON string is a tag
        assert [e.kind for e in parse_turn(f"{raw} {CLOSE}").errors] == ["stray_close"]
    turn = parse_turn(f"{THINK_OPEN}{OPEN}{raw}{CLOSE}{THINK_CLOSE}answer")
    assert [e.kind for e in turn.errors] == ["call_in_think"] and not turn.calls
    if isinstance(payload, dict):  # a JSON object cut anywhere is never valid JSON
        cut = raw[: data.draw(st.integers(1, len(raw) - 1))]
        kinds = [e.kind for e in parse_turn(f"{OPEN}{cut}{CLOSE}").errors]
        # In broken JSON nothing says where a string ends, so a tag inside one is read as a tag.
        if OPEN not in cut and CLOSE not in cut:
            assert kinds == ["invalid_json"]


def test_a_close_tag_inside_a_string_is_not_the_close():
    """Valid JSON holding "</tool_call>" in a string and no real close tag after it used to be reported as
    invalid JSON (cut at the tag inside the string) instead of as an unclosed call."""
    call = '{"name": "python", "arguments": {"code": "print(\'</tool_call>\')"}}'
    assert [e.kind for e in parse_turn(f"{OPEN}{call}").errors] == ["unclosed"]
    turn = parse_turn(f"{OPEN}{call} and more</tool_call>")
    assert [(e.kind, e.message) for e in turn.errors] == [
        ("invalid_json", "tool call has extra text after its JSON object.")
    ]
    assert parse_turn(f"{OPEN}{call}{CLOSE}").calls[0].arguments == {"code": "print('</tool_call>')"}


@FUZZ
@given(st.text(ANY_CHAR, max_size=40).filter(lambda s: s.strip()), JSON_OBJECTS, ANY_TEXT.map(lambda s: s[:40]))
def test_well_formed_calls_round_trip(name, arguments, prose):
    # Tags in the prose would be parsed as such; the round trip is about the call.
    for tag in (OPEN, CLOSE, THINK_OPEN, THINK_CLOSE, "<|"):
        prose = prose.replace(tag, "")
    turn = parse_turn(f"{prose}\n{render_call_text(name, arguments)}")
    assert turn.errors == []
    assert [(c.name, c.arguments) for c in turn.calls] == [(name.strip()[:200], arguments)]


@FEW
@given(st.lists(st.dictionaries(st.text(max_size=3), st.integers()), min_size=1, max_size=12), st.integers(1, 8))
def test_more_calls_than_allowed_are_reported(arguments, max_calls):
    text = "\n".join(render_call_text("f", a) for a in arguments)
    turn = parse_turn(text, max_calls=max_calls)
    assert len(turn.calls) == min(len(arguments), max_calls)
    assert [e.kind for e in turn.errors] == (["too_many_calls"] if len(arguments) > max_calls else [])


@FEW
@given(st.integers(1, 200_000), st.sampled_from(["[", "{", '{"a":', "[{"]))
def test_deeply_nested_json_is_an_error_not_a_crash(depth, opener):
    for body in (opener * depth, '{"name": "f", "arguments": {"x": ' + "[" * depth + "]" * depth + "}}"):
        turn = parse_turn(f"{OPEN}{body}{CLOSE}")
        if turn.errors:
            assert turn.errors[0].kind in {"invalid_json", "too_large"}
            assert not turn.calls
        else:
            assert len(turn.calls) == 1


@FEW
@given(st.integers(4301, 12_000), st.sampled_from(["", "-"]))
def test_huge_integers_are_errors(digits, sign):
    # Python refuses to convert ints over 4300 digits; the model gets an error, not a crashed episode.
    turn = parse_turn(f'{OPEN}{{"name": "f", "arguments": {{"x": {sign}{"9" * digits}}}}}{CLOSE}')
    assert not turn.calls and [e.kind for e in turn.errors] == ["invalid_json"]
    assert "digits" in turn.errors[0].message


@FEW
@given(st.integers(309, 100_000), st.sampled_from(["1e", "-1.5e", "9E+"]))
def test_floats_that_overflow_are_errors(exponent, mantissa):
    # 1e999 reads as inf: a value no tool expects and strict JSON cannot write back, so it is refused like NaN.
    turn = parse_turn(f'{OPEN}{{"name": "f", "arguments": {{"x": {mantissa}{exponent}}}}}{CLOSE}')
    assert not turn.calls and [e.kind for e in turn.errors] == ["invalid_json"]
    assert "finite" in turn.errors[0].message


@FEW
@given(st.integers(DEFAULT_MAX_CALL_CHARS, 3 * DEFAULT_MAX_CALL_CHARS))
def test_oversized_calls_are_too_large(size):
    turn = parse_turn(render_call_text("f", {"s": "x" * size}))
    assert [e.kind for e in turn.errors] == ["too_large"] and not turn.calls
    assert str(DEFAULT_MAX_CALL_CHARS) in turn.errors[0].message


@FUZZ
@given(ANY_TEXT, st.integers(0, 100))
def test_decode_json_never_raises(raw, max_chars):
    value, err = decode_json(raw, max_chars)
    if err is None:
        assert len(raw) <= max_chars
        assert value == json.loads(raw)
    else:
        assert value is None and err.kind in {"invalid_json", "too_large"}
        assert err.message and "\n" not in err.message


@FUZZ
@given(JSON_VALUES)
def test_decode_json_reads_back_what_json_writes(value):
    raw = json.dumps(value, ensure_ascii=False)
    decoded, err = decode_json(raw, len(raw))
    assert err is None and decoded == value


@FEW
@given(st.sampled_from(["NaN", "Infinity", "-Infinity"]) | st.integers(309, 10**6).map(lambda e: f"-1.5e{e}"))
def test_decode_json_refuses_non_finite_numbers(raw):
    decoded, err = decode_json(f'{{"x": [{raw}]}}', 1000)
    assert decoded is None and err is not None and err.kind == "invalid_json"


@FUZZ
@given(JSON_VALUES | JSON_OBJECTS | st.fixed_dictionaries({"name": JSON_VALUES, "arguments": JSON_VALUES}))
def test_validate_payload_never_raises(payload):
    result = validate_payload(payload)
    if isinstance(result, ToolCall):
        assert isinstance(payload, dict) and isinstance(payload["name"], str)
        assert result.name == payload["name"].strip()[:200] and isinstance(result.arguments, dict)
    else:
        assert isinstance(result, ParseError)
        expected = (
            "not_object"
            if not isinstance(payload, dict)
            else "missing_name"
            if not isinstance(payload.get("name"), str) or not payload["name"].strip()
            else "arguments_not_object"
        )
        assert result.kind == expected
        assert "\n" not in result.message and len(result.message) < 400
