"""The CUDA path, run for real on a GPU: Unsloth's 4-bit loader, bitsandbytes NF4 on CUDA, and a vLLM
engine colocated with the trainer (preflight-sized memory, sleep mode, LoRA hot-swapped from files).

Marked ``cuda``: skipped on machines without a GPU (see conftest.py), and the first part of the device
check (benchmarks/gpu/check.sh runs ``pytest -m cuda``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agentrl import quantize

pytestmark = pytest.mark.cuda

sys.path.insert(0, str(Path(__file__).parent / "train"))
from test_trainer import _recipe  # noqa: E402  (the toy recipe every trainer test shares)

LORA = dict(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def test_unsloth_loads_a_4bit_base_with_its_lora_and_checkpointing():
    from agentrl.train.model import load_lora_model

    if quantize.unsloth_problem() is not None:
        pytest.fail(f"the device check installs Unsloth: {quantize.unsloth_problem()}")
    model, tok, info = load_lora_model(
        "tiny-qwen3", lora=LORA, device="cuda", load_in_4bit=True, gradient_checkpointing=True
    )
    assert info.choice.loader == "unsloth"
    assert quantize.four_bit_names(model), "Unsloth's base should hold 4-bit weights"
    ids = torch.tensor([tok.encode("Hello there, world.")], device="cuda")
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_unsloth_samples_and_trains_through_the_hf_backend(tmp_path, checkpointing):
    # Unsloth's CUDA forwards return legacy tuples, and no cache at all in training mode: the sampler's and the
    # logprob pass's shared prefixes must fall back, not fail. Every episode is valid, the trainer's logprobs
    # equal the sampler's (one model), and the update moves the LoRA weights and nothing else.
    from agentrl.train.trainer import Trainer

    recipe = _recipe(tmp_path / "run", "grpo.steps=2", "model.loader=unsloth", "model.load_in_4bit=true",
                     f"model.gradient_checkpointing={str(checkpointing).lower()}", "backend=hf", "report_to=[]",
                     "eval.before=false", "eval.after=false", "grpo.zero_variance=keep")  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    assert trainer.base_info.choice.loader == "unsloth" and quantize.four_bit_names(trainer.model)
    digest = quantize.base_digest(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    from agentrl.train.metrics import read_metrics

    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(r["infra_failure_rate"] == 0 for r in rows)
    assert all(r["logprob_gap"] < 0.05 for r in rows), [r["logprob_gap"] for r in rows]  # bf16 kernels differ a bit
    assert quantize.base_digest(trainer.model) == digest
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    if checkpointing:  # sampling switched the model to inference; the update ran with checkpointing back on
        assert trainer.model.is_gradient_checkpointing


def test_bitsandbytes_on_cuda_trains_only_lora(tmp_path):
    from agentrl.train.trainer import Trainer

    recipe = _recipe(tmp_path / "run", "grpo.steps=2", "model.load_in_4bit=true", "backend=hf", "report_to=[]",
                     "model.keep_high_precision=[lm_head]", "eval.before=false", "eval.after=false")  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    assert trainer.base_info.choice.loader == "bitsandbytes"
    digest = quantize.base_digest(trainer.model)
    trainer.train()
    assert quantize.base_digest(trainer.model) == digest
    assert all(torch.isfinite(torch.tensor(trainer.last_update["grad_norm"])))


@pytest.mark.parametrize("precision", ["4bit", "16bit"])
def test_a_colocated_vllm_engine_sleeps_during_updates_and_serves_each_new_adapter(tmp_path, precision):
    from agentrl.rollout.backends import vllm_available
    from agentrl.train.trainer import Trainer

    if not vllm_available():
        pytest.skip("vLLM is not installed on this device")
    recipe = _recipe(tmp_path / "run", "grpo.steps=2", "model.load_in_4bit=true", "backend=vllm", "report_to=[]",
                     "lora.r=12", f"vllm.base_precision={precision}", "eval.before=false",
                     "eval.after=false")  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    engine = trainer.backend.llm.llm_engine
    share = engine.vllm_config.cache_config.gpu_memory_utilization
    assert 0.05 <= share < 0.9  # from the preflight, not vLLM's default 0.9
    assert engine.vllm_config.lora_config.max_lora_rank == 16  # r=12 rounded up to a rank vLLM serves
    trainer.train()
    assert trainer.backend.sleeping  # asleep after the last update, until the next generate()
    assert trainer.backend.lora_request.lora_name.startswith("step-1#")  # the adapter saved after step 1
    from agentrl.train.metrics import read_metrics

    rows = read_metrics(tmp_path / "run")
    # The engine's logprobs of its own samples against the trainer's: the gap the rollout correction covers.
    print(f"vLLM base {precision}: mean |logprob gap| per step {[round(r['logprob_gap'], 5) for r in rows]}")
    assert all(0 <= r["logprob_gap"] < 1 for r in rows)
