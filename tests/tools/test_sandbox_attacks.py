"""Attacks on the sandbox, each checked from outside it, at both hardened local levels and on E2B.

``strong`` is bubblewrap + everything else; ``standard`` is the fallback without bubblewrap. Both
must contain every attack. ``e2b`` is E2BSandbox over the fake service: it runs the attacks whose
containment is the client's job (timeouts, output floods, fresh state per run); those that test local
isolation say so and run locally only. Reward hacks against grading are in test_grading_hacks.py.
"""

import os
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest
from backends import ALL, local_only, open_sandbox

from agentrl.tools.sandbox import Isolation


@pytest.fixture(scope="module", params=ALL)
def sandbox(request):
    with open_sandbox(request.param, pool_size=2, timeout=5, memory_mb=256) as sb:
        assert sb.isolation == Isolation.STRONG if request.param == "e2b" else Isolation.parse(request.param)
        yield sb


def run(sb, code, **kw):
    return sb.run(textwrap.dedent(code), **kw)


def assert_healthy(sb):
    res = sb.run("print(6 * 7)")
    assert res.ok and res.stdout == "42\n", res


# ----- escapes ------------------------------------------------------------------------------------


def test_cannot_write_outside_private_dir(sandbox, tmp_path):
    local_only(sandbox, "Landlock and bubblewrap confine writes (the fake VM only maps paths)")
    targets = [
        tmp_path / "escape.txt",
        Path("/etc/agentrl-escape"),
        Path.home() / "agentrl-escape",
        Path("/tmp/agentrl-escape"),
    ]
    res = run(
        sandbox,
        f"""
        import os
        done = []
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                done.append(path)
            except OSError:
                pass
        open("inside.txt", "w").write("fine")   # its own directory is writable
        print(done, os.path.exists("inside.txt"))
        """,
    )
    assert res.ok, res
    for t in targets:
        assert not t.exists(), f"sandbox wrote {t}"
    assert res.stdout.strip().endswith("True")


def test_cannot_read_home_or_other_process_environment(sandbox, tmp_path, monkeypatch):
    local_only(sandbox, "Landlock, the PID namespace and the replaced environment")
    secret_file = Path.home() / ".agentrl-test-secret"
    secret_file.write_text("s3cret-home")
    (tmp_path / "answers.json").write_text('{"answer": "s3cret-tmp"}')
    monkeypatch.setenv("E2B_API_KEY", "s3cret-env")
    try:
        res = run(
            sandbox,
            f"""
            import os, glob
            found = []
            paths = [{str(secret_file)!r}, {str(tmp_path / "answers.json")!r}, "/proc/{os.getpid()}/environ",
                     "/proc/1/environ", "/proc/self/environ", "/root/.bash_history", "/etc/shadow"]
            paths += glob.glob("/proc/*/environ")
            for p in paths:
                try:
                    found.append(open(p, "rb").read().decode(errors="replace"))
                except OSError:
                    pass
            found.append(repr(dict(os.environ)))
            print("\\n".join(found))
            """,
        )
        assert res.ok, res
        for secret in ("s3cret-home", "s3cret-tmp", "s3cret-env"):
            assert secret not in res.stdout
        assert "E2B_API_KEY" not in res.stdout
    finally:
        secret_file.unlink()


def test_cannot_read_site_packages_outside_allowlist(sandbox):
    local_only(sandbox, "Landlock's read allowlist")
    import agentrl

    target = Path(agentrl.__file__).resolve()
    res = run(sandbox, f"print(open({str(target)!r}).read()[:20])")
    assert not res.ok and res.error.name in ("PermissionError", "FileNotFoundError"), res
    assert_healthy(sandbox)
    # The allowlisted numpy still imports lazily-loaded submodules.
    assert run(sandbox, "import numpy.polynomial; print(numpy.polynomial.Polynomial([1, 2])(3))").stdout == "7.0\n"


def test_no_network(sandbox):
    local_only(sandbox, "the network namespace and seccomp (E2B's VM is created without internet access)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            conn, _ = server.accept()
            accepted.append(conn.recv(100))
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    res = run(
        sandbox,
        f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
        s.sendall(b"leak")
        """,
    )
    t.join()
    server.close()
    assert accepted == []
    assert res.error is not None and res.error.name in ("PermissionError", "OSError", "ConnectionRefusedError")


def test_cannot_kill_parent_server_or_client(sandbox):
    local_only(sandbox, "seccomp and the PID namespace (the fake VM is a process of this host)")
    res = run(
        sandbox,
        f"""
        import os, signal
        results = []
        for pid in (os.getppid(), 1, {os.getpid()}, -1, 0):
            try:
                os.kill(pid, signal.SIGKILL)
                results.append((pid, "sent"))
            except OSError as e:
                results.append((pid, e.errno))
        try:
            os.killpg(os.getpgid({os.getpid()}), signal.SIGKILL)
        except OSError as e:
            results.append(("pg", e.errno))
        print(results)
        """,
    )
    assert "sent" not in res.stdout, res.stdout
    assert_healthy(sandbox)


def _count_processes() -> int:
    return sum(1 for p in os.listdir("/proc") if p.isdigit())


def test_fork_bomb_is_stopped(sandbox):
    local_only(sandbox, "seccomp refuses new processes (an E2B VM bounds them itself)")
    before = _count_processes()
    res = run(
        sandbox,
        """
        import os, subprocess, multiprocessing
        errors = []
        spawn = multiprocessing.Process(target=print).start
        for attempt in (lambda: os.fork(), lambda: subprocess.run(["true"]), spawn):
            try:
                attempt()
                errors.append("spawned")
            except Exception as e:
                errors.append(type(e).__name__)
        while True:
            os.fork()
        """,
        timeout=3,
    )
    assert "spawned" not in res.stdout
    assert res.error is not None and res.error.name == "PermissionError"
    assert _count_processes() <= before + 2
    assert_healthy(sandbox)


def test_threads_still_work(sandbox):
    res = run(
        sandbox,
        """
        import threading
        out = []
        ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print(sorted(out))
        """,
    )
    assert res.ok and res.stdout == "[0, 1, 2, 3, 4, 5, 6, 7]\n", res


def test_memory_bomb_is_contained(sandbox):
    local_only(sandbox, "the address-space rlimit (an E2B VM is bounded by its RAM)")
    res = run(sandbox, "x = bytearray(4 * 2**30)")
    assert res.error is not None and res.error.name == "MemoryError", res
    res = run(sandbox, "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))", timeout=10)
    assert res.error is not None and res.error.name == "MemoryError", res
    assert_healthy(sandbox)


def test_cpu_spin_and_sleep_time_out(sandbox):
    for code in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        t0 = time.monotonic()
        res = run(sandbox, code, timeout=1)
        assert res.timed_out and res.infra_error is None, res
        assert time.monotonic() - t0 < 4
        assert 900 <= res.duration_ms < 3000
    assert_healthy(sandbox)


def test_setsid_grandchild_cannot_outlive_the_run(sandbox, tmp_path):
    local_only(sandbox, "seccomp refuses fork; test_threats covers E2B's process tree")
    marker = f"agentrl-orphan-{os.getpid()}"
    res = run(
        sandbox,
        f"""
        import os, time
        try:
            if os.fork() == 0:
                os.setsid()
                time.sleep(30)  # {marker}
        except OSError as e:
            print("fork blocked", e.errno)
        time.sleep(30)
        """,
        timeout=1,
    )
    assert res.timed_out
    time.sleep(0.3)
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            assert marker.encode() not in cmd
    assert "fork blocked" in res.stdout


def test_output_flood_is_capped(sandbox):
    res = run(sandbox, "while True:\n    print('x' * 10000)", timeout=5)
    assert len(res.stdout) < 70 * 1024
    assert "truncated" in res.stdout
    assert res.timed_out or (res.error is not None and res.error.name == "OutputLimitExceeded")
    assert_healthy(sandbox)


def test_huge_file_is_refused(sandbox):
    local_only(sandbox, "the file-size rlimit (an E2B VM is bounded by its disk)")
    res = run(sandbox, "open('big', 'wb').write(b'0' * (64 * 2**20))")
    assert res.error is not None and res.error.name == "OSError" and "File too large" in res.error.value, res


def test_many_files_are_bounded_and_cleaned_up(sandbox):
    res = run(
        sandbox,
        """
        import os
        n = 0
        while True:
            open(f"f{n}", "w").close()
            n += 1
        """,
        timeout=1,
    )
    # Stopped by the timeout, or first by the file budget (max_files) on a machine fast enough to reach it.
    assert res.timed_out or (res.error is not None and res.error.name == "FileLimitExceeded"), res
    assert_healthy(sandbox)
    # Nothing of that run is left behind.
    res = run(sandbox, "import os; print(len(os.listdir('.')))")
    assert res.stdout == "0\n"


def test_server_crash_is_an_infra_error_and_recovers(sandbox):
    local_only(sandbox, "it kills the local server process")
    server = sandbox._servers[0]
    if server is None:
        sandbox._server(0)
        server = sandbox._servers[0]
    server.popen.kill()
    server.popen.wait()
    results = [sandbox.run("print(1)") for _ in range(4)]  # round-robin hits the dead slot
    assert all(r.infra_error or r.ok for r in results)
    assert all(r.ok for r in [sandbox.run("print(1)") for _ in range(4)])
