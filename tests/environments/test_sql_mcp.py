"""sql-mcp: questions about a generated SQLite database, answered through MCP Alchemy's execute_query tool."""

import sqlite3

import agentrl
from agentrl.environments import sql_mcp


def test_answers_come_from_the_database_and_the_solution_scores_one():
    path = sql_mcp.database_path()
    tasks = sql_mcp.make_tasks("test", 40, path)
    assert {t.metadata["kind"] for t in tasks} == {"population", "founded"}
    with sqlite3.connect(path) as db:
        for t in tasks:
            sql = f"SELECT {t.metadata['kind']} FROM towns WHERE name = ?"
            (value,) = db.execute(sql, (t.metadata["town"],)).fetchone()
            assert value == t.answer
    with agentrl.make("sql-mcp", split="test", num_tasks=40) as env:
        task = env.unwrapped.tasks[3]
        env.reset(options={"task_id": task.id})
        for turn in env.unwrapped.solution(task):
            _, reward, done, _, info = env.step(turn)
        assert done and reward == 1.0 and info["reward_components"]["used_tool"] == 1.0
        env.reset(options={"task_id": task.id})
        _, reward, done, _, _ = env.step(f"\\boxed{{{task.answer + 1}}}")
        assert done and reward == 0.0


def test_the_worked_examples_show_the_servers_real_output_and_no_split_town():
    with agentrl.make("sql-mcp", split="train", num_tasks=10) as env:
        shots = env.unwrapped.few_shot
        results = [m["content"] for m in shots if m["role"] == "tool"]
        assert len(results) == 2 and all(r.startswith("1. row\n") and r.endswith("Result: 1 rows") for r in results)
        towns = {t.metadata["town"] for t in sql_mcp.splits()["train"] + sql_mcp.splits()["test"]}
        assert not towns & set(sql_mcp._EXAMPLE_TOWNS)


def test_a_query_that_writes_is_refused_so_a_shared_server_stays_clean():
    with agentrl.make("sql-mcp", split="test", num_tasks=5) as env:
        env.reset(seed=0)
        call = {"type": "function", "function": {"name": "execute_query", "arguments": {"query": "DELETE FROM towns"}}}
        obs, *_ = env.step({"role": "assistant", "content": "", "tool_calls": [call]})
        assert "readonly database" in obs[0]["content"]
    with sqlite3.connect(sql_mcp.database_path()) as db:
        assert db.execute("SELECT count(*) FROM towns").fetchone()[0] == sql_mcp._NUM_TOWNS
