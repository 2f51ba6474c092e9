import time

import torch

from agentrl import assets


def test_qwen3_tokenizer_has_exact_ids(stock_tok):
    assert stock_tok("Hello world!")["input_ids"] == [9707, 1879, 0]
    expected = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<tool_call>": 151657,
        "</tool_call>": 151658,
        "<tool_response>": 151665,
        "<think>": 151667,
        "</think>": 151668,
    }
    for token, idx in expected.items():
        assert stock_tok.convert_tokens_to_ids(token) == idx
        assert stock_tok.encode(token, add_special_tokens=False) == [idx]
    assert len(stock_tok) == 151669
    assert stock_tok.eos_token == "<|im_end|>"


def test_tool_and_think_markers_survive_skip_special_tokens(stock_tok):
    ids = stock_tok.encode("<think>x</think><tool_call>{}</tool_call><|im_end|>", add_special_tokens=False)
    assert stock_tok.decode(ids, skip_special_tokens=True) == "<think>x</think><tool_call>{}</tool_call>"


def test_templates_are_trls_qwen3(stock_tok, training_tok):
    from trl.chat_template_utils import qwen3_chat_template, qwen3_training_chat_template

    assert stock_tok.chat_template == qwen3_chat_template
    assert training_tok.chat_template == qwen3_training_chat_template


def test_tiny_qwen3_shapes_and_forward():
    model, tok = assets.tiny_qwen3()
    cfg = model.config
    assert cfg.head_dim == 64
    assert cfg.vocab_size >= len(tok)
    ids = torch.tensor([tok.encode("Hello world!")])
    logits = model(ids).logits
    assert logits.shape == (1, 3, cfg.vocab_size)
    assert torch.isfinite(logits).all()


def test_assets_are_cached_and_deterministic():
    first = assets.tiny_qwen3_path()
    t0 = time.perf_counter()
    second = assets.tiny_qwen3_path()
    assert first == second
    assert time.perf_counter() - t0 < 1.0  # cached: no rebuild
    m1, _ = assets.tiny_qwen3()
    m2, _ = assets.tiny_qwen3()
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1


def test_unknown_template_name_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="stock"):
        assets.qwen3_chat_template("chatml")
