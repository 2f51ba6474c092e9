"""Model aliases resolve to plain transformers directories that HF (and vLLM) can open."""

import pytest

from agentrl.models import ALIASES, load_model, model_path


def test_names_that_are_not_aliases_pass_through():
    assert model_path("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert model_path("/some/dir") == "/some/dir"


def test_tiny_alias_is_a_directory_with_weights_and_tokenizer():
    from pathlib import Path

    path = Path(model_path("tiny-qwen3"))
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    assert {"tiny-qwen3", "tiny-qwen3-training", "smollm2-135m"} <= set(ALIASES)


@pytest.mark.slow
def test_smollm2_alias_is_the_real_instruct_model():
    import torch

    model, tok = load_model("smollm2-135m")
    # The GGUF names <|im_start|> as end of sequence; a ChatML turn really ends with <|im_end|>.
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 0)
    assert model.generation_config.eos_token_id == 2
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, len(ids) :])
    assert "5" in answer and answer.endswith("<|im_end|>")
