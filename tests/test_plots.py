"""The reward curve is drawn from a run directory's metrics and summary."""

import json

import pytest

from agentrl.plots import reward_curve


def test_reward_curve_writes_a_png(tmp_path):
    rows = [{"step": s, "reward_mean": 0.1 * s, "reward_std": 0.2} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary = {"eval_before": {"success_rate": 0.1, "n": 200}, "eval_after": {"success_rate": 0.8, "n": 200}}
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "model": "m", "env": "e"}))
    path = reward_curve(tmp_path)
    assert path == tmp_path / "reward_curve.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_reward_curve_without_metrics_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics"):
        reward_curve(tmp_path)
