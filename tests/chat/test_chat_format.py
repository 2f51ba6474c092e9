import pytest
from conftest import CALC_SPEC

from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import parse_turn

USER = [{"role": "user", "content": "What is 2+2?"}]


def test_qwen3_renders_tools_natively(stock_chat):
    assert stock_chat.native_tools
    text = stock_chat.render(USER, [CALC_SPEC], add_generation_prompt=True)
    assert "<tools>" in text and '"name": "calculator"' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_enable_thinking_switch(stock_tok):
    on = ChatFormat(stock_tok, enable_thinking=True).render(USER, add_generation_prompt=True)
    off = ChatFormat(stock_tok, enable_thinking=False).render(USER, add_generation_prompt=True)
    assert on.endswith("<|im_start|>assistant\n")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_encode_matches_apply_chat_template(stock_chat, stock_tok):
    ids = stock_chat.encode(USER, [CALC_SPEC], add_generation_prompt=True)
    ref = stock_tok.apply_chat_template(
        USER, tools=[CALC_SPEC], add_generation_prompt=True, tokenize=True, return_dict=False, enable_thinking=True
    )
    assert ids == ref


def test_end_of_turn_token(stock_chat, chatml_chat):
    assert stock_chat.end_of_turn == "<|im_end|>" and stock_chat.end_of_turn_id == 151645
    assert chatml_chat.end_of_turn == "<|im_end|>"


def test_template_without_tools_gets_them_in_the_system_prompt(chatml_chat):
    assert not chatml_chat.native_tools
    msgs = [
        {"role": "system", "content": "Be exact."},
        *USER,
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+2"}}}
            ],
        },
        {"role": "tool", "name": "calculator", "content": "4"},
        {"role": "tool", "name": "calculator", "content": "5"},
    ]
    text = chatml_chat.render(msgs, [CALC_SPEC], add_generation_prompt=True)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe exact.\n\n# Tools")
    assert '"name": "calculator"' in system and "<tool_call>" in system
    # The assistant's structured call is rendered in the same Hermes text format the parser reads.
    assistant = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert [(c.name, c.arguments) for c in parse_turn(assistant).calls] == [("calculator", {"expression": "2+2"})]
    # Consecutive tool results share one user turn.
    assert (
        "<|im_start|>user\n<tool_response>\n4\n</tool_response>\n<tool_response>\n5\n</tool_response><|im_end|>" in text
    )
    assert "<|im_start|>tool" not in text


def test_template_without_tools_and_no_tools_is_untouched(chatml_chat, stock_tok):
    text = chatml_chat.render(USER, add_generation_prompt=True)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text == system + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_template_is_a_clear_error(stock_tok):
    import copy

    tok = copy.deepcopy(stock_tok)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ChatFormat(tok)


def test_reasoning_is_folded_back_for_templates_that_drop_it(chatml_chat, stock_chat):
    msgs = [*USER, {"role": "assistant", "content": "4", "reasoning_content": "2+2 is 4"}]
    assert "<|im_start|>assistant\n<think>\n2+2 is 4\n</think>\n\n4<|im_end|>" in chatml_chat.render(msgs)
    assert stock_chat.native_reasoning and not chatml_chat.native_reasoning
