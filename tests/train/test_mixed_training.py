"""One policy trained on two environments at once (env.mix): each environment's reward rises, groups never mix
them, and the metrics, trajectories, evaluations, `agentrl eval` and `agentrl view` report each one."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agentrl.cli import main
from agentrl.testing import toy_policy_path
from agentrl.train.metrics import read_metrics
from agentrl.train.recipe import load_recipe
from agentrl.train.trainer import Trainer

pytestmark = pytest.mark.slow

MIX = (
    "env.mix=[{id: 'agentrl.testing:LatinLettersEnv', name: latin}, "
    "{id: 'agentrl.testing:ShortRepliesEnv', name: short}]"
)


def test_a_tiny_qwen3_learns_two_environments_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = load_recipe(
        None,
        [
            f"model.name={toy_policy_path()}", MIX, "grpo.steps=6", "grpo.tasks_per_step=4", "grpo.group_size=8",
            "grpo.max_turns=1", "grpo.learning_rate=3e-3", "grpo.micro_batch_size=16", "sampling.max_new_tokens=12",
            "sampling.stop=[.]", "lora.r=8", "lora.alpha=16", "eval.num_tasks=8", "eval.temperature=1.0",
            "report_to=[tensorboard]", "save_every=0", f"output_dir={out}",
        ],
    )  # fmt: skip
    summary = Trainer(recipe, show_progress=False).train()

    # Each environment's own reward rises, not only their average.
    rows = read_metrics(out)
    assert len(rows) == 6
    for name in ("latin", "short"):
        rewards = [r[f"env/{name}/reward_mean"] for r in rows]
        assert max(rewards[-2:]) > rewards[0] + 0.15, (name, rewards)
        assert all(r[f"env/{name}/groups"] == 2 for r in rows)  # equal weights: half of every step each
        assert {f"env/{name}/truncation_rate", f"env/{name}/zero_variance_fraction"} <= set(rows[0])
    for r in rows:  # the overall numbers are still the whole step's
        assert r["groups"] == 4 and r["reward_mean"] == pytest.approx(
            (r["env/latin/reward_mean"] + r["env/short/reward_mean"]) / 2
        )

    # Every trajectory records its environment; a group (one task) never mixes them; each environment's
    # episodes have its own system prompt and tools in their tokens, never the other's.
    lines = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert Counter(r["env"] for r in lines) == {"latin": 6 * 2 * 8, "short": 6 * 2 * 8}
    groups: dict[tuple, set] = {}
    for r in lines:
        assert r["task_id"].startswith(r["env"] + "/")
        groups.setdefault((r["step"], r["task_id"]), set()).add(r["env"])
        short = r["env"] == "short"
        assert ("few characters" in r["text"]) == short and ('"name": "calculator"' in r["text"]) == short
    assert all(len(envs) == 1 for envs in groups.values()) and len(groups) == 6 * 4

    # Held-out evaluation before and after, overall and per environment, and the paired difference of each.
    saved = json.loads((out / "summary.json").read_text())
    assert saved["env"] == "latin+short" and set(saved["envs"]) == {"latin", "short"}
    for stage in ("eval_before", "eval_after"):
        assert saved[stage]["n"] == 8 and {k: v["n"] for k, v in saved[stage]["per_env"].items()} == {
            "latin": 4,
            "short": 4,
        }
    assert saved["eval_after"]["mean_reward"] > saved["eval_before"]["mean_reward"] + 0.1
    assert set(saved["success_difference"]["per_env"]) == {"latin", "short"}
    assert summary["success_difference"]["per_env"]["latin"]["n"] == 4
    assert {json.loads(line)["env"] for line in (out / "eval_after_trajectories.jsonl").read_text().splitlines()} == {
        "latin",
        "short",
    }

    # `agentrl eval` on the run directory evaluates the mix, and reports each environment.
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out), "--compare", "-n", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "  latin: pass@1" in printed and "  short: paired difference over the same 2 tasks" in printed
    result = json.loads((out / "eval" / "summary.json").read_text())
    assert set(result["results"]["adapter"]["per_env"]) == set(result["comparison_per_env"]) == {"latin", "short"}
    assert "## Per environment" in (out / "eval" / "report.md").read_text()

    # `agentrl view --env` shows one environment's episodes.
    assert main(["view", str(out), "--env", "short", "--limit", "0"]) == 0
    page = (out / "trajectories.html").read_text()
    assert "env <b>short</b>" in page and "env <b>latin</b>" not in page
