"""The training loop end to end on CPU: it learns, changes weights, logs, checkpoints and resumes exactly."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from agentrl.testing import toy_policy_path
from agentrl.train.metrics import read_metrics
from agentrl.train.recipe import load_recipe
from agentrl.train.trainer import Trainer

pytestmark = pytest.mark.slow


def _recipe(out, *extra):
    return load_recipe(
        None,
        [
            f"model.name={toy_policy_path()}",
            "env.id=agentrl.testing:LatinLettersEnv",
            "grpo.tasks_per_step=4",
            "grpo.group_size=8",
            "grpo.max_turns=1",
            "grpo.learning_rate=3e-3",
            "grpo.micro_batch_size=16",
            "sampling.max_new_tokens=12",
            "sampling.stop=[.]",  # the toy policy ends its replies with a "." (see toy_policy_path)
            "lora.r=8",
            "lora.alpha=16",
            "eval.num_tasks=16",
            "eval.temperature=1.0",
            "report_to=[tensorboard]",
            f"output_dir={out}",
            *extra,
        ],
    )


def _lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _tensorboard_tags(directory) -> set[str]:
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in directory.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + length + 4
    return tags


def test_a_tiny_qwen3_learns_the_toy_reward(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_recipe(out, "grpo.steps=6", "save_every=3"), show_progress=True)
    before = _lora_weights(trainer.model)
    summary = trainer.train()

    rows = read_metrics(out)
    rewards = [r["reward_mean"] for r in rows]
    assert len(rows) == 6
    assert max(rewards[-2:]) > rewards[0] + 0.1, rewards  # reward rises substantially
    after = _lora_weights(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before)  # every trainable tensor moved
    assert summary["eval_after"]["mean_reward"] > summary["eval_before"]["mean_reward"] + 0.05

    # Health metrics of the rollout engine and the trainer's own are in every metrics line.
    for key in ("reward_std", "zero_variance_fraction", "tool_call_rate", "parse_failure_rate", "truncation_rate",
                "infra_failure_rate", "mean_turns", "tokens_per_second", "generation_time_share", "logprob_gap",
                "loss", "grad_norm", "learning_rate"):  # fmt: skip
        assert key in rows[0], key
    # Same weights, same temperature: the trainer's logprobs equal the rollout engine's.
    assert rows[0]["logprob_gap"] < 1e-3
    assert 0 < rows[0]["trained_tokens"] <= rows[0]["trained_sequences"] * 12  # at most 12 sampled tokens each
    assert {"reward_mean", "logprob_gap", "loss"} <= _tensorboard_tags(out / "tensorboard")

    saved = json.loads((out / "summary.json").read_text())
    assert set(saved) >= {"eval_before", "eval_after", "steps", "wall_seconds", "adapter"}
    assert saved["steps"] == 6 and saved["eval_before"]["n"] == 16
    assert set(saved["eval_after"]) >= {"mean_reward", "success_rate", "n"}
    diff = saved["success_difference"]  # paired over the same held-out tasks
    assert diff["n"] == 16
    assert diff["difference"] == pytest.approx(
        saved["eval_after"]["success_rate"] - saved["eval_before"]["success_rate"]
    )
    assert diff["ci95_low"] <= diff["difference"] <= diff["ci95_high"]
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The adapter is plain PEFT.
    base = AutoModelForCausalLM.from_pretrained(toy_policy_path(), dtype="float32")
    loaded = PeftModel.from_pretrained(base, saved["adapter"])
    params = dict(loaded.named_parameters())
    for name, value in after.items():
        assert torch.equal(params[name], value), name

    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 4 * 8
    row = json.loads(lines[0])
    assert {"text", "ids", "mask", "reward", "reward_components", "advantage", "step"} <= set(row)
    assert (out / "checkpoints" / "step-000003" / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "checkpoints" / "step-000006" / "trainer_state.pt").exists()


def test_reference_and_old_logprobs_are_computed_once_per_batch(tmp_path, monkeypatch):
    import agentrl.train.trainer as trainer_module

    trainer = Trainer(
        _recipe(tmp_path / "run", "grpo.beta=0.1", "grpo.num_iterations=2", "grpo.micro_batch_size=8"),
        show_progress=False,
    )
    calls = {"grad": 0, "no_grad": 0}
    real = trainer_module.token_logprobs

    def counting(*args, **kwargs):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "token_logprobs", counting)
    metrics = trainer.train_step()
    trainer.close()
    micro = -(-int(metrics["trained_sequences"]) // 8)
    # Once without gradient for pi_old and once for the reference, per micro-batch; then one pass per iteration.
    assert calls == {"no_grad": 2 * micro, "grad": 2 * micro}
    assert metrics["kl"] > 0 and len(trainer.last_update["loss"]) == 2


def test_an_update_with_every_group_dropped_counts_the_step_and_changes_nothing(tmp_path):
    import warnings

    trainer = Trainer(_recipe(tmp_path / "run", "grpo.warmup_steps=2", "grpo.steps=4"), show_progress=False)
    before, lr = _lora_weights(trainer.model), trainer.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning about the schedule stepping first
        metrics = trainer.update([], scored=[])
    trainer.close()
    assert metrics == {"trained_sequences": 0.0, "updates": 0.0, "skipped_updates": 0.0}
    assert trainer.scheduler.get_last_lr()[0] > lr  # the warmup moved on by one step
    after = _lora_weights(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
