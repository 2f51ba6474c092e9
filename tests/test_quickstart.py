"""End to end: the shipped quickstart recipe, exactly as the README runs it, learns on this CPU.

This is the project's headline claim, so it runs in CI (about 10 minutes on 2 cores): held-out
success must rise by at least 15 points on the 200-task test split, with a paired CI above zero.
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
