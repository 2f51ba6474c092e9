"""Stitching an agent harness's requests into token-exact sequences (agentrl.rollout.stitch)."""

from conftest import CALC_SPEC

from agentrl.chat.conversation import TokenConversation
from agentrl.rollout.stitch import Stitcher, normal_form

USER = {"role": "user", "content": "What is 12 * 34?"}


def _sample(stitcher, chat, text):
    """Append a sampled turn of ``text`` (with its end-of-turn token) and return the reply the harness gets."""
    ids = [*chat.tokenizer.encode(text, add_special_tokens=False), chat.end_of_turn_id]
    reply = TokenConversation(chat=chat).add_assistant(ids)  # parsed as the endpoint parses it
    reply = {k: v for k, v in reply.items() if k != "reasoning_content"}  # what an SDK usually sends back
    stitcher.add_completion(ids, [-0.5] * len(ids), reply)
    return ids, reply


def test_a_harness_that_resends_its_history_continues_one_sequence_that_keeps_the_sampled_thinking(stock_chat):
    """Qwen3's template drops earlier <think> blocks, so re-rendering the history would not extend the sampled
    tokens; the stitcher continues from what was sampled, with only the tool result rendered (mask 0)."""
    s = Stitcher(stock_chat)
    prompt, how = s.prompt([USER], [CALC_SPEC])
    assert how == "first" and prompt == stock_chat.encode([USER], [CALC_SPEC], add_generation_prompt=True)
    turn = '<think>\nI should use the tool.\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 34"}}\n</tool_call>'  # noqa: E501
    sampled, reply = _sample(s, stock_chat, turn)
    tool = {"role": "tool", "name": "calculator", "content": "408"}
    history = [USER, reply, tool]
    rerendered = stock_chat.encode(history, [CALC_SPEC], add_generation_prompt=True)
    assert rerendered[: len(prompt) + len(sampled)] != prompt + sampled  # the template dropped the thinking

    prompt2, how = s.prompt(history, [CALC_SPEC])
    assert how == "messages" and s.breaks == 0
    assert prompt2[: len(prompt) + len(sampled)] == prompt + sampled
    delta = prompt2[len(prompt) + len(sampled) :]
    assert delta == TokenConversation.start(stock_chat, [USER], [CALC_SPEC]).delta_ids([tool])
    final, _ = _sample(s, stock_chat, "<think>\nDone.\n</think>\n\n\\boxed{408}")
    (seq,) = s.sequences()
    assert seq.ids == prompt2 + final
    assert seq.mask == [0] * len(prompt) + [1] * len(sampled) + [0] * len(delta) + [1] * len(final)
    assert [x is not None for x in seq.logprobs] == [bool(m) for m in seq.mask]


def test_arguments_as_a_mapping_other_call_ids_and_the_thinking_sent_back_still_continue(stock_chat):
    s = Stitcher(stock_chat)
    s.prompt([USER], [CALC_SPEC])
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>'
    turn = "<think>\nhm\n</think>\n\n" + call
    _, reply = _sample(s, stock_chat, turn)
    call = reply["tool_calls"][0]
    edited = {"role": "assistant", "content": "<think>\nhm\n</think>\n\n",
              "tool_calls": [{"id": "other", "type": "function", "function": {**call["function"], "arguments": {"expression": "1+1"}}}]}  # noqa: E501  # fmt: skip
    assert normal_form(edited) == normal_form(reply)
    _, how = s.prompt([USER, edited, {"role": "tool", "name": "calculator", "content": "2"}], [CALC_SPEC])
    assert how == "messages" and s.breaks == 0


def test_a_trimmed_history_starts_a_new_segment_and_keeps_the_old_one_whole(stock_chat):
    s = Stitcher(stock_chat)
    system = {"role": "system", "content": "Be brief."}
    first, _ = s.prompt([system, USER], None)
    sampled, _ = _sample(s, stock_chat, "It is 408.")
    trimmed = [system, {"role": "user", "content": "And 2 * 3?"}]  # the harness dropped the earlier turns
    prompt, how = s.prompt(trimmed, None)
    assert how == "new_segment" and s.breaks == 1
    assert prompt == stock_chat.encode(trimmed, None, add_generation_prompt=True)
    second, _ = _sample(s, stock_chat, "6.")
    old, new = s.sequences()
    assert old.ids == first + sampled and old.mask == [0] * len(first) + [1] * len(sampled)
    assert new.ids == prompt + second and sum(new.mask) == len(second)


def test_an_edited_earlier_message_or_new_tools_break_the_prefix(stock_chat):
    s = Stitcher(stock_chat)
    s.prompt([USER], [CALC_SPEC])
    _, reply = _sample(s, stock_chat, "Let me think.")
    _, how = s.prompt([{"role": "user", "content": "What is 12 * 35?"}, reply, {"role": "user", "content": "go"}],
                      [CALC_SPEC])  # fmt: skip
    assert how == "new_segment"
    _, reply = _sample(s, stock_chat, "420")
    history = [{"role": "user", "content": "What is 12 * 35?"}, reply, {"role": "user", "content": "sure?"}]
    _, how = s.prompt(history, None)  # same messages, the tools dropped
    assert how == "new_segment" and s.breaks == 2 and len(s.sequences()) == 2


def test_a_history_that_renders_to_the_same_tokens_continues_by_tokens(chatml_chat):
    """ChatML ignores a tool message's name: a harness that renames it changes the messages but not the tokens."""
    s = Stitcher(chatml_chat)
    s.prompt([USER], None)
    _, reply = _sample(s, chatml_chat, "Checking.")
    tool = {"role": "tool", "name": "calculator", "content": "408"}
    s.prompt([USER, reply, tool], None)
    _, reply2 = _sample(s, chatml_chat, "408")
    renamed = {**tool, "name": "calc"}
    before = list(s.conv.ids)
    prompt, how = s.prompt([USER, reply, renamed, reply2, {"role": "user", "content": "thanks"}], None)
    assert how == "tokens" and s.breaks == 0 and prompt[: len(before)] == before
    assert s.conv.mask[len(before) :] == [0] * (len(prompt) - len(before))


def test_a_repeated_request_is_a_break_not_a_silent_reuse(stock_chat):
    """A retried request (the same messages again) gets a fresh sample in a new segment; the first sample stays."""
    s = Stitcher(stock_chat)
    s.prompt([USER], None)
    _sample(s, stock_chat, "A")
    _, how = s.prompt([USER], None)
    assert how == "new_segment" and s.breaks == 1
