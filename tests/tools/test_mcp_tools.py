"""MCP tool sources against real servers: one written with the mcp SDK (tests/tools/mcp_server.py), and two
third-party servers from PyPI (mcp-server-time, mcp-alchemy) that run offline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.chat.parsing import ToolCall
from agentrl.envs.tasks import Task
from agentrl.envs.tool_env import ToolEnv
from agentrl.errors import UserError
from agentrl.testing import child_processes
from agentrl.tools import mcp_tools
from agentrl.tools.mcp_tools import close_servers, from_mcp
from agentrl.tools.runner import ToolRunner

SERVER = [sys.executable, str(Path(__file__).with_name("mcp_server.py"))]
TIME_SERVER = [sys.executable, "-m", "mcp_server_time"]
LOWLEVEL = [sys.executable, str(Path(__file__).with_name("mcp_lowlevel_server.py"))]


def wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(autouse=True)
def _clean():
    mcp_tools._LISTED.clear()
    yield
    close_servers()
    assert wait_gone(child_processes("mcp_server") + child_processes("mcp_lowlevel")) == []


def call(runner: ToolRunner, name: str, **arguments):
    return asyncio.run(runner.run_one(ToolCall(name=name, arguments=arguments)))


def test_names_descriptions_and_schemas_come_from_the_server():
    tools = {t.name: t for t in from_mcp(SERVER, exclude=["crash", "hang"])}
    assert "crash" not in tools and "hang" not in tools
    assert tools["add"].description == "Add two integers."
    schema = tools["echo"].parameters
    assert schema["required"] == ["text"]
    assert schema["properties"]["times"] == {"default": 1, "title": "Times", "type": "integer"}
    assert tools["lookup"].parameters["properties"]["fields"]["anyOf"][0] == {
        "items": {"type": "string"},
        "type": "array",
    }
    # The spec a chat template renders carries the server's schema unchanged.
    assert tools["add"].spec["function"]["parameters"] == tools["add"].parameters
    only = from_mcp(SERVER, tools=["add"], prefix="calc_")
    assert [t.name for t in only] == ["calc_add"]
    with pytest.raises(UserError, match=r"has no tool 'subtract'.*it has: add, echo"):
        from_mcp(SERVER, tools=["subtract"])


def test_the_schema_renders_in_the_qwen3_template():
    from agentrl.chat.format import load_chat_format
    from agentrl.models import load_tokenizer

    chat = load_chat_format(load_tokenizer("tiny-qwen3"))
    tools = from_mcp(SERVER, tools=["add", "lookup"])
    text = chat.render([{"role": "user", "content": "hi"}], [t.spec for t in tools], add_generation_prompt=True)
    assert '"name": "add"' in text and '"fields"' in text and "Facts about a city" in text


def test_bad_arguments_go_back_to_the_model_and_never_reach_the_server():
    runner = ToolRunner(from_mcp(SERVER, tools=["add", "count"]))
    before = json.loads(call(runner, "count").message["content"])
    out = call(runner, "add", a="two")
    assert out.error_kind == "invalid_arguments"
    assert (
        "'b' is a required property" in out.message["content"]
        and "'two' is not of type 'integer'" in out.message["content"]
    )
    assert json.loads(call(runner, "count").message["content"]) == before + 1  # nothing else was called
    assert call(runner, "add", a=2, b=40).message["content"] == "42"


def test_results_reach_the_model_as_text():
    runner = ToolRunner(from_mcp(SERVER))
    structured = call(runner, "lookup", city="Oslo", fields=["population"])
    assert structured.ok and json.loads(structured.message["content"]) == {"population": 709000}
    image = call(runner, "picture")
    assert image.ok and image.message["content"] == "[image content: image/png, 66 bytes, not shown]"
    marked = call(runner, "lookup", city="Atlantis")
    assert marked.error_kind == "exception" and "ToolCallError" in marked.message["content"]
    assert call(runner, "echo", text="ab", times=2).message["content"] == "ab ab"


def test_result_text_covers_every_content_type():
    import mcp_types as t

    result = t.CallToolResult(
        content=[
            t.TextContent(type="text", text="rows: 2"),
            t.AudioContent(type="audio", data="AAAA", mime_type="audio/wav"),
            t.ResourceLink(type="resource_link", name="report", uri="file:///r.txt", description="the report"),
            t.EmbeddedResource(type="resource", resource=t.TextResourceContents(uri="mem://a", text="inline")),
            t.EmbeddedResource(type="resource", resource=t.BlobResourceContents(uri="mem://b", blob="AAAAAA==")),
        ],
        structured_content={"ignored": "the text blocks carry the result"},
    )
    assert mcp_tools.result_text(result).splitlines() == [
        "rows: 2",
        "[audio content: audio/wav, 3 bytes, not shown]",
        "[resource link: report at file:///r.txt (the report)]",
        "[resource mem://a]",
        "inline",
        "[binary resource mem://b: unknown type, 4 bytes]",
    ]
    only_structured = t.CallToolResult(content=[], structured_content={"n": 1})
    assert mcp_tools.result_text(only_structured) == '{"n": 1}'
    with pytest.raises(mcp_tools.ToolCallError, match="no such row"):
        mcp_tools.result_text(t.CallToolResult(content=[t.TextContent(type="text", text="no such row")], is_error=True))


def test_a_server_killed_mid_call_is_an_infra_error_and_is_restarted():
    runner = ToolRunner(from_mcp(SERVER))
    first = int(call(runner, "pid").message["content"])
    out = call(runner, "crash")
    assert out.error_kind == "infra" and "Connection closed" in out.message["content"]
    assert wait_gone([first]) == []
    runner.reset()  # the next episode
    second = call(runner, "pid")
    assert second.ok and int(second.message["content"]) != first


def test_a_server_that_never_answers_is_an_infra_error_after_the_timeout():
    runner = ToolRunner(from_mcp(SERVER, timeout=1.0))
    hung = int(call(runner, "pid").message["content"])
    start = time.monotonic()
    out = call(runner, "hang")
    assert out.error_kind == "infra" and "no answer within 1 s" in out.message["content"]
    assert 0.9 < time.monotonic() - start < 5
    assert call(runner, "slow", seconds=0.1).ok  # a new server; the hung one is stopped
    assert wait_gone([hung]) == []


def test_a_server_that_cannot_start_is_an_infra_error_with_its_stderr():
    bad = [sys.executable, "-c", "import sys; print('no database configured', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(mcp_tools.InfraError, match=r"failed to start.*no database configured"):
        from_mcp(bad, startup_timeout=20)
    with pytest.raises(UserError, match="exactly one of a command"):
        from_mcp()


class _Env(ToolEnv):
    def __init__(self, tools=("pid", "count"), **kwargs):
        super().__init__([Task(id="t", prompt="count", answer=1)], from_mcp(SERVER, tools=list(tools), **kwargs))

    def score(self, task, answer, messages):
        return 1.0


def _calls(*names: str) -> dict:
    calls = [{"type": "function", "function": {"name": n, "arguments": {}}} for n in names]
    return {"role": "assistant", "content": "", "tool_calls": calls}


async def _episode(env: _Env) -> tuple[int, int]:
    env.reset(seed=0)
    obs, *_ = await env.astep(_calls("pid", "count"))
    _, reward, done, *_ = await env.astep({"role": "assistant", "content": "done"})
    assert done and reward == 1.0
    return int(obs[0]["content"]), int(obs[1]["content"])


@pytest.mark.parametrize("per_episode", [False, True], ids=["shared", "per-episode"])
def test_a_crash_marks_the_episode_as_infra_and_the_next_episode_gets_a_new_server(per_episode):
    with _Env(tools=("pid", "crash"), per_episode=per_episode) as env:
        env.reset(seed=0)
        obs, *_ = env.step(_calls("pid"))
        first = int(obs[0]["content"])
        obs, _, done, _, info = env.step(_calls("crash"))
        assert not done and "this is not your fault" in obs[0]["content"]
        assert info["tool_errors"] == ["infra"] and "Connection closed" in info["infra_error"]
        _, _, done, _, info = env.step({"role": "assistant", "content": "gave up"})
        assert done and info["infra_error"]  # the trainer leaves this episode out
        env.reset(seed=1)
        obs, _, _, _, info = env.step(_calls("pid"))
        assert int(obs[0]["content"]) != first and "infra_error" not in info


@pytest.mark.parametrize("per_episode", [False, True], ids=["shared", "per-episode"])
def test_32_concurrent_episodes(per_episode):
    envs = [_Env(per_episode=per_episode) for _ in range(32)]

    async def play() -> list[tuple[int, int]]:
        return await asyncio.gather(*(_episode(e) for e in envs))

    results = asyncio.run(play())
    pids = {pid for pid, _ in results}
    counts = sorted(n for _, n in results)
    if per_episode:
        assert len(pids) == 32 and counts == [1] * 32  # each episode had a fresh process and its state
    else:
        assert len(pids) == 1 and counts[-1] - counts[0] == 31  # one process served all of them
    for env in envs:
        env.close()
    close_servers()
    assert wait_gone(list(pids)) == []
    assert child_processes("mcp_server") == []


def test_no_server_outlives_a_killed_parent(tmp_path):
    """Even started by a wrapper that forks (sh -c without exec), and with a forked child of the parent
    still holding the servers' stdin open, so that no end-of-file comes."""
    wrapped = ["sh", "-c", " ".join(SERVER)]
    script = f"""
import os, sys, asyncio, time
from agentrl.tools.mcp_tools import from_mcp
from agentrl.tools.runner import ToolRunner
from agentrl.chat.parsing import ToolCall
shared = ToolRunner(from_mcp({SERVER!r}, tools=["pid"]))
own = ToolRunner(from_mcp({SERVER!r}, tools=["pid"], per_episode=True, cwd={str(tmp_path)!r}))
forks = ToolRunner(from_mcp({wrapped!r}, tools=["pid"]))
for r in (shared, own, forks):
    print(asyncio.run(r.run_one(ToolCall(name="pid", arguments={{}}))).message["content"], flush=True)
if os.fork() == 0:
    sys.stdout.close()
    time.sleep(60)
    os._exit(0)
input()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(proc.stdout.readline()) for _ in range(3)]
    assert all(_alive(p) for p in pids) and len(set(pids)) == 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert wait_gone(pids, seconds=10) == []
    finally:
        for pid in _all_processes(sys.executable):  # the forked child, if the test failed
            if "from agentrl.tools.mcp_tools import from_mcp" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)


def test_a_url_server_over_streamable_http():
    port = _free_port()
    proc = _http_server(port)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        runner = ToolRunner(from_mcp(url=url, headers={"X-Trace": "1"}, timeout=5))
        assert call(runner, "add", a=1, b=2).message["content"] == "3"
        assert json.loads(call(runner, "lookup", city="paris").message["content"])["country"] == "France"
        proc.kill()
        proc.wait()
        out = call(runner, "add", a=1, b=2)
        assert out.error_kind == "infra"
    finally:
        proc.kill()


def test_third_party_time_server():
    tools = {t.name: t for t in from_mcp(TIME_SERVER)}
    assert set(tools) == {"get_current_time", "convert_time"}
    assert tools["convert_time"].parameters["required"] == ["source_timezone", "time", "target_timezone"]
    runner = ToolRunner(list(tools.values()))
    out = call(runner, "convert_time", source_timezone="Etc/UTC", time="12:00", target_timezone="Etc/GMT-9")
    assert out.ok and json.loads(out.message["content"])["target"]["datetime"].endswith("T21:00:00+09:00")
    bad = call(runner, "get_current_time", timezone="Mars/Olympus_Mons")
    assert bad.error_kind == "exception" and "Invalid timezone" in bad.message["content"]
    assert call(runner, "convert_time", time="12:00").error_kind == "invalid_arguments"


def test_third_party_sql_server_is_read_only(tmp_path):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (name TEXT, price INTEGER)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", [("pen", 3), ("ink", 12)])
    env = {"DB_URL": f"sqlite:///file:{db}?mode=ro&uri=true"}
    command = [sys.executable, "-c", "from mcp_alchemy.server import main; main()"]
    runner = ToolRunner(from_mcp(command, env=env, tools=["execute_query", "all_table_names"]))
    assert call(runner, "all_table_names").message["content"] == "items"
    rows = call(runner, "execute_query", query="SELECT price FROM items WHERE name = 'ink'").message["content"]
    assert rows.splitlines()[:2] == ["1. row", "price: 12"]
    dropped = call(runner, "execute_query", query="DROP TABLE items")
    assert "readonly database" in dropped.message["content"]
    assert (
        call(runner, "execute_query", query="SELECT count(*) AS n FROM items")
        .message["content"]
        .startswith("1. row\nn: 2")
    )


def test_make_adds_an_mcp_servers_tools_to_an_environments_own():
    import agentrl

    server = {"command": " ".join(SERVER), "tools": ["add"], "prefix": "mcp_"}
    with agentrl.make("arithmetic", split="test", num_tasks=5, mcp_servers=[server]) as env:
        assert [s["function"]["name"] for s in env.tool_specs] == ["calculator", "mcp_add"]
        env.reset(seed=0)
        call = {"type": "function", "function": {"name": "mcp_add", "arguments": {"a": 2, "b": 5}}}
        obs, *_ = env.step({"role": "assistant", "content": "", "tool_calls": [call]})
        assert obs == [{"role": "tool", "name": "mcp_add", "content": "7"}]
    with pytest.raises(UserError, match=r"two tools are named 'add'.*give the MCP server a prefix"):
        agentrl.make("arithmetic", mcp_servers=[{"command": SERVER, "tools": ["add"]}, {"command": SERVER}])
    with pytest.raises(UserError, match="unknown MCP server key 'cmd'"):
        agentrl.make("arithmetic", mcp_servers=[{"cmd": SERVER}])
    with pytest.raises(UserError, match="a list of mappings"):
        agentrl.make("arithmetic", mcp_servers={"command": SERVER})


def test_several_calls_in_an_episodes_first_turn_share_one_per_episode_server():
    with _Env(per_episode=True) as env:
        env.reset(seed=0)
        obs, *_ = env.step(_calls("pid", "pid", "count", "count"))
        pids = {int(m["content"]) for m in obs[:2]}
        assert len(pids) == 1 and sorted(int(m["content"]) for m in obs[2:]) == [1, 2]
        assert len(child_processes("mcp_server.py")) == 1  # one server (under its supervisor) for the episode
        env.step({"role": "assistant", "content": "done"})  # the episode ends: its server goes
        assert wait_gone(list(pids)) == []


def test_one_episodes_hang_does_not_cut_off_another_episodes_call_on_a_shared_server():
    impatient = ToolRunner(from_mcp(SERVER, tools=["hang", "pid"], timeout=1.0))
    patient = ToolRunner(from_mcp(SERVER, tools=["slow", "pid"], timeout=10.0))  # its own timeout, same server
    first = int(call(patient, "pid").message["content"])

    async def play():
        hung = asyncio.ensure_future(impatient.run_one(ToolCall(name="hang", arguments={})))
        slow = asyncio.ensure_future(patient.run_one(ToolCall(name="slow", arguments={"seconds": 2.5})))
        await asyncio.sleep(1.4)  # the hang has timed out: the next call starts a new server
        fresh = await impatient.run_one(ToolCall(name="pid", arguments={}))
        return await hung, await slow, fresh

    hung, slow, fresh = asyncio.run(play())
    assert hung.error_kind == "infra" and "no answer within 1 s" in hung.message["content"]
    assert slow.ok and slow.message["content"] == "done"  # finished on the old server, 2.5 s > the other's 1 s
    assert fresh.ok and int(fresh.message["content"]) != first
    assert wait_gone([first]) == []  # stopped once its last call ended


def test_error_replies_reach_the_model_and_leave_the_server_up():
    runner = ToolRunner(from_mcp(LOWLEVEL))
    assert set(runner.tools) == {"pid", "fail", "miscount", "positive", "dangling"}  # both pages
    first = call(runner, "pid").message["content"]
    for code in (-32603, -32601, -32602, 404):
        out = call(runner, "fail", code=code)
        assert out.error_kind == "exception" and f"refused with code {code}" in out.message["content"]
    bad = call(runner, "miscount")  # the server broke its own output schema: not the model's doing
    assert bad.error_kind == "infra" and "sent a bad result" in bad.message["content"]
    assert call(runner, "pid").message["content"] == first  # never restarted


def test_schemas_in_an_older_draft_or_with_a_dangling_reference():
    runner = ToolRunner(from_mcp(LOWLEVEL, tools=["positive", "dangling"]))
    assert call(runner, "positive", n=3).ok
    zero = call(runner, "positive", n=0)  # draft-04's boolean exclusiveMinimum, honoured
    assert zero.error_kind == "invalid_arguments" and "less than or equal to the minimum" in zero.message["content"]
    dangling = call(runner, "dangling", x=1)
    assert dangling.error_kind == "infra" and "schema cannot be checked" in dangling.message["content"]


def test_a_servers_own_children_go_with_it(tmp_path):
    marker = "1234.5"
    command = ["sh", "-c", f"sleep {marker} & exec {' '.join(SERVER)}"]
    runner = ToolRunner(from_mcp(command, tools=["pid"]))
    assert call(runner, "pid").ok
    sleeper = [p for p in _all_processes(f"sleep {marker}")]
    assert len(sleeper) == 1
    close_servers()
    assert wait_gone(sleeper) == []


def test_a_forked_child_starts_its_own_servers():
    runner = ToolRunner(from_mcp(SERVER, tools=["pid"]))
    parent_server = int(call(runner, "pid").message["content"])
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            mine = ToolRunner(from_mcp(SERVER, tools=["pid"]))
            out = asyncio.run(mine.run_one(ToolCall(name="pid", arguments={})))
            code = 0 if out.ok and int(out.message["content"]) != parent_server else 2
            close_servers()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(call(runner, "pid").message["content"]) == parent_server  # the parent's is untouched


def _all_processes(marker: str) -> list[int]:
    """Live processes whose command line starts with ``marker``."""
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmd.read_bytes().replace(b"\0", b" ").decode().startswith(marker) and _alive(int(cmd.parent.name)):
                out.append(int(cmd.parent.name))
        except (OSError, ValueError):
            continue
    return out


def test_a_per_episode_server_that_dies_between_calls_fails_the_rest_of_its_episode():
    with _Env(per_episode=True) as env:
        env.reset(seed=0)
        obs, *_ = env.step(_calls("pid", "count"))
        pid = int(obs[0]["content"])
        os.kill(pid, signal.SIGKILL)  # while idle: no call of ours is in flight
        assert wait_gone([pid]) == []
        time.sleep(0.5)
        obs, _, _, _, info = env.step(_calls("count"))
        assert info["tool_errors"] == ["infra"] and "is down" in obs[0]["content"]  # not silently restarted
        env.step({"role": "assistant", "content": "done"})
        env.reset(seed=1)
        obs, _, _, _, info = env.step(_calls("count"))
        assert obs[0]["content"] == "1" and "infra_error" not in info  # the next episode: a new server


def test_an_http_servers_lost_session_is_infra_and_the_next_call_reconnects():
    port = _free_port()
    proc = _http_server(port)
    try:
        runner = ToolRunner(from_mcp(url=f"http://127.0.0.1:{port}/mcp", timeout=5))
        assert call(runner, "add", a=1, b=2).ok
        proc.kill()
        proc.wait()
        proc = _http_server(port)  # a new server knows nothing of the old session
        lost = call(runner, "add", a=1, b=2)
        assert lost.error_kind == "infra"
        assert call(runner, "add", a=2, b=2).message["content"] == "4"
    finally:
        proc.kill()


def test_a_forked_childs_episode_end_leaves_the_parents_server_alone():
    with _Env(per_episode=True) as env:
        env.reset(seed=0)
        obs, *_ = env.step(_calls("pid"))
        pid = int(obs[0]["content"])
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                env.unwrapped.runner.reset() if hasattr(env, "unwrapped") else env.runner.reset()
                time.sleep(0.5)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert _alive(pid)
        obs, *_ = env.step(_calls("pid"))
        assert int(obs[0]["content"]) == pid


def test_a_schema_reference_to_a_url_is_never_fetched():
    from agentrl.tools.tool import Tool

    async def noop(**_):
        return "ok"

    schema = {"type": "object", "properties": {"x": {"$ref": "http://10.255.255.1/never.json"}}}
    runner = ToolRunner([Tool(fn=noop, name="remote", description="", parameters=schema)])
    start = time.monotonic()
    out = call(runner, "remote", x=1)
    assert out.error_kind == "infra" and "schema cannot be checked" in out.message["content"]
    assert time.monotonic() - start < 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*SERVER, "--http", str(port)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "the HTTP server did not start"
            time.sleep(0.1)
