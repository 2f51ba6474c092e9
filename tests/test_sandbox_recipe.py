"""End to end, shortened: the shipped sandbox recipe (SFT warm start, then GRPO) on this CPU.

The full recipe (three evaluations of 200 tasks, all GRPO steps) takes longer than CI can give it, so
this runs the same file with fewer held-out tasks and two GRPO steps, and checks what each stage
must do: the base model cannot answer without code, the SFT stage makes it call the sandboxed python
tool with working code and lifts success, GRPO then trains from that adapter on episodes that ran
real sandbox calls, no episode is lost to the infrastructure, and ``agentrl view`` shows the calls
with the sandbox's output. The full run's numbers are in the README.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _python_call_share(path: Path) -> float:
    """The share of episodes in which the model called the python tool at least once."""
    episodes = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(any(m.get("role") == "tool" for m in e["messages"]) for e in episodes) / len(episodes)


@pytest.mark.slow
def test_sandbox_recipe_sft_then_grpo(tmp_path):
    out = tmp_path / "sandbox"
    overrides = ["eval.num_tasks=40", "grpo.steps=2", f"output_dir={out}"]
    cmd = [sys.executable, "-m", "agentrl.cli", "train", "recipes/sandbox.yaml", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout[-1200:])
    summary = json.loads((out / "summary.json").read_text())
    before, sft, after = summary["eval_before"], summary["eval_sft"], summary["eval_after"]
    assert before["n"] == sft["n"] == after["n"] == 40
    assert before["infra_failures"] == sft["infra_failures"] == after["infra_failures"] == 0
    assert before["success_rate"] <= 0.05  # without running code the base model is almost always wrong
    assert sft["success_rate"] > before["success_rate"]  # 4 of 40 on the full run's first 40 tasks (seed 0)
    assert _python_call_share(out / "eval_before_trajectories.jsonl") == 0.0
    assert _python_call_share(out / "eval_sft_trajectories.jsonl") >= 0.5  # the warm start taught the call
    for key in ("success_difference", "sft_difference", "grpo_difference"):
        assert summary[key]["ci95_low"] <= summary[key]["difference"] <= summary[key]["ci95_high"]
    assert summary["sft"]["loss_after"] < summary["sft"]["loss_before"]

    # GRPO ran its steps on sandbox episodes and moved the adapter away from the SFT one.
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and all(s["tool_call_rate"] > 0 for s in steps)
    trained = load_file(out / "adapter" / "adapter_model.safetensors")
    warm = load_file(out / "sft" / "adapter" / "adapter_model.safetensors")
    assert trained.keys() == warm.keys()
    assert any(not torch.equal(trained[k], warm[k]) for k in trained)
    episodes = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    outputs = [m["content"] for e in episodes for m in e["messages"] if m.get("role") == "tool"]
    assert any(o.strip().isdigit() for o in outputs)  # a printed integer, from the real sandbox

    # `agentrl view` shows the python calls and what the sandbox printed.
    proc = subprocess.run([sys.executable, "-m", "agentrl.cli", "view", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (out / "trajectories.html").read_text()
    assert "python" in html and "print(" in html
    assert any(o.strip() in html for o in outputs if o.strip().isdigit())
