"""4-bit bases: the loader choice, selective MoE quantization, and exact gradients through 4-bit layers."""

from __future__ import annotations

import pytest
import torch

from agentrl import quantize
from agentrl.errors import UserError
from agentrl.models import load_base
from agentrl.train.model import load_lora_model, lora_config

EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


# ----- which loader ------------------------------------------------------------------------------
def test_the_default_is_16_bit_on_cpu_and_4_bit_on_cuda(monkeypatch):
    monkeypatch.setattr(quantize, "unsloth_problem", lambda: "Unsloth is not installed (pip install 'agentrl[gpu]')")
    cpu = quantize.choose_loader("cpu", None)
    assert (cpu.loader, cpu.load_in_4bit) == ("transformers", False) and "full precision on CPU" in cpu.reason
    cuda = quantize.choose_loader("cuda", None)
    assert (cuda.loader, cuda.load_in_4bit) == ("bitsandbytes", True)
    assert "4-bit on CUDA" in cuda.reason and "Unsloth is not installed" in cuda.reason


def test_cuda_prefers_unsloth_and_moe_goes_to_bitsandbytes(monkeypatch):
    monkeypatch.setattr(quantize, "unsloth_problem", lambda: None)
    assert quantize.choose_loader("cuda", True).loader == "unsloth"
    moe = quantize.choose_loader("cuda", True, moe=True)
    assert moe.loader == "bitsandbytes" and "MoE" in moe.reason
    assert quantize.choose_loader("cuda", False).loader == "transformers"


def test_4bit_on_cpu_uses_bitsandbytes_and_names_the_extra_when_missing(monkeypatch):
    choice = quantize.choose_loader("cpu", True)
    assert (choice.loader, choice.load_in_4bit) == ("bitsandbytes", True)
    monkeypatch.setattr(quantize, "bitsandbytes_version", lambda: None)
    with pytest.raises(UserError, match=r"agentrl\[4bit\]"):
        quantize.choose_loader("cpu", True)
    monkeypatch.setattr(quantize, "bitsandbytes_version", lambda: (0, 45))
    with pytest.raises(UserError, match=r"bitsandbytes>=0.49 \(installed: 0.45\)"):
        quantize.choose_loader("cpu", True)


def test_a_named_loader_is_used_as_asked_or_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(quantize, "unsloth_problem", lambda: None)
    # auto stays transformers on a CPU, whatever is installed; a named loader runs there too.
    assert quantize.choose_loader("cpu", None).loader == "transformers"
    cpu = quantize.choose_loader("cpu", None, loader="unsloth")
    assert (cpu.loader, cpu.load_in_4bit) == ("unsloth", False) and "CPU fallback" in cpu.reason
    assert quantize.choose_loader("cpu", True, loader="unsloth").load_in_4bit
    assert quantize.choose_loader("cuda", None, loader="unsloth").load_in_4bit  # 4-bit by default on CUDA
    assert quantize.choose_loader("cuda", None, loader="bitsandbytes").loader == "bitsandbytes"
    assert quantize.choose_loader("cuda", True, moe=True, loader="unsloth").loader == "unsloth"  # never overridden
    forced = quantize.choose_loader("cuda", None, loader="transformers")
    assert (forced.loader, forced.load_in_4bit) == ("transformers", False)
    with pytest.raises(UserError, match="loader=transformers loads a full-precision base"):
        quantize.choose_loader("cuda", True, loader="transformers")
    with pytest.raises(UserError, match="loader=bitsandbytes loads a 4-bit NF4 base"):
        quantize.choose_loader("cpu", False, loader="bitsandbytes")
    with pytest.raises(UserError, match=r"model\.loader must be one of"):
        quantize.choose_loader("cpu", None, loader="vllm")
    monkeypatch.setattr(quantize, "unsloth_problem", lambda: "Unsloth is not installed (pip install 'agentrl[gpu]')")
    with pytest.raises(UserError, match=r"model.loader=unsloth, but unsloth is not installed \(pip install"):
        quantize.choose_loader("cuda", None, loader="unsloth")
    monkeypatch.setattr(quantize.importlib.util, "find_spec", lambda name: None)  # not installed at all, on a CPU
    with pytest.raises(UserError, match=r"on a CPU: pip install --no-deps 'unsloth>=2026.10"):
        quantize.choose_loader("cpu", None, loader="unsloth")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.loader=transformers", "model.load_in_4bit=true"], "loads a full-precision base"),
        (["model.loader=bitsandbytes", "model.load_in_4bit=false"], "loads a 4-bit base"),
        (["model.loader=unsloth", "model.keep_high_precision=[lm_head]"], "needs model.loader=bitsandbytes"),
        (["model.loader=unsloth", "lora.target_parameters=[mlp.experts.down_proj]"], "needs PEFT's own LoRA"),
        (["model.loader=peft"], "model.loader: must be one of auto, unsloth, bitsandbytes, transformers"),
    ],
)
def test_loader_settings_that_cannot_work_are_refused_by_the_recipe(overrides, message):
    from agentrl.errors import RecipeError
    from agentrl.train.recipe import load_recipe

    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides)


def test_the_default_loader_leaves_the_recipe_hash_as_it_was():
    from agentrl.train.recipe import load_recipe, recipe_hash

    auto, named = load_recipe(None, []), load_recipe(None, ["model.loader=unsloth"])
    assert recipe_hash(auto) != recipe_hash(named)  # a named loader changes the run
    data = __import__("dataclasses").asdict(auto)
    del data["model"]["loader"]  # a recipe written before model.loader existed
    assert recipe_hash(data) == recipe_hash(auto)


def test_patterns_match_whole_dotted_components():
    assert quantize.matches("model.layers.3.self_attn.q_proj", ["self_attn"])
    assert quantize.matches("model.layers.0.mlp.gate", ["mlp.gate"])
    assert not quantize.matches("model.layers.0.mlp.gate_proj", ["mlp.gate"])
    assert not quantize.matches("model.layers.3.self_attn_norm", ["self_attn"])
    import re

    (rx,) = quantize.skip_regexes(["mlp.gate"])  # transformers anchors at the start of the name
    assert re.match(rx, "model.layers.0.mlp.gate") and not re.match(rx, "model.layers.0.mlp.gate_proj")


# ----- exact gradients through 4-bit layers ------------------------------------------------------
def test_lora_gradients_through_a_4bit_base_equal_those_through_its_dequantized_weights():
    """After an eval-mode rollout, training must still backpropagate through every 4-bit layer.

    The reference is the same network with each 4-bit weight replaced by its dequantized fp32 copy:
    NF4 storage must change nothing but the weights' values.
    """
    import bitsandbytes.functional as F

    lora = dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(0)
    q, _, _ = load_lora_model("tiny-qwen3", lora=lora, device="cpu", load_in_4bit=True)
    dense, _, _ = load_lora_model("tiny-qwen3", lora=lora, device="cpu", load_in_4bit=False)
    with torch.no_grad():
        for (name, p), (dname, dp) in zip(q.named_parameters(), dense.named_parameters(), strict=True):
            assert name == dname
            if quantize.is_4bit(p):
                dp.copy_(F.dequantize_4bit(p.data, p.quant_state).to(dp.dtype))
            elif "lora_B" in name:
                p.normal_(std=0.1)
                dp.copy_(p)
            else:
                dp.copy_(p)
    ids = torch.randint(0, 1000, (2, 10))
    q.eval()
    with torch.no_grad():  # a rollout: bitsandbytes would repack CPU weights for inference here
        q(ids)
    q.train()
    grads = []
    for model in (q, dense):
        model.zero_grad()
        logits = model(ids).logits
        (logits.float().log_softmax(-1)[..., 0].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 3 * 2
    lowest = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert grads[0][lowest].abs().sum() > 0  # the gradient reached the bottom layer through the 4-bit ones
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


# ----- selective quantization of a mixture of experts --------------------------------------------
@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    """A tiny random Qwen3-MoE with the real Qwen3 tokenizer, saved like a hub checkpoint."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from agentrl.assets import qwen3_tokenizer

    tok = qwen3_tokenizer("training")
    config = Qwen3MoeConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, moe_intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_experts=8, num_experts_per_tok=2,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-moe")
    Qwen3MoeForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_moe_defaults_put_exactly_the_routed_experts_in_4bit(tiny_moe):
    full, _ = load_base(tiny_moe, device="cpu", load_in_4bit=False)
    q, info = load_base(tiny_moe, device="cpu", load_in_4bit=True)
    assert info.keep_high_precision == quantize.MOE_KEEP
    experts = [f"model.layers.{i}.{e}" for i in range(2) for e in EXPERTS]
    assert sorted(quantize.four_bit_names(q)) == sorted(experts) == sorted(info.quantized_experts)
    # Everything else stays in its 16-bit (here fp32) dtype: attention, router, embeddings, norms, head.
    for name, p in q.named_parameters():
        if not quantize.is_4bit(p):
            assert p.dtype == torch.float32, name
    kept = [n for n, _ in q.named_parameters() if not quantize.is_4bit(_)]
    for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate.weight", "embed_tokens", "norm", "lm_head"):
        assert any(part in n for n in kept), part

    # Bytes: the experts shrink from 4 bytes to about half a byte per weight (plus NF4 statistics).
    n_expert = sum(p.numel() for n, p in full.named_parameters() if "experts" in n)
    saved = quantize.parameter_bytes(full) - quantize.parameter_bytes(q)
    print(f"experts: {n_expert} weights; saved {saved} of {quantize.parameter_bytes(full)} bytes")
    assert 3.4 * n_expert < saved < 3.5 * n_expert

    # Logits move by NF4's rounding of the experts only: small next to the logits' own spread.
    ids = torch.randint(0, 5000, (2, 12))
    with torch.no_grad():
        a, b = full(ids).logits, q(ids).logits
    gap = (a - b).abs().max().item()
    print(f"max logit gap 4-bit vs fp32: {gap:.4f} (logit std {a.std().item():.4f})")
    assert 0 < gap < 0.5 * a.std().item()


def test_dense_defaults_quantize_every_projection_but_the_head():
    q, info = load_base("tiny-qwen3", device="cpu", load_in_4bit=True)
    assert info.keep_high_precision == ["lm_head"]
    names = quantize.four_bit_names(q)
    assert len(names) == 2 * 7 and all(n.endswith("_proj.weight") for n in names)


def test_expert_lora_needs_16bit_experts(tiny_moe):
    q, _ = load_base(tiny_moe, device="cpu", load_in_4bit=True)
    lora = dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], target_parameters=list(EXPERTS))
    with pytest.raises(UserError, match="keep_high_precision"):
        lora_config(q, **lora)
    kept, _ = load_base(tiny_moe, device="cpu", load_in_4bit=True, keep_high_precision=[*quantize.MOE_KEEP, "experts"])
    assert quantize.four_bit_names(kept) == []
    config = lora_config(kept, **lora)
    assert sorted(config.target_parameters) == sorted(f"model.layers.{i}.{e}" for i in range(2) for e in EXPERTS)


def test_one_grpo_step_on_a_4bit_moe_changes_only_lora_weights(tiny_moe, tmp_path):
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    recipe = load_recipe(
        None,
        [f"model.name={tiny_moe}", "model.load_in_4bit=true", "env.id=agentrl.testing:LatinLettersEnv",
         "grpo.steps=1", "grpo.tasks_per_step=2", "grpo.group_size=4", "grpo.max_turns=1", "grpo.zero_variance=keep",
         "grpo.learning_rate=1e-2", "sampling.max_new_tokens=6", "lora.r=4", "lora.alpha=8",
         "lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "eval.before=false", "eval.after=false",
         "report_to=[]", f"output_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    digest = quantize.base_digest(model)
    with trainer.backend.use_adapter(True):
        groups = trainer.engine.run(trainer.train_ids[:2], seed=0).groups
    for group in groups:  # a random model earns the same reward everywhere; spread it so the step has signal
        for i, t in enumerate(group.trajectories):
            t.reward = float(i)
    stats = trainer.update(groups)
    assert stats["trained_sequences"] == 8 and trainer.last_update["grad_norm"][0] > 0
    after = model.state_dict()
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed and all("lora_" in n for n in changed)
    assert quantize.base_digest(model) == digest
    assert sorted(quantize.four_bit_names(model)) == sorted(
        f"base_model.model.model.layers.{i}.{e}" for i in range(2) for e in EXPERTS
    )
