"""The GPU device check (benchmarks/gpu/check.sh): its dry run on the CPU, and the arithmetic it reports with.

The dry run runs every part of the check with a tiny Qwen3 on the CPU: the CUDA tests (skipped here), one
GRPO step through agentrl's trainer on a bitsandbytes NF4 base and through TRL's GRPOTrainer, batched
decoding against the bandwidth bound, the memory preflight, and the user's commands end to end (agentrl train
killed and resumed, then agentrl eval) with the Unsloth loader (its CPU fallback here) and with bitsandbytes. On
a GPU machine the same code measures Qwen3-0.6B, 1.7B and 4B.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
PARTS = {"a_cuda_tests", "b_grpo_step", "c_decode", "d_preflight", "e_train"}


@pytest.fixture(scope="module")
def gpu_modules():
    """The check's modules, imported from benchmarks/gpu (not a package) and forgotten afterwards."""
    names = ("synthetic", "report", "decode", "grpo_step", "check")
    sys.path.insert(0, str(GPU))
    try:
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(GPU))
        for name in names:
            sys.modules.pop(name, None)


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_the_report(tmp_path, gpu_modules):
    env = {**os.environ, "PYTHON": sys.executable}
    started = time.time()
    proc = subprocess.run(
        ["bash", str(GPU / "check.sh"), "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"dry run: {time.time() - started:.0f} s")
    results = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())
    parts = results["parts"]
    assert set(parts) == PARTS and not results["not_run"]
    assert results["device"]["missing"] == []  # everything the check imports is here (the README's install)

    # (a) ran pytest -m cuda on tests/test_cuda.py; on a CPU nothing passes or fails, every CUDA test is skipped.
    a = parts["a_cuda_tests"]
    assert a["status"] == "ok", a
    assert a["counts"].get("skipped", 0) >= 6 and not a["counts"].get("failed") and not a["counts"].get("errors")

    # (b) the bitsandbytes and TRL variants ran for real; Unsloth is honestly skipped, not passed.
    model = parts["b_grpo_step"]["models"]["tiny-qwen3"]
    variants = model["variants"]
    assert variants["agentrl-unsloth"]["status"] == "skipped" and "CPU" in variants["agentrl-unsloth"]["reason"]
    for name in ("agentrl-bnb", "trl"):
        v = variants[name]
        assert v["status"] == "ok", v
        assert math.isfinite(v["loss"]) and math.isfinite(v["grad_norm"]) and v["grad_norm"] > 0
        assert v["tokens_per_s"] > 0 and v["peak_bytes"] >= 0
    assert variants["agentrl-bnb"]["base"]["loader"] == "bitsandbytes"
    # With one pass over the batch every PPO ratio is 1, so dapo's loss is -sum(A_i * n_i) / sum(n_i) over the
    # completions: both trainers got it from the same tokens, masks and advantages.
    s = results["settings"]
    vocab = gpu_modules["synthetic"].TINY_CONFIG["vocab_size"]
    batch = gpu_modules["synthetic"].synthetic_batch(s["sequences"], s["seq_len"], s["prompt_len"], vocab, seed=0)
    expected = -sum(a * len(c) for a, c in zip(batch.advantages, batch.completions, strict=True))
    expected /= batch.completion_tokens
    for name in ("agentrl-bnb", "trl"):
        assert variants[name]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6), name
    assert model["ratios"]["agentrl-bnb"]["memory_ratio"] > 0 and model["ratios"]["agentrl-bnb"]["speed_ratio"] > 0
    assert model["ratios"]["agentrl-unsloth"]["memory_status"] == "not measured"

    # (c) decoded for real and set it against a positive bound.
    c = parts["c_decode"]
    assert c["status"] == "ok", c
    assert c["tokens_per_s"] > 0 and c["bound_tokens_per_s"] > 0 and c["backend"] == "hf"
    assert c["generated_tokens"] == s["decode_batch"] * s["decode_tokens"]

    # (d) compared the preflight with (b)'s peaks, or said that the preflight is not there.
    d = parts["d_preflight"]
    if d["status"] == "ok":
        row = next(r for r in d["rows"] if (r["model"], r["variant"]) == ("tiny-qwen3", "agentrl-bnb"))
        assert 0 < row["estimate_bytes"] <= row["estimate_total_bytes"] and row["measured_bytes"] > 0
        assert row["ratio"] == pytest.approx(row["estimate_bytes"] / row["measured_bytes"])
        assert row["status"] in ("met", "missed")
    else:
        assert d["status"] == "not available" and "preflight module not available" in d["reason"]

    # (e) ran the user's commands for each loader: agentrl train killed after step 2's checkpoint, the same
    # command resuming it to step 3, and agentrl eval loading the base through the loader that trained it.
    e = parts["e_train"]
    assert e["status"] == "ok", e
    assert set(e["loaders"]) == {"unsloth", "bitsandbytes"}
    for loader, r in e["loaders"].items():
        assert r["status"] == "ok", r
        assert r["killed_after_checkpoint"] and r["commands"]["resume"]["status"] == "ok"
        assert r["steps_logged"] == [1, 2, 3] and r["infra_failure_rate"] == 0
        assert r["base"]["loader"] == r["eval_loader"] == loader and r["base"]["load_in_4bit"]
        assert all(g > 0 for g in r["grad_norm"]) and len(set(r["loss"])) == 3  # every step sampled anew
        assert r["logprob_gap"] < 1e-3  # the hf backend samples with the trainer's own model
    assert any("vLLM" in line for line in e["not_covered"])

    md = (tmp_path / "gpu-cpu-dry-run.md").read_text()
    for target in gpu_modules["report"].TARGETS.values():
        assert target in md
    for heading in (
        "(a) CUDA tests",
        "(b) One GRPO optimizer step",
        "(c) Decode speed",
        "(d) Memory preflight",
        "(e) agentrl train, resume and eval, end to end",
    ):
        assert heading in md
    assert "| tiny-qwen3 | agentrl-bnb | bitsandbytes |" in md


def test_a_spent_budget_records_every_part_as_not_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(GPU / "check.py"), "--dry-run", "--budget", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())
    assert {k for k, v in results["parts"].items() if v["status"] == "not run"} >= {"a_cuda_tests", "c_decode"}
    assert "(a) CUDA tests" in results["not_run"]
    assert "Not run (time budget)" in (tmp_path / "gpu-cpu-dry-run.md").read_text()


def test_a_unit_past_its_deadline_is_killed_with_its_children(gpu_modules):
    check = gpu_modules["check"]
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    code += "print('started', flush=True); time.sleep(60)"
    t = time.time()
    rc, output, seconds = check.run_process([sys.executable, "-c", code], 2.0, dict(os.environ))
    assert rc is None and "started" in output
    assert time.time() - t < 20 and seconds >= 2.0


def test_parameter_count_matches_the_models_transformers_builds(gpu_modules):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    synthetic = gpu_modules["synthetic"]
    configs = {"tiny": synthetic.TINY_CONFIG, **synthetic.QWEN3_CONFIGS}
    for name, config in configs.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = Qwen3ForCausalLM(Qwen3Config(**config))
        assert synthetic.parameter_count(config) == sum(p.numel() for p in model.parameters()), name
    # The published sizes: Qwen3-0.6B has 0.44B parameters besides its embeddings.
    embed = 151936 * 1024
    assert synthetic.parameter_count(synthetic.QWEN3_CONFIGS["Qwen3-0.6B"]) - embed == pytest.approx(0.44e9, rel=0.01)


def test_bandwidth_bound_counts_weights_and_the_growing_cache(gpu_modules):
    decode, synthetic = gpu_modules["decode"], gpu_modules["synthetic"]
    config = synthetic.QWEN3_CONFIGS["Qwen3-0.6B"]
    bound = decode.bound_tokens_per_s(config, 2, batch=64, prompt_len=128, new_tokens=128, bytes_per_s=4.8e12)
    weights = synthetic.parameter_count(config) * 2
    kv = 2 * 28 * 8 * 128 * 2  # keys and values, 28 layers, 8 KV heads of 128, bf16
    assert bound["weight_bytes"] == weights and bound["kv_bytes_per_token"] == kv
    mean_context = 128 + 127 / 2
    step_seconds = (weights + kv * mean_context * 64) / 4.8e12
    assert bound["tokens_per_s"] == pytest.approx(64 / step_seconds, rel=1e-9)
    # Datasheet bandwidths by device name; an unknown device is measured instead.
    assert decode.table_bandwidth("NVIDIA H200") == 4.8e12
    assert decode.table_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert decode.table_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert decode.table_bandwidth("NVIDIA A100-SXM4-80GB") == 2.0e12
    assert decode.table_bandwidth("NVIDIA L4") is None


def test_targets_and_ratios(gpu_modules):
    report = gpu_modules["report"]
    trl = {"status": "ok", "peak_bytes": 10e9, "tokens_per_s": 1000.0}
    ours = {"status": "ok", "peak_bytes": 4e9, "tokens_per_s": 1200.0}
    skipped = {"status": "skipped", "reason": "skipped: CPU"}
    ratios = report.step_ratios({"agentrl-unsloth": skipped, "agentrl-bnb": ours, "trl": trl})
    assert ratios["agentrl-bnb"] == {
        "memory_ratio": 0.4,
        "memory_status": "met",
        "speed_ratio": 1.2,
        "speed_status": "missed",
    }
    assert ratios["agentrl-unsloth"]["memory_status"] == ratios["agentrl-unsloth"]["speed_status"] == "not measured"
    assert report.within(1.19, 0.2) == "met" and report.within(0.79, 0.2) == "missed"
    assert report.at_least(float("nan"), 0.5) == "not measured"
    assert gpu_modules["synthetic"].slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_synthetic_batch_is_fixed_and_fills_every_row(gpu_modules):
    synthetic = gpu_modules["synthetic"]
    a = synthetic.synthetic_batch(8, 1024, 256, 151936, seed=0)
    b = synthetic.synthetic_batch(8, 1024, 256, 151936, seed=0)
    assert a == b and a.tokens == 8 * 1024
    assert all(128 <= len(p) <= 384 for p in a.prompts)
    assert all(3 <= t < 151936 for row in a.prompts + a.completions for t in row)
    assert sum(a.advantages) == pytest.approx(0.0, abs=1e-9)


def test_preflight_totals_are_read_from_numbers_mappings_and_objects(gpu_modules):
    sys.path.insert(0, str(GPU))
    try:
        worker = importlib.import_module("worker")
    finally:
        sys.path.remove(str(GPU))
        sys.modules.pop("worker", None)

    class Estimate:
        total_bytes = 3 * 2**30

    class Split:  # the preflight's shape: parts by phase, a runtime allowance, a total
        parts = {"runtime": 10, "weights": 100, "activations": 30, "kv_cache": 50}
        total = 160

        def phase(self, name: str) -> int:
            phases = {"activations": "train", "kv_cache": "rollout"}
            return sum(v for k, v in self.parts.items() if phases.get(k, "resident") == name)

    # One training step is measured: resident and training parts, without the runtime allowance or rollouts.
    assert worker.comparable(Split())["bytes"] == 100 + 30
    assert worker.comparable(5e9) == {"bytes": 5e9, "basis": "the estimate's total"}
    assert worker.estimate_bytes(Split()) == 160
    assert worker.estimate_bytes(5e9) == 5e9
    assert worker.estimate_bytes({"peak_bytes": 7}) == 7
    assert worker.estimate_bytes({"total_gib": 2.0}) == 2 * 2**30
    assert worker.estimate_bytes(Estimate()) == 3 * 2**30
    with pytest.raises(TypeError):
        worker.estimate_bytes({"weights": 1})
