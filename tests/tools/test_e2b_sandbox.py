"""Contract tests for ``E2BSandbox`` against the real e2b / e2b-code-interpreter SDK, HTTP faked.

``e2b_fake.install`` swaps the SDK's transport factories for an ``httpx.MockTransport`` serving an
in-process fake of E2B, so everything above the transport (request building, auth headers, retries,
JSON and JSON-lines parsing, exception mapping) is the SDK's own code. The last test talks to the real
service and runs only when ``E2B_API_KEY`` is set.
"""

import builtins
import itertools
import os
import sys
import threading
import time

import httpx
import pytest
from e2b_fake import FakeE2B, install

from agentrl.tools.sandbox.base import SandboxError
from agentrl.tools.sandbox.e2b import STDIN_PATH, WORKDIR, E2BSandbox

FAST = {"creations_per_second": 1000.0}


@pytest.fixture
def fake(monkeypatch):
    service = install(monkeypatch)
    yield service
    service.shutdown()


@pytest.fixture
def sandbox(fake):
    sb = E2BSandbox(timeout=5, **FAST)
    yield sb
    sb.close()


def user_executions(fake: FakeE2B) -> list:
    """The /execute requests that carried the user's code (not the working-directory prelude)."""
    return [r for r in fake.of("execute") if "__os.chdir" not in r.json["code"]]


def assert_all_killed(fake: FakeE2B) -> None:
    assert fake.sandboxes, "no sandbox was created"
    assert fake.alive == []
    killed = {r.sandbox_id for r in fake.of("kill")}
    assert killed >= {sid for sid, sb in fake.sandboxes.items() if sb.kill_reason == "killed"}
    assert all(sb.kill_reason in ("killed", "expired") for sb in fake.sandboxes.values())


# ----- construction: no silent fallback ----------------------------------------------------------
@pytest.mark.parametrize("missing", ["e2b_code_interpreter", "e2b"])
def test_missing_package_is_an_error(monkeypatch, missing):
    if missing == "e2b_code_interpreter":
        monkeypatch.setitem(sys.modules, "e2b_code_interpreter", None)  # import raises ImportError
    else:
        real_import = builtins.__import__

        def no_e2b(name, *args, **kwargs):
            if name == "e2b" or name.startswith("e2b."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_e2b)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    with pytest.raises(SandboxError, match=r"pip install 'agentrl\[e2b\]'"):
        E2BSandbox()


def test_missing_api_key_is_an_error(fake, monkeypatch):
    monkeypatch.delenv("E2B_API_KEY")
    with pytest.raises(SandboxError, match="E2B_API_KEY") as info:
        E2BSandbox()
    assert "never falls back" in str(info.value)
    assert fake.requests == []  # nothing was created anywhere, remote or local


def test_explicit_api_key_wins_over_environment(fake, monkeypatch):
    monkeypatch.setenv("E2B_API_KEY", "e2b_not-the-right-one")
    with E2BSandbox(api_key=fake.api_key, **FAST) as sb:
        assert sb.run("print('hi')").stdout == "hi\n"
    assert fake.of("create")[0].headers["x-api-key"] == fake.api_key


def test_unknown_plan_is_rejected(fake):
    with pytest.raises(ValueError, match="plan"):
        E2BSandbox(plan="enterprise")


# ----- run(): output mapping -----------------------------------------------------------------------
def test_run_maps_stdout_and_stderr(sandbox, fake):
    res = sandbox.run("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nprint('more out')")
    assert res.ok, res
    assert res.stdout == "to out\nmore out\n"
    assert res.stderr == "to err\n"
    assert (res.exit_code, res.error, res.timed_out, res.infra_error) == (0, None, False, None)
    assert res.backend == "e2b" and res.duration_ms > 0


def test_run_maps_an_exception_to_error(sandbox):
    res = sandbox.run("print('before')\nraise ValueError('bad input')")
    assert not res.ok
    assert res.stdout == "before\n"
    assert res.exit_code == 1
    assert res.error is not None
    assert (res.error.name, res.error.value) == ("ValueError", "bad input")
    assert "Traceback" in res.error.traceback and "ValueError: bad input" in res.error.traceback
    assert res.timed_out is False and res.infra_error is None


def test_run_maps_a_syntax_error(sandbox):
    res = sandbox.run("def f(:\n    pass")
    assert res.exit_code == 1 and res.error is not None and res.error.name == "SyntaxError"
    assert res.infra_error is None


def test_run_output_is_capped(fake):
    with E2BSandbox(max_output_bytes=100, **FAST) as sb:
        res = sb.run("print('x' * 5000)")
    assert res.stdout.startswith("x" * 100)
    assert "[truncated 4901 bytes]" in res.stdout
    assert len(res.stdout) < 200


def test_run_writes_files_into_the_working_directory(sandbox, fake):
    files = {"data.txt": "3 4\n", "sub/blob.bin": bytes([0, 1, 2, 255])}
    res = sandbox.run(
        "import os\nprint(os.getcwd())\nprint(open('data.txt').read().split())\n"
        "print(list(open('sub/blob.bin', 'rb').read()))",
        files=files,
    )
    assert res.ok, res
    assert res.stdout.splitlines() == [WORKDIR, "['3', '4']", "[0, 1, 2, 255]"]
    writes = fake.of("files")
    assert {httpx.URL(r.url).params["path"] for r in writes} == {f"{WORKDIR}/data.txt", f"{WORKDIR}/sub/blob.bin"}
    assert all(r.headers["x-access-token"] == fake.sandboxes[r.sandbox_id].envd_access_token for r in writes)


def test_run_rejects_escaping_file_paths_and_still_cleans_up(sandbox, fake):
    with pytest.raises(ValueError, match="relative"):
        sandbox.run("print(1)", files={"../evil.txt": "x"})
    assert fake.of("files") == []
    assert fake.alive == []
    assert sandbox.run("print('slot was released')").ok


@pytest.mark.parametrize("stdin", ["3\n4\n", b"3\n4\n"])
def test_run_feeds_stdin(sandbox, fake, stdin):
    res = sandbox.run("import sys\nprint(sum(int(line) for line in sys.stdin))", stdin=stdin)
    assert res.ok, res
    assert res.stdout == "7\n"
    [write] = fake.of("files")
    assert httpx.URL(write.url).params["path"] == STDIN_PATH


# ----- run(): timeouts and infrastructure failures -------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import time\nprint('started')\ntime.sleep(60)",  # sleeps past the deadline
        "while True:\n    pass",  # busy loop
        "x = 1  # hang",  # the fake's marker: the cell never finishes
    ],
    ids=["sleep", "busy-loop", "hang-marker"],
)
def test_run_timeout_is_timed_out_not_infra(sandbox, fake, code):
    start = time.monotonic()
    res = sandbox.run(code, timeout=0.3)
    elapsed = time.monotonic() - start
    assert res.timed_out is True
    assert res.infra_error is None
    assert res.exit_code is None and not res.ok
    assert 0.3 <= elapsed < 3, elapsed
    [execute] = user_executions(fake)
    assert execute.timeout["read"] == pytest.approx(0.3)  # the code's timeout went to the SDK as its deadline
    assert_all_killed(fake)


def test_run_within_timeout_is_not_timed_out(sandbox):
    res = sandbox.run("import time\ntime.sleep(0.1)\nprint('done')", timeout=2)
    assert res.ok and res.stdout == "done\n"


def _expire_when_executing(fake: FakeE2B, marker: str) -> threading.Thread:
    def expire() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            running = [r for r in fake.of("execute") if marker in r.json["code"]]
            if running:
                time.sleep(0.05)
                fake.expire(running[0].sandbox_id)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=expire, daemon=True)
    thread.start()
    return thread


INFRA_CASES = {
    "auth-401": ("create", {"status": 401}, "AuthenticationException"),
    "rate-limit-429": ("create", {"status": 429, "times": None}, "RateLimitException"),
    "create-500": ("create", {"status": 500}, "500"),
    "create-connect-error": ("create", {"exc": httpx.ConnectError}, "ConnectError"),
    "files-500": ("files", {"status": 500}, "500"),
    "execute-500": ("execute", {"status": 500, "match": "payload"}, "500 Internal Server Error"),
    "execute-connect-error": ("execute", {"exc": httpx.ConnectError, "match": "payload"}, "ConnectError"),
    "execute-connect-timeout": ("execute", {"exc": httpx.ConnectTimeout, "match": "payload"}, "Request timed out"),
    "execute-dropped": ("execute", {"exc": httpx.ReadError, "match": "payload"}, "ReadError"),
}


@pytest.mark.parametrize("case", list(INFRA_CASES))
def test_run_e2b_failures_are_infra_errors(sandbox, fake, case):
    op, failure, expected = INFRA_CASES[case]
    fake.fail(op, **failure)
    res = sandbox.run("print('payload')", files={"in.txt": "x"}, timeout=2)
    assert res.infra_error is not None and res.infra_error.startswith("e2b: "), res
    assert expected in res.infra_error
    assert res.timed_out is False
    assert res.exit_code is None and not res.ok
    assert fake.alive == []
    if case == "rate-limit-429":
        assert len(fake.of("create")) == 4  # the SDK retried the 429 three times before giving up
    if op != "create":
        assert_all_killed(fake)


def test_wrong_api_key_is_an_infra_error(fake):
    with E2BSandbox(api_key="e2b_" + "0" * 40, **FAST) as sb:
        res = sb.run("print(1)")
    assert "401" in res.infra_error and "AuthenticationException" in res.infra_error
    assert fake.sandboxes == {}


def test_transient_rate_limit_is_absorbed_by_sdk_retries(sandbox, fake):
    fake.fail("create", status=429, times=1)
    res = sandbox.run("print('after retry')")
    assert res.ok and res.stdout == "after retry\n"
    assert len(fake.of("create")) == 2


def test_sandbox_vanishing_mid_execution_is_infra_not_timeout(sandbox, fake):
    expirer = _expire_when_executing(fake, "vanish")
    res = sandbox.run("print('vanish')  # hang", timeout=5)
    expirer.join(5)
    assert res.timed_out is False
    assert res.infra_error is not None and "killed" in res.infra_error
    assert fake.alive == []


def test_create_request_contract(fake):
    with E2BSandbox(episode_deadline=900, request_timeout=7, **FAST) as sb:
        assert sb.run("print(1)").ok
    [create] = fake.of("create")
    assert create.method == "POST" and httpx.URL(create.url).path == "/v2/sandboxes"
    assert create.headers["x-api-key"] == fake.api_key
    assert create.json["allow_internet_access"] is False
    assert create.json["timeout"] >= 900
    assert create.json["templateID"] == "code-interpreter-v1"
    assert create.timeout["read"] == 7  # request_timeout reaches the control-plane call
    sandbox_id = create.sandbox_id
    token = fake.sandboxes[sandbox_id].envd_access_token
    for r in fake.of("execute"):
        assert r.sandbox_id == sandbox_id and r.headers["x-access-token"] == token
        assert "x-api-key" not in r.headers  # the API key never travels to the sandbox
    [kill] = fake.of("kill")
    assert kill.sandbox_id == sandbox_id and kill.headers["x-api-key"] == fake.api_key


def test_lifetime_covers_a_timeout_longer_than_the_episode(fake):
    with E2BSandbox(template="my-template", timeout=1000, episode_deadline=10, **FAST) as sb:
        assert sb.lifetime >= 1000
        sb.run("print(1)")
    [create] = fake.of("create")
    assert create.json["timeout"] >= 1000
    assert create.json["templateID"] == "my-template"


def test_every_run_kills_its_sandbox(sandbox, fake):
    fake.fail("execute", status=500, match="broken")
    results = [
        sandbox.run("print('ok')"),
        sandbox.run("1/0"),
        sandbox.run("import time\ntime.sleep(60)", timeout=0.2),
        sandbox.run("print('broken')"),
    ]
    assert [r.ok for r in results] == [True, False, False, False]
    assert results[2].timed_out and results[3].infra_error
    assert len(fake.sandboxes) == 4
    assert len(fake.of("kill")) == 4
    assert_all_killed(fake)


def test_runs_do_not_share_state(sandbox):
    assert sandbox.run("secret = 42").ok
    res = sandbox.run("print(secret)")
    assert res.error is not None and res.error.name == "NameError"


# ----- sessions ------------------------------------------------------------------------------------
def test_session_keeps_state_and_returns_last_expression(sandbox, fake):
    with sandbox.session() as s:
        assert s.run("x = 20\ndef double(v):\n    return 2 * v").ok
        res = s.run("print('side effect')\ndouble(x) + 2")
        assert res.ok and res.result == "42" and res.stdout == "side effect\n"
        assert s.run("x = x + 1").result is None  # statements have no result
        assert s.run("[x, double(x)]").result == "[21, 42]"
        res = s.run("open('notes.txt').read()", files={"notes.txt": "kept"})
        assert res.result == "kept"  # the server strips a str repr's quotes
    assert len(fake.of("create")) == 1
    assert_all_killed(fake)


def test_session_error_keeps_state(sandbox, fake):
    with sandbox.session() as s:
        s.run("total = 5")
        res = s.run("total += 1\nraise KeyError('k')")
        assert res.error.name == "KeyError" and not res.state_lost
        assert s.run("total").result == "6"
    assert len(fake.sandboxes) == 1


def test_session_timeout_loses_state_and_moves_to_a_fresh_sandbox(sandbox, fake):
    s = sandbox.session()
    s.run("x = 1")
    res = s.run("import time\ntime.sleep(60)", timeout=0.3)
    assert res.timed_out and res.state_lost and res.infra_error is None
    first = fake.of("create")[0].sandbox_id
    assert not fake.sandboxes[first].alive
    res = s.run("print(x)")
    assert res.error is not None and res.error.name == "NameError"  # variables are gone
    assert not res.state_lost
    assert s.run("y = 3\ny * 2").result == "6"
    assert len(fake.sandboxes) == 2 and len(fake.alive) == 1
    s.close()
    assert fake.alive == []


def test_session_close_kills_the_remote_sandbox(sandbox, fake):
    s = sandbox.session()
    assert s.run("a = 1").ok
    [sb] = fake.alive
    s.close()
    assert not sb.alive
    assert [r.sandbox_id for r in fake.of("kill")] == [sb.sandbox_id]
    with pytest.raises(SandboxError):
        s.run("a")
    s.close()  # idempotent
    assert len(fake.of("kill")) == 1


def test_session_vanished_sandbox_is_infra_and_recovers(sandbox, fake):
    s = sandbox.session()
    s.run("v = 1")
    [sb] = fake.alive
    fake.expire(sb.sandbox_id)
    res = s.run("v")
    assert res.infra_error is not None and res.state_lost and not res.timed_out
    res = s.run("v = 2\nv")
    assert res.ok and res.result == "2"
    assert len(fake.sandboxes) == 2
    s.close()


def test_sandbox_close_kills_open_sessions(fake):
    sb = E2BSandbox(**FAST)
    s1, s2 = sb.session(), sb.session()
    s1.run("a = 1")
    s2.run("b = 2")
    assert len(fake.alive) == 2
    sb.close()
    assert fake.alive == []
    with pytest.raises(SandboxError, match="closed"):
        sb.run("print(1)")


def test_session_reads_stdin_through_input_and_a_later_cell_gets_none(sandbox):
    with sandbox.session() as s:
        res = s.run("a = input('first? ')\nb = input()\nprint(a, b)", stdin="3\n4\n")
        assert res.ok and res.stdout == "first? 3 4\n", res  # the prompt is echoed, as off a terminal
        res = s.run("input()")  # no stdin for this cell: end of file, as in a local worker
        assert res.error is not None and res.error.name == "EOFError", res


def test_timed_out_cell_returns_what_it_printed_before(sandbox, fake):
    res = sandbox.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=0.5)
    assert res.timed_out and res.stdout == "started\n", res


def test_output_flood_stops_reading_and_kills_the_sandbox(fake):
    with E2BSandbox(max_output_bytes=1000, **FAST) as sb:
        res = sb.run("while True:\n    print('x' * 1000)", timeout=30)
    assert res.error is not None and res.error.name == "OutputLimitExceeded" and not res.timed_out, res
    assert res.stdout.startswith("x" * 999) and "truncated" in res.stdout and len(res.stdout) < 1200
    assert fake.alive == []


def test_a_dead_kernel_is_the_codes_failure_with_state_lost(sandbox, fake):
    with sandbox.session() as s:
        s.run("x = 1")
        res = s.run("import os\nos._exit(0)")
        assert res.error is not None and res.error.name == "ContextRestarting", res
        assert res.state_lost and res.infra_error is None and not res.timed_out
        res = s.run("x")  # the kernel restarted in the same sandbox: the variables are gone
        assert res.error is not None and res.error.name == "NameError"
    assert len(fake.sandboxes) == 1


# ----- session.call: the grading interface -----------------------------------------------------------
def test_call_returns_the_strictly_encoded_value(sandbox, fake):
    from agentrl.tools.sandbox.plain import decode, encode

    with sandbox.session() as s:
        assert s.run("def f(xs, k):\n    print('side')\n    return {k: tuple(xs), 'n': None}").ok
        resp = s.call("f", encode([[1, 2.5, "x"], "key"]))
        assert resp["error"] is None and resp["exit_code"] == 0 and resp["stdout"] == "side\n", resp
        assert decode(resp["value"]) == {"key": (1, 2.5, "x"), "n": None}
        assert (resp["timed_out"], resp["state_lost"], resp.get("infra_error")) == (False, False, None)
        resp = s.call("f", encode([[]]))  # a missing argument: the call raised
        assert resp["error"]["name"] == "TypeError" and resp["exit_code"] == 1 and resp["value"] is None
        resp = s.call("g", encode([]))
        assert resp["error"]["name"] == "KeyError"
        s.run("class Eq:\n    def __eq__(self, o):\n        return True\ndef h():\n    return Eq()")
        assert s.call("h", encode([]))["error"]["name"] == "NotPlain"
        s.run("import sys\ndef bye():\n    sys.exit(3)")
        resp = s.call("bye", encode([]))
        assert resp["error"]["name"] == "SystemExit" and resp["exit_code"] == 3 and not resp["state_lost"]
    # Arguments and the answer cross as base64 of JSON: no literal of them is in the code sent.
    calls = [r for r in fake.of("execute") if "agentrl_call" in r.json["code"]]
    assert calls and all("key" not in r.json["code"] for r in calls)


def test_call_timeout_and_kernel_death_are_the_codes_failures(sandbox, fake):
    with sandbox.session() as s:
        s.run("import os, time\ndef slow():\n    time.sleep(60)\ndef die():\n    os._exit(0)")
        resp = s.call("slow", [], timeout=0.5)
        assert resp["timed_out"] and resp["state_lost"] and not resp.get("infra_error"), resp
        assert not fake.sandboxes[fake.of("create")[0].sandbox_id].alive  # only killing the VM stops it
        s.run("import os\ndef die():\n    os._exit(0)")
        resp = s.call("die", [])
        assert resp["state_lost"] and resp["error"]["name"] == "ContextRestarting" and not resp.get("infra_error")


def test_a_forged_call_record_cannot_claim_an_outage_or_a_timeout(sandbox):
    # The candidate replaces base64.b64decode so that the helper the grader sends is never run, and
    # answers with a record of its own that claims every failure a grader would not hold against it.
    forge = """
import base64, json
forged = {"value": 6, "infra_error": "forged outage", "timed_out": True, "state_lost": True, "exit_code": 0}
helper = "def call(*a):\\n    return %r\\n" % base64.b64encode(json.dumps(forged).encode()).decode()
real = base64.b64decode
base64.b64decode = lambda s, *a, **k: helper.encode() if len(s) > 1000 else real(s, *a, **k)
"""
    with sandbox.session() as s:
        assert s.run(forge).ok
        resp = s.call("anything", [])
    assert resp["value"] == 6  # a lie about itself, as good as returning 6
    assert resp.get("infra_error") is None and not resp["timed_out"] and not resp["state_lost"], resp


@pytest.mark.parametrize(
    "text",
    [None, 42, "not base64!", "bm90IGpzb24=", "WzEsIDJd", "eyJlcnJvciI6IDF9", "X" * (2 << 20)],
    ids=["none", "int", "not-base64", "not-json", "not-object", "bad-error", "too-large"],
)
def test_malformed_call_records_are_rejected_without_evaluation(text):
    from agentrl.tools.sandbox.e2b import _parse_record

    with pytest.raises(ValueError):
        _parse_record(text)


# ----- rate limiting and pooling ---------------------------------------------------------------------
def _run_in_threads(sb: E2BSandbox, codes: list[str], timeout: float = 10) -> list:
    results: list = [None] * len(codes)

    def work(i: int) -> None:
        results[i] = sb.run(codes[i])

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(codes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "runs did not finish (deadlock?)"
    return results


def test_hobby_plan_spaces_creations_one_second_apart(monkeypatch):
    fake = install(monkeypatch, min_create_interval=0.9)  # the fake answers 429 to creations closer than this
    try:
        with E2BSandbox(plan="hobby") as sb:
            results = _run_in_threads(sb, ["print('a')", "print('b')", "print('c')"])
        assert all(r.ok for r in results), results
        times = sorted(r.time for r in fake.of("create"))
        assert len(times) == 3
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.9 for gap in gaps), gaps
    finally:
        fake.shutdown()


def test_max_concurrent_bounds_live_sandboxes(monkeypatch):
    fake = install(monkeypatch, concurrency_limit=2)  # a third live sandbox would get E2B's 429
    try:
        with E2BSandbox(max_concurrent=2, **FAST) as sb:
            results = _run_in_threads(sb, ["import time\ntime.sleep(0.25)\nprint('done')"] * 5)
        assert all(r.ok and r.stdout == "done\n" for r in results), results
        assert len(fake.sandboxes) == 5
        assert fake.max_alive() == 2  # bounded, and the bound was actually reached
        assert fake.alive == []
    finally:
        fake.shutdown()


def test_failed_creations_release_their_slot(fake):
    fake.fail("create", status=401, times=2)
    with E2BSandbox(max_concurrent=1, **FAST) as sb:
        results = _run_in_threads(sb, ["print(1)", "print(2)", "print(3)"])
    assert sum(r.infra_error is not None for r in results) == 2
    assert sum(r.ok for r in results) == 1


# ----- the fake itself -----------------------------------------------------------------------------
def test_fake_patches_every_sdk_transport_factory(fake):
    assert {
        "e2b.api.client_sync.get_transport",
        "e2b_code_interpreter.code_interpreter_sync.get_transport",
        "e2b.envd.client_sync.get_pyqwest_transport",
    } <= set(fake.patched)
    from e2b_code_interpreter import Sandbox

    remote = Sandbox.create(timeout=120)
    remote.set_timeout(300)
    assert fake.sandboxes[remote.sandbox_id].timeout == 300
    assert remote.kill() is True
    assert Sandbox.kill(remote.sandbox_id) is False  # 404 from the fake
    assert fake.rpc_calls == []


# ----- live ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.environ.get("E2B_API_KEY"), reason="live E2B test: set E2B_API_KEY")
def test_live_run():
    with E2BSandbox(timeout=60, episode_deadline=120) as sb:
        res = sb.run("print(1+1)")
    assert res.ok, res
    assert res.stdout == "2\n"
