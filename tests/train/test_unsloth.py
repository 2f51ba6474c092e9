"""The Unsloth loader through the real commands, on a CPU: Unsloth's CPU fallback runs the same integration code.

``model.loader=unsloth`` goes through ``FastLanguageModel.from_pretrained`` and ``get_peft_model`` here too
(on a CPU they run the plain transformers model, with bitsandbytes for 4-bit), so loading, LoRA, gradient
checkpointing, the hf sampler, the update, checkpoints, the SFT stage and ``agentrl eval --adapter`` are all
exercised. Each run is its own ``agentrl`` process: importing Unsloth patches transformers and TRL for the
whole process, which must not leak into the other tests.

What a CPU cannot show is Unsloth's CUDA behaviour (legacy-tuple caches, ``use_cache`` forced off in
training mode); tests/rollout/test_hf_backend.py and tests/train/test_loss.py put a model behind that
calling convention instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agentrl.testing import toy_policy_path
from agentrl.train.metrics import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOY = [
    "env.id=agentrl.testing:LatinLettersEnv", "grpo.tasks_per_step=4", "grpo.group_size=8", "grpo.max_turns=1",
    "grpo.learning_rate=3e-3", "grpo.micro_batch_size=16", "sampling.max_new_tokens=12", "sampling.stop=[.]",
    "lora.r=8", "lora.alpha=16", "eval.num_tasks=16", "eval.temperature=1.0", "report_to=[]", "model.loader=unsloth",
]  # fmt: skip
"""The toy recipe of tests/train/test_trainer.py, loaded by Unsloth."""


def agentrl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "agentrl", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def only_lora_trains(run: Path) -> dict[str, torch.Tensor]:
    """The final adapter's tensors, after checking that they are all LoRA matrices, that the optimizer held exactly
    these parameters and nothing of the base, and that every one of them moved from its initial value."""
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter), sorted(adapter)[:5]
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    state = torch.load(last / "trainer_state.pt", weights_only=False)["optimizer"]
    assert sum(len(g["params"]) for g in state["param_groups"]) == len(adapter)
    assert len(state["state"]) == len(adapter)  # AdamW moments for the LoRA tensors and nothing else
    lora_b = [v for k, v in adapter.items() if ".lora_B." in k]
    assert all(torch.count_nonzero(b) for b in lora_b)  # LoRA B starts at zero: every one was updated
    return adapter


def loads_as_plain_peft(run: Path, base: str, adapter: dict[str, torch.Tensor]) -> None:
    """The adapter loads with plain PEFT onto the transformers model, without Unsloth, holding the same weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype="float32"), run / "adapter")
    params = dict(model.named_parameters())
    for key, value in adapter.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(params[name].detach(), value), name


def test_unsloth_trains_the_toy_and_it_learns_as_the_transformers_run_does(tmp_path):
    run = tmp_path / "run"
    proc = agentrl("train", f"model.name={toy_policy_path()}", *TOY, "grpo.steps=6", "save_every=3",
                   f"output_dir={run}")  # fmt: skip
    assert "via unsloth" in proc.stdout + proc.stderr  # the loader is printed
    base = json.loads((run / "base.json").read_text())
    assert (base["loader"], base["load_in_4bit"]) == ("unsloth", False) and "CPU fallback" in base["reason"]
    rewards = [r["reward_mean"] for r in read_metrics(run)]
    assert len(rewards) == 6 and max(rewards[-2:]) > rewards[0] + 0.1, rewards  # as tests/train/test_trainer.py
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_after"]["mean_reward"] > summary["eval_before"]["mean_reward"] + 0.05
    assert all(r["infra_failure_rate"] == 0 for r in read_metrics(run))
    assert read_metrics(run)[0]["logprob_gap"] < 1e-3  # the sampler and the trainer are one model
    loads_as_plain_peft(run, str(toy_policy_path()), only_lora_trains(run))


def test_unsloth_4bit_with_checkpointing_runs_the_sft_stage_then_grpo_and_agentrl_eval_loads_it_back(tmp_path):
    data = tmp_path / "demos.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say something (train {i})."},
                          {"role": "assistant", "content": "hello there."}]} for i in range(8)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    agentrl("train", f"model.name={toy_policy_path()}", *TOY, "model.load_in_4bit=true",
            "model.gradient_checkpointing=true", f"sft.data={data}", "sft.epochs=2", "sft.batch_size=4",
            "grpo.steps=2", "eval.num_tasks=4", f"output_dir={run}")  # fmt: skip
    base = json.loads((run / "base.json").read_text())
    assert (base["loader"], base["load_in_4bit"]) == ("unsloth", True)
    sft = json.loads((run / "sft" / "summary.json").read_text())
    assert sft["optimizer_steps"] == 4 and sft["loss_after"] < sft["loss_before"]  # the warm start learned
    only_lora_trains(run)

    # `agentrl eval --adapter RUN` loads the base through the loader that trained it, read from base.json.
    proc = agentrl("eval", "--adapter", str(run), "--num-tasks", "4", "--no-progress")
    settings = json.loads((run / "eval" / "eval_settings.json").read_text())
    assert (settings["loader"], settings["load_in_4bit"]) == ("unsloth", True)
    assert "4-bit = True" in proc.stdout  # Unsloth's loader said so itself
    assert json.loads((run / "eval" / "summary.json").read_text())["results"]["adapter"]["tasks"] == 4
    # --loader overrides it.
    agentrl("eval", "--adapter", str(run), "--num-tasks", "4", "--no-progress", "--loader", "bitsandbytes",
            "--output-dir", str(tmp_path / "eval-bnb"))  # fmt: skip
    assert json.loads((tmp_path / "eval-bnb" / "eval_settings.json").read_text())["loader"] == "bitsandbytes"


@pytest.mark.parametrize(("four_bit", "checkpointing"), [(True, False), (False, True)])
def test_unsloth_trains_smollm2(tmp_path, four_bit, checkpointing):
    from agentrl.models import model_path

    run = tmp_path / "run"
    # The toy's reward (the share of Latin letters) varies within every group, so both steps update.
    agentrl("train", "model.name=smollm2-135m", *TOY, f"model.load_in_4bit={str(four_bit).lower()}",
            f"model.gradient_checkpointing={str(checkpointing).lower()}", "grpo.steps=2", "grpo.tasks_per_step=2",
            "grpo.group_size=4", "grpo.learning_rate=2e-4", "grpo.max_total_tokens=256", "eval.before=false",
            "eval.after=false", "save_every=1", f"output_dir={run}")  # fmt: skip
    base = json.loads((run / "base.json").read_text())
    assert (base["loader"], base["load_in_4bit"]) == ("unsloth", four_bit)
    rows = read_metrics(run)
    assert len(rows) == 2 and all(r["infra_failure_rate"] == 0 and r["trained_sequences"] > 0 for r in rows)
    first = load_file(run / "checkpoints" / "step-000001" / "adapter" / "adapter_model.safetensors")
    adapter = only_lora_trains(run)
    assert any(not torch.equal(first[k], adapter[k]) for k in adapter)  # the second step moved the weights again
    loads_as_plain_peft(run, model_path("smollm2-135m"), adapter)
