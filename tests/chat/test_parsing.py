import json

import pytest

from agentrl.chat.parsing import parse_turn, render_call_text, split_reasoning, strip_end_markers


def call(name="calculator", **arguments):
    return render_call_text(name, arguments)


def test_single_call_with_reasoning_and_content():
    text = f"<think>\nneed math\n</think>\n\nLet me compute.\n{call(expression='2+2')}<|im_end|>"
    turn = parse_turn(text)
    assert turn.reasoning == "need math"
    assert turn.content == "Let me compute."
    assert [(c.name, c.arguments) for c in turn.calls] == [("calculator", {"expression": "2+2"})]
    assert turn.errors == []
    msg = turn.to_message()
    assert msg["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "2+2"}}


def test_several_calls_in_one_turn_keep_order():
    text = call(expression="1") + "\n" + call("search", q="x") + call(expression="3")
    turn = parse_turn(text)
    assert [c.name for c in turn.calls] == ["calculator", "search", "calculator"]
    assert turn.calls[2].arguments == {"expression": "3"}
    assert len({c.id for c in turn.calls}) == 3


def test_plain_answer_is_not_tool_use():
    turn = parse_turn("The answer is \\boxed{4}.<|im_end|>")
    assert not turn.attempted_tool_use
    assert turn.content == "The answer is \\boxed{4}."
    assert turn.reasoning is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("<tool_call>{'name': 'calculator'}</tool_call>", "invalid_json"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "1"</tool_call>', "invalid_json"),
        ("<tool_call>   </tool_call>", "empty_call"),
        ("<tool_call></tool_call>", "empty_call"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}', "unclosed"),
        ('<tool_call>{"name": "a", "arguments": {}}<tool_call>{"name": "b", "arguments": {}}</tool_call>', "unclosed"),
        ('<tool_call>{"name": "calculator", "arguments": {}}</tool_call></tool_call>', "stray_close"),
        ("some text </tool_call>", "stray_close"),
        ('<think><tool_call>{"name": "calculator", "arguments": {}}</tool_call></think>done', "call_in_think"),
        ('<tool_call>{"name": "calculator", "arguments": "1+1"}</tool_call>', "arguments_not_object"),
        ('<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>', "arguments_not_object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": 7, "arguments": {}}</tool_call>', "missing_name"),
        ("<tool_call>[1, 2, 3]</tool_call>", "not_object"),
        ('<tool_call>"calculator"</tool_call>', "not_object"),
        ("<tool_call>" + json.dumps({"name": "c", "arguments": {"x": "a" * 20000}}) + "</tool_call>", "too_large"),
        ("<tool_call>" + "[" * 100000 + "</tool_call>", "too_large"),
    ],
)
def test_malformed_calls_become_errors(text, kind):
    turn = parse_turn(text)
    assert kind in [e.kind for e in turn.errors]
    assert turn.attempted_tool_use  # never mistaken for a final answer
    for err in turn.errors:
        assert len(err.message) > 15  # a sentence the model can act on


def test_deep_nesting_under_size_limit_does_not_raise():
    turn = parse_turn("<tool_call>" + "[" * 5000 + "]" * 5000 + "</tool_call>")
    assert [e.kind for e in turn.errors] in (["not_object"], ["invalid_json"])
    turn = parse_turn("<tool_call>" + '{"a":' * 3000 + "1" + "}" * 3000 + "</tool_call>", max_call_chars=100000)
    assert turn.errors and turn.errors[0].kind in {"invalid_json", "missing_name"}


def test_valid_call_next_to_broken_one_still_runs():
    text = call(expression="1") + "<tool_call>{oops</tool_call>"
    turn = parse_turn(text)
    assert [c.arguments for c in turn.calls] == [{"expression": "1"}]
    assert [e.kind for e in turn.errors] == ["invalid_json"]


def test_too_many_calls_reported_once():
    turn = parse_turn("".join(call(expression=str(i)) for i in range(12)), max_calls=8)
    assert len(turn.calls) == 8
    assert [e.kind for e in turn.errors] == ["too_many_calls"]


def test_missing_or_null_arguments_mean_no_arguments():
    assert parse_turn('<tool_call>{"name": "now"}</tool_call>').calls[0].arguments == {}
    assert parse_turn('<tool_call>{"name": "now", "arguments": null}</tool_call>').calls[0].arguments == {}


def test_reasoning_variants():
    assert split_reasoning("plan</think>answer") == ("plan", "answer")  # <think> was in the prompt
    assert split_reasoning("<think>cut off mid tho") == ("cut off mid tho", "")
    assert split_reasoning("no think") == (None, "no think")
    assert strip_end_markers("x<|im_end|>\n<|endoftext|>") == "x"


def test_non_string_input_is_tolerated():
    assert parse_turn(None).content == ""  # type: ignore[arg-type]
    assert parse_turn(123).content == "123"  # type: ignore[arg-type]


def test_agrees_with_transformers_response_parser(stock_tok):
    """On well-formed Qwen3 output our parser and transformers' (via TRL's schema) read the same calls."""
    from trl.chat_template_utils import add_response_schema, parse_response

    tok = add_response_schema(stock_tok)
    text = (
        "<think>\nfirst add\n</think>\n\n"
        + call("add", a=3, b=4)
        + "\n"
        + call("lookup", key='naïve "x"', opts={"n": [1, 2]})
        + "<|im_end|>"
    )
    ids = tok.encode(text, add_special_tokens=False)
    prefix = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    theirs = parse_response(tok, ids, prefix=prefix)
    ours = parse_turn(text)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in theirs["tool_calls"]] == [
        (c.name, c.arguments) for c in ours.calls
    ]
    assert theirs.get("reasoning_content", "").strip() == ours.reasoning


# ----- regressions: inputs that used to raise or misparse ------------------------------------


def test_huge_integer_argument_is_an_error_not_a_crash():
    turn = parse_turn('<tool_call>{"name": "calculator", "arguments": {"x": ' + "9" * 5000 + "}}</tool_call>")
    assert [e.kind for e in turn.errors] == ["invalid_json"] and not turn.calls


def test_tags_inside_json_strings_are_data():
    for code in ["print('</think>')", "s = '<think>'", "x = '</tool_call>'", "y = '<tool_call>'"]:
        turn = parse_turn(call("python", code=code))
        assert [c.arguments for c in turn.calls] == [{"code": code}] and turn.errors == [], code
        assert turn.reasoning is None


def test_call_in_a_later_think_block_is_not_executed():
    turn = parse_turn("<think>a</think>x<think>" + call(expression="1") + "</think>")
    assert not turn.calls and [e.kind for e in turn.errors] == ["call_in_think"]
    assert turn.reasoning == "a" and turn.content == "x"


def test_nan_and_parameters_alias():
    assert parse_turn('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>').errors[0].kind == "invalid_json"
    assert parse_turn('<tool_call>{"name": "f", "parameters": {"x": 1}}</tool_call>').calls[0].arguments == {"x": 1}


def test_error_flood_is_summarised_and_fast():
    import time

    t0 = time.perf_counter()
    for text in ("<tool_call>" * 100_000, "</tool_call>" * 100_000, "<tool_call>{bad}</tool_call>" * 20_000):
        turn = parse_turn(text)
        assert 1 <= len(turn.errors) <= 8
    assert time.perf_counter() - t0 < 10
    many = "".join(f'<tool_call>{{"name": "f{i}", "arguments": 5}}</tool_call>' for i in range(50))
    errors = parse_turn(many).errors
    assert len(errors) == 8 and errors[-1].kind == "too_many_errors"
