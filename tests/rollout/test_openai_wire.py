"""Reading Chat Completions requests (agentrl.rollout.openai_wire): what is honoured, ignored or refused by name."""

import pytest

from agentrl.rollout.generation import SamplingParams
from agentrl.rollout.openai_wire import RequestError, read_request

RUN = SamplingParams(temperature=1.0, max_new_tokens=64, stop_token_ids=[7])
USER = [{"role": "user", "content": "hi"}]


def test_what_sdks_send_by_default_is_accepted():
    # The OpenAI Agents SDK with a GPT-5-family model name, LangChain's nulls, vLLM's extra_body keys.
    body = {"model": "gpt-5.4-mini", "messages": USER, "reasoning_effort": "none", "verbosity": "low", "n": None,
            "max_completion_tokens": None, "max_tokens": 16, "prompt_cache_key": "k", "store": False,
            "service_tier": "auto", "safety_identifier": "u", "modalities": ["text"], "top_k": 20, "min_p": 0.05,
            "repetition_penalty": 1.0, "stream_options": {"include_usage": True},
            "parallel_tool_calls": None}  # fmt: skip
    messages, tools, params, options = read_request(body, RUN)
    assert messages == USER and tools is None
    assert (params.max_new_tokens, params.top_k, params.min_p, params.temperature) == (16, 20, 0.05, 1.0)
    assert params.stop_token_ids == [7] and RUN.top_k == 0  # the run's parameters are copied, never changed
    assert options == {"tool_choice": "auto", "parallel_tool_calls": True, "logprobs": False}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"n": 2}, "n=1"),
        ({"tool_choice": "required"}, "tool_choice 'required' cannot be enforced"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "cannot be enforced"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "Agent(output_type=...)"),
        ({"logit_bias": {"5": 1}}, "'logit_bias': only {} is supported"),
        ({"presence_penalty": 0.5}, "'presence_penalty'"),
        ({"guided_json": {}}, "unsupported parameter 'guided_json'"),
        ({"top_logprobs": 3}, "top_logprobs is not supported"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "image_url content; the policy reads text only",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "role 'function'"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(extra, named):
    with pytest.raises(RequestError) as err:
        read_request({"messages": USER, **extra}, RUN)
    assert err.value.status == 400 and named in err.value.message


def test_tool_choice_none_keeps_the_tools_in_the_prompt_and_parallel_false_is_an_answering_option():
    tools = [{"type": "function", "function": {"name": "f"}}]
    _, got, _, options = read_request({"messages": USER, "tools": tools, "tool_choice": "none",
                                       "parallel_tool_calls": False, "logprobs": True}, RUN)  # fmt: skip
    assert got == tools and options == {"tool_choice": "none", "parallel_tool_calls": False, "logprobs": True}


def test_text_parts_and_the_developer_role_read_as_the_template_expects():
    messages, _, _, _ = read_request({"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "hi"}]}, RUN)  # fmt: skip
    assert messages[0] == {"role": "system", "content": "Be brief."}
