"""A run whose tools come from MCP servers: the sql-mcp recipe, shortened, through the real command, with a
second server added by env.mcp; every server ends with the run."""

import json
import sys
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.envs.registry import make
from agentrl.eval.run import EvalSettings, env_factory
from agentrl.testing import child_processes
from agentrl.train.environments import env_factory as train_env_factory
from agentrl.train.recipe import load_recipe, recipe_hash

ROOT = Path(__file__).resolve().parents[2]
TIME = {"command": f"{sys.executable} -m mcp_server_time", "tools": ["convert_time"], "prefix": "clock_"}


def test_env_mcp_reaches_the_environment_alone_or_in_a_mix_and_hashes_only_when_given(tmp_path):
    base = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"env.mcp=[{json.dumps(TIME)}]"])
    assert recipe_hash(recipe) != recipe_hash(base)
    assert "mcp" not in json.dumps(base.env.mix)  # a recipe without servers hashes as before env.mcp existed
    with train_env_factory(recipe.env, "test")() as env:
        assert [s["function"]["name"] for s in env.tool_specs] == ["calculator", "clock_convert_time"]
    path = tmp_path / "mixed.yaml"
    path.write_text(f"env:\n  mix: [{{id: arithmetic}}, {{id: function-calling, mcp: [{json.dumps(TIME)}]}}]\n")
    mixed = load_recipe(path)
    with pytest.raises(Exception, match=r"env.mcp and env.mix together"):
        load_recipe(path, [f"env.mcp=[{json.dumps(TIME)}]"])
    with train_env_factory(mixed.env, "test")() as env:
        fc = next(t for t in env.task_ids if t.startswith("function-calling/"))
        env.reset(options={"task_id": fc})
        assert "clock_convert_time" in [s["function"]["name"] for s in env.tool_specs]
    # agentrl eval rebuilds the environment from a run's recipe.json the same way.
    settings = EvalSettings(env="arithmetic", split="test", env_kwargs={"mcp_servers": [TIME]})
    with env_factory(settings)() as env:
        assert "clock_convert_time" in [s["function"]["name"] for s in env.tool_specs]
    with pytest.raises(Exception, match=r"env.mcp\[0\]: an MCP server needs exactly one of a command"):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["env.mcp=[{tools: [a]}]"])
    with make("arithmetic") as env:  # nothing added without servers
        assert len(env.tool_specs) == 1


@pytest.mark.slow
def test_the_sql_mcp_recipe_trains_and_no_server_outlives_the_run(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "recipes" / "sql-mcp.yaml"),
            "grpo.steps=1",
            "grpo.tasks_per_step=2",
            "grpo.group_size=4",
            "eval.num_tasks=4",
            f"env.mcp=[{json.dumps(TIME)}]",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_before"]["n"] == 4 and summary["eval_after"]["n"] == 4
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["episodes"] == 8 and steps[-1]["infra_failures"] == 0
    trajectory = json.loads((out / "trajectories.jsonl").read_text().splitlines()[0])
    assert "execute_query" in trajectory["text"] and "clock_convert_time" in trajectory["text"]
    assert child_processes("mcp_alchemy") == [] and child_processes("mcp_server_time") == []
    # agentrl eval on the trained adapter: the run's recipe (and its env.mcp) rebuilds the environment.
    evaluation = ["eval", "--adapter", str(out), "-n", "3", "--output-dir", str(tmp_path / "eval"), "--no-progress"]
    assert main(evaluation) == 0
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert evaluated["settings"]["env"] == "sql-mcp" and evaluated["results"]["adapter"]["tasks"] == 3
    assert evaluated["results"]["adapter"]["infra_failures"] == 0
    assert child_processes("mcp_alchemy") == [] and child_processes("mcp_server_time") == []


def test_keys_in_an_mcp_servers_headers_and_env_are_recorded_redacted():
    from agentrl.redact import REDACTED, redact
    from agentrl.train.recipe import recipe_to_dict

    server = {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer abcdefghijklmnopqrstuvwx"}}
    local = {"command": "my-server", "env": {"DB_PASSWORD": "hunter2-hunter2-hunter2"}}
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"env.mcp=[{json.dumps(server)}, {json.dumps(local)}]"])
    recorded = redact(recipe_to_dict(recipe), values=[])["env"]["mcp"]
    assert recorded[0]["headers"] == {"Authorization": REDACTED} and recorded[1]["env"] == {"DB_PASSWORD": REDACTED}
    assert recipe.env.mcp[0]["headers"]["Authorization"].startswith("Bearer ")  # the run itself gets the key
