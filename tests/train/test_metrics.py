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
