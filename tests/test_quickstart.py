"""End to end: the shipped quickstart recipe, exactly as the README runs it, learns on this CPU.

This is the project's headline claim, so it runs in CI (about 15 minutes on 2 cores): held-out
success must rise by at least 15 points on the 200-task test split, with a paired CI above zero,
and ``agentrl eval --compare`` on the trained run must reproduce that result within its CI.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_recipe_learns(tmp_path):
    out = tmp_path / "quickstart"
    cmd = [sys.executable, "-m", "agentrl.cli", "train", "recipes/quickstart.yaml", f"output_dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out success:" in proc.stdout and "paired difference" in proc.stdout
    print(proc.stdout[-800:])
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["n"] == after["n"] == 200 and after["infra_failures"] == 0
    assert 0.0 < before["success_rate"] < 0.5  # the base model is neither at zero nor at the ceiling
    assert after["success_rate"] - before["success_rate"] >= 0.15
    assert summary["success_difference"]["ci95_low"] > 0
    assert (out / "reward_curve.png").exists() and (out / "adapter" / "adapter_config.json").exists()

    # `agentrl eval --compare` on the trained run repeats the trainer's before/after evaluation with the
    # same tasks and seeds; its paired difference must fall inside the trainer's interval.
    cmd = [sys.executable, "-m", "agentrl.cli", "eval", "--adapter", str(out), "--compare", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout[-600:])
    ev = json.loads((out / "eval" / "summary.json").read_text())
    trained = summary["success_difference"]
    assert ev["settings"]["env"] == "arithmetic" and ev["results"]["base"]["tasks"] == 200
    assert trained["ci95_low"] <= ev["comparison"]["success"]["difference"] <= trained["ci95_high"]
    base, adapter = ev["results"]["base"]["success_rate"], ev["results"]["adapter"]["success_rate"]
    assert base["ci95_low"] <= before["success_rate"] <= base["ci95_high"]
    assert adapter["ci95_low"] <= after["success_rate"] <= adapter["ci95_high"]
    assert (out / "eval" / "report.html").exists()
