"""Health warnings name the likely cause, and the logger writes one line per step."""

import json

from agentrl.train.metrics import MetricsLogger, health_warnings, read_metrics


def test_a_healthy_step_has_no_warnings():
    assert health_warnings({"loss": 0.1, "grad_norm": 0.5, "reward_mean": 0.4, "logprob_gap": 0.01}) == []


def test_out_of_range_metrics_are_named_with_their_cause():
    cases = {
        "loss": ({"loss": float("nan")}, "learning rate"),
        "gap": ({"logprob_gap": 0.9}, "same weights"),
        "correction": ({"rollout_is_clipped_fraction": 0.4}, "served adapter is the current one"),
        "masked": ({"rollout_is_masked_fraction": 0.3}, "rollout_correction_cap"),
        "infra": ({"infra_failure_rate": 0.5}, "sandbox or backend"),
        "variance": ({"zero_variance_fraction": 1.0, "groups": 4}, "too easy or too hard"),
        "truncation": ({"truncation_rate": 0.8}, "max_new_tokens"),
    }
    for name, (metrics, cause) in cases.items():
        warnings = health_warnings(metrics)
        assert len(warnings) == 1 and cause in warnings[0], (name, warnings)


def test_history_is_replayed_into_a_fresh_tensorboard(tmp_path):
    log = MetricsLogger(tmp_path, report_to=[])
    log.log(1, {"loss": 0.5})
    log.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "stale").write_text("from a killed session")
    rows = [json.loads('{"step": 1, "loss": 0.5, "note": "text is skipped"}')]
    log = MetricsLogger(tmp_path, report_to=["tensorboard"], history=rows)
    log.close()
    files = [p.name for p in (tmp_path / "tensorboard").iterdir()]
    assert "stale" not in files and any(f.startswith("events.out.tfevents") for f in files)


def _group(task_id: str, env: str | None, rewards: list[float], *, truncated: bool = False):
    from agentrl.rollout.trajectory import Group, Trajectory

    trajs = [Trajectory(task_id, i, reward=r, turns=1, truncated=truncated, env=env) for i, r in enumerate(rewards)]
    return Group(task_id, trajs)


def test_a_mix_logs_each_environment_and_warns_by_name():
    from agentrl.train.metrics import env_metrics, progress_info

    assert env_metrics([_group("t0", None, [0.0, 1.0])]) == {}  # one environment: nothing extra
    groups = [
        _group("calc/0", "calc", [0.0, 1.0]),
        _group("calc/1", "calc", [1.0, 1.0]),
        _group("game/0", "game", [0.0, 0.0], truncated=True),
        _group("game/1", "game", [0.0, 0.0], truncated=True),
    ]
    m = env_metrics(groups)
    assert m["env/calc/reward_mean"] == 0.75 and m["env/game/reward_mean"] == 0.0
    assert m["env/calc/groups"] == m["env/game/groups"] == 2 and m["env/calc/episodes"] == 4
    assert m["env/calc/zero_variance_fraction"] == 0.5 and m["env/game/truncation_rate"] == 1.0
    step = {"reward_mean": 0.375, "loss": 0.25, "truncation_rate": 0.5, "zero_variance_fraction": 0.75, "groups": 4}
    warnings = health_warnings(step | m)
    # The game's episodes all hit a limit and none of its groups has signal: said once each, naming it.
    assert len(warnings) == 2 and all(w.startswith("game: ") for w in warnings), warnings
    assert "zero_variance_fraction 100%" in warnings[0] and "truncation_rate 100%" in warnings[1]
    # A step-wide problem no environment shows alone (too few groups each to judge) is still said.
    one_each = {"zero_variance_fraction": 1.0, "groups": 2, "env/a/zero_variance_fraction": 1.0, "env/a/groups": 1,
                "env/b/zero_variance_fraction": 1.0, "env/b/groups": 1}  # fmt: skip
    assert len(health_warnings(one_each)) == 1 and "too easy or too hard" in health_warnings(one_each)[0]
    assert progress_info(step | m) == "reward 0.375  loss 0.2500  (calc 0.750, game 0.000)"
