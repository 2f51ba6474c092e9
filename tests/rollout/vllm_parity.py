"""Run by test_vllm_backend.py in its own process: vLLM spawns its engine and needs a real script.

Prints one JSON object: greedy ids and logprobs from HF and vLLM on the same batch, base and LoRA.
"""

import json
import os
import sys
import tempfile


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from agentrl.rollout.generation import SamplingParams
    from agentrl.rollout.hf_backend import HFBackend
    from agentrl.rollout.vllm_backend import VLLMBackend
    from agentrl.testing import tiny_qwen3, tiny_qwen3_path

    model, tok = tiny_qwen3()
    texts = ["Hello world!", "A longer prompt with quite a few more tokens than the first one has.", "Hi"]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    params = SamplingParams(temperature=0, max_new_tokens=int(sys.argv[1]) if len(sys.argv) > 1 else 16)

    # A LoRA adapter with non-zero weights, so that it changes the greedy output. Rank 12 is not one vLLM
    # accepts as max_lora_rank: the backend must round it up (to 16) and still serve the adapter.
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=12, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter_dir = tempfile.mkdtemp(prefix="agentrl-lora-")
    peft_model.save_pretrained(adapter_dir)
    base_model, _ = tiny_qwen3()
    hf_lora = HFBackend(PeftModel.from_pretrained(base_model, adapter_dir).eval(), tok)
    hf_base = HFBackend(tiny_qwen3()[0], tok)

    # Sampling with top_k=1 must reduce to greedy on both backends, with logprob 0 for every token.
    top1 = SamplingParams(temperature=0.7, top_k=1, max_new_tokens=params.max_new_tokens, seed=5)
    out = {
        "hf": [c.__dict__ for c in hf_base.generate(prompts, params)],
        "hf_lora": [c.__dict__ for c in hf_lora.generate(prompts, params)],
        "hf_top1": [c.__dict__ for c in hf_base.generate(prompts, top1)],
    }
    # A stop string taken from the middle of the first greedy completion, and one stop token id.
    first = out["hf"][0]["token_ids"]
    stop_text = tok.decode(first[4:6])
    stops = SamplingParams(temperature=0, max_new_tokens=params.max_new_tokens, stop=[stop_text],
                           stop_token_ids=[first[9]])  # fmt: skip
    out["stop_text"] = stop_text
    out["hf_stop"] = [c.__dict__ for c in hf_base.generate(prompts, stops)]
    vllm = VLLMBackend(
        str(tiny_qwen3_path()),
        dtype="float32",
        max_model_len=512,
        enable_lora=True,
        max_lora_rank=12,
        enforce_eager=True,
    )
    out["max_lora_rank"] = vllm.llm.llm_engine.vllm_config.lora_config.max_lora_rank
    out["vocab_size"], out["model_vocab_size"] = vllm.vocab_size, hf_base.model.config.vocab_size
    out["vllm"] = [c.__dict__ for c in vllm.generate(prompts, params)]
    out["vllm_top1"] = [c.__dict__ for c in vllm.generate(prompts, top1)]
    out["vllm_stop"] = [c.__dict__ for c in vllm.generate(prompts, stops)]
    # A GRPO group: the same prompt G times under one batch seed must give G different samples, twice alike.
    group = SamplingParams(temperature=1.0, max_new_tokens=8, seed=7)
    out["vllm_group"] = [c.__dict__ for c in vllm.generate([prompts[0]] * 4, group)]
    out["vllm_group_again"] = [c.__dict__ for c in vllm.generate([prompts[0]] * 4, group)]
    vllm.load_adapter(adapter_dir, version="step-1")
    out["vllm_no_scope"] = [c.__dict__ for c in vllm.generate(prompts, params)]  # loading alone switches nothing
    with vllm.use_adapter(True):
        out["vllm_lora"] = [c.__dict__ for c in vllm.generate(prompts, params)]
        with vllm.use_adapter(False):
            out["vllm_base_again"] = [c.__dict__ for c in vllm.generate(prompts, params)]
        out["vllm_lora_again"] = [c.__dict__ for c in vllm.generate(prompts, params)]
    with hf_lora.use_adapter(False):
        out["hf_lora_disabled"] = [c.__dict__ for c in hf_lora.generate(prompts, params)]
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
