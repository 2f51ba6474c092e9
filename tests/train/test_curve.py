"""The reward curve is drawn from a run directory's metrics and summary."""

import json

import pytest

from agentrl.train.curve import reward_curve


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


def _axes_of(path, monkeypatch):
    """Draw the curve and return the matplotlib axes it used (title, limits)."""
    import matplotlib.figure

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["ax"] = fig.axes[0]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    reward_curve(path)
    return seen["ax"]


def test_title_names_model_and_environment_whole(tmp_path, monkeypatch):
    # str.strip(" on") strips characters: "math-python" used to lose its "on".
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": 0.5, "reward_std": 0.1}) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"model": "smollm2-135m", "env": "math-python"}))
    assert _axes_of(tmp_path, monkeypatch).get_title() == "smollm2-135m on math-python"
    (tmp_path / "summary.json").write_text(json.dumps({"env": "codebreaker"}))
    assert _axes_of(tmp_path, monkeypatch).get_title() == "codebreaker"


def test_reward_axis_covers_shaped_and_negative_rewards(tmp_path, monkeypatch):
    rows = [{"step": 1, "reward_mean": -0.4, "reward_std": 0.3}, {"step": 2, "reward_mean": 1.9, "reward_std": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    low, high = _axes_of(tmp_path, monkeypatch).get_ylim()
    assert low <= -0.7 and high >= 2.3  # mean +- std of every step is inside the axes
    rows = [{"step": 1, "reward_mean": 0.2, "reward_std": 0.1}]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    low, high = _axes_of(tmp_path, monkeypatch).get_ylim()
    assert low <= 0.0 and high >= 1.0  # rates in [0, 1] are always on the axes
