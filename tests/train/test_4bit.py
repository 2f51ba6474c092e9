"""Training on a 4-bit base on CPU, with the same code as on CUDA: bitsandbytes NF4 under a PEFT LoRA.

One run of the toy policy in 4-bit backs every claim: it learns; only LoRA weights train; the 4-bit
base's bytes never change; the KL reference is that same 4-bit base with the adapter off; the saved
adapter is plain PEFT and reproduces the trainer's logits on a fresh 4-bit base; and ``agentrl eval``
of the run evaluates on a 4-bit base unless told otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from agentrl import quantize
from agentrl.models import load_base
from agentrl.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import _recipe  # the toy recipe every trainer test shares

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from agentrl.train.trainer import Trainer

    out = tmp_path_factory.mktemp("run4bit") / "run"
    trainer = Trainer(_recipe(out, "grpo.steps=5", "model.load_in_4bit=true", "grpo.beta=0.04", "report_to=[]"))
    model = trainer.model
    digest = quantize.base_digest(model)
    four_bit = quantize.four_bit_names(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    summary = trainer.train()
    return {"trainer": trainer, "out": out, "summary": summary, "digest": digest, "four_bit": four_bit,
            "trainable": trainable, "lora_before": lora_before}  # fmt: skip


def test_a_4bit_base_learns_and_trains_only_lora(run):
    trainer, out = run["trainer"], run["out"]
    rewards = [r["reward_mean"] for r in read_metrics(out)]
    assert max(rewards[-2:]) > rewards[0] + 0.1, rewards
    s = run["summary"]
    assert s["eval_after"]["mean_reward"] > s["eval_before"]["mean_reward"] + 0.05
    # Every projection of both layers is NF4; only LoRA weights train, and all of them moved.
    assert len(run["four_bit"]) == 2 * 7 and all("_proj" in n for n in run["four_bit"])
    assert run["trainable"] and all("lora_" in n for n in run["trainable"])
    after = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(not torch.equal(run["lora_before"][n], after[n]) for n in after)
    # The 4-bit base is byte for byte what was loaded: never merged into, never stepped.
    assert quantize.base_digest(trainer.model) == run["digest"]
    # The choice and its reason are recorded where `agentrl eval` finds them.
    base = json.loads((out / "base.json").read_text())
    assert base["load_in_4bit"] and base["loader"] == "bitsandbytes" and "NF4" in base["reason"]
    assert s["base"].startswith("base: 4-bit NF4 via bitsandbytes")


def _inputs(trainer):
    ids = torch.tensor([trainer.tokenizer.encode("Write a short reply. Hello there, world.")])
    return ids, torch.ones_like(ids)


def test_the_kl_reference_is_the_same_4bit_base_with_the_adapter_off(run):
    trainer = run["trainer"]
    ids, mask = _inputs(trainer)
    with torch.no_grad(), trainer.model.disable_adapter():
        reference = trainer.model(input_ids=ids, attention_mask=mask).logits
    fresh, _ = load_base(trainer.recipe.model.name, device="cpu", load_in_4bit=True)
    with torch.no_grad():
        base = fresh(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(reference, base, rtol=0, atol=1e-5)
    with torch.no_grad():
        trained = trainer.model(input_ids=ids, attention_mask=mask).logits
    assert (trained - reference).abs().max() > 1e-3  # the adapter does change the policy


def test_the_saved_adapter_is_plain_peft_on_a_fresh_4bit_or_16bit_base(run):
    trainer, adapter = run["trainer"], run["out"] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (adapter / "adapter_model.safetensors").is_file()
    ids, mask = _inputs(trainer)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids, attention_mask=mask).logits
    q_base, _ = load_base(trainer.recipe.model.name, device="cpu", load_in_4bit=True)
    with torch.no_grad():
        q_plain = q_base(input_ids=ids, attention_mask=mask).logits
    on_4bit = PeftModel.from_pretrained(q_base, str(adapter)).eval()
    with torch.no_grad():
        got = on_4bit(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # On the unquantized weights the same adapter makes the same change to the logits; the two differ
    # only by how NF4 rounded the base under it.
    full_base, _ = load_base(trainer.recipe.model.name, device="cpu", load_in_4bit=False)
    with torch.no_grad():
        full_plain = full_base(input_ids=ids, attention_mask=mask).logits
    on_full = PeftModel.from_pretrained(full_base, str(adapter)).eval()
    with torch.no_grad():
        full = on_full(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(full).all()
    change_4bit, change_full = (expected - q_plain).flatten(), (full - full_plain).flatten()
    cosine = torch.nn.functional.cosine_similarity(change_4bit, change_full, dim=0).item()
    print(f"adapter's change of the logits, 16-bit base against 4-bit: cosine {cosine:.4f}")
    assert cosine > 0.9


def test_agentrl_eval_of_a_4bit_run_uses_a_4bit_base_unless_told(run, capsys):
    from agentrl.cli import main
    from agentrl.eval.run import EvalSettings, resolve

    out = run["out"]
    settings, _ = resolve(EvalSettings(adapter=str(out)))
    assert settings.load_in_4bit is True
    settings, _ = resolve(EvalSettings(adapter=str(out), load_in_4bit=False))
    assert settings.load_in_4bit is False
    code = main(["eval", "--adapter", str(out), "-n", "4", "--no-progress", "--output-dir", str(out / "eval4")])
    assert code == 0
    summary = json.loads((out / "eval4" / "summary.json").read_text())
    assert summary["settings"]["load_in_4bit"] is True


def test_a_short_smollm2_run_in_4bit(tmp_path):
    """The real 135M model (hidden size 576, nine NF4 blocks per row) trains on a 4-bit base too."""
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    recipe = load_recipe(
        "recipes/quickstart.yaml",
        ["model.load_in_4bit=true", "grpo.steps=1", "grpo.tasks_per_step=2", "grpo.group_size=4",
         "grpo.zero_variance=keep", "sampling.max_new_tokens=24", "eval.before=false", "eval.after=false",
         "report_to=[]", f"output_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    model = trainer.model
    digest = quantize.base_digest(model)
    assert len(quantize.four_bit_names(model)) == 30 * 7  # every projection of SmolLM2's 30 layers
    trainer.train()
    assert quantize.base_digest(model) == digest
    assert trainer.last_update["grad_norm"] and all(torch.isfinite(torch.tensor(trainer.last_update["grad_norm"])))
    fresh, _ = load_base(recipe.model.name, device="cpu", load_in_4bit=True)
    PeftModel.from_pretrained(fresh, str(tmp_path / "run" / "adapter"))  # loads as plain PEFT
