"""Sandbox faults caused for real: whose failure is it?

A sandbox server SIGKILLed in the middle of a cell, or a worker SIGKILLed from outside (the host's
out-of-memory killer, an operator), is the infrastructure's failure: the result carries
``infra_error``, the python tool raises ``InfraError``, the episode is marked and left out of
training, grading reports ``infra_error`` instead of a zero reward, and the next request works. The
code's own deaths stay the code's: it cannot SIGKILL itself under seccomp (so it cannot pass its
failure off as an outage), and running out of its CPU time or memory is reported as such.

Faults are injected at the ``sandbox.request`` point, just before a request goes to its server: the
action starts a timer that kills the server or the worker while the cell is running.
"""

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from isolation import require_level

from agentrl import faults
from agentrl.envs import Task, ToolEnv
from agentrl.tools.grading import grade_asserts, grade_function, grade_io
from agentrl.tools.python import python_tool
from agentrl.tools.sandbox import LocalSandbox, SandboxError

OUTSIDE = "killed from outside (SIGKILL)"
SLEEPY_CELL = "import time\ntime.sleep(5)\nprint('the cell finished')"


# ----- processes, seen from /proc -------------------------------------------------------------
def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below ``root``."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(st[0], []).append((int(entry), st[2]))
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _running(pid: int, start: int) -> bool:
    """Whether that very process (not a later one with its pid) still exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"


def _our_zombies() -> list[int]:
    me = os.getpid()
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and (st := _stat(int(e))) is not None and st[0] == me and st[1] == "Z"
    ]


def _server_pid(sandbox: LocalSandbox, index: int) -> int:
    """The sandbox server's own process; under bubblewrap, a descendant of the one the client started."""
    server = sandbox._servers[index]
    inner = server.ready["pid"]  # its pid in its own PID namespace
    for pid in [server.popen.pid, *(p for p, _ in _descendants(server.popen.pid))]:
        try:
            nspid = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspid.split()[-1]) == inner:
            return pid
    raise AssertionError("the sandbox server process was not found")


def _worker_pid(sandbox: LocalSandbox, index: int, marker: str, wait: float = 3.0) -> int:
    """The worker whose working directory holds the file ``marker`` (each worker has its own directory)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for pid, _ in _descendants(sandbox._servers[index].popen.pid):
            if os.path.exists(f"/proc/{pid}/cwd/{marker}"):
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker holds {marker}")


class KillDuring:
    """A fault action: on the first request whose message matches, SIGKILL a process ``delay`` seconds later,
    while the request is being served. ``target(sandbox, index)`` names the process when the timer fires."""

    def __init__(self, target, *, match=lambda msg: msg.get("op") == "cell", delay: float = 0.2):
        self.target, self.match, self.delay = target, match, delay
        self.armed = True
        self.killed: list[int] = []
        self.victims: list[tuple[int, int]] = []  # the killed process and everything below it
        self.errors: list[BaseException] = []

    def __call__(self, *, sandbox, index, msg):
        if self.armed and self.match(msg):
            self.armed = False
            threading.Timer(self.delay, self._kill, (sandbox, index)).start()

    def _kill(self, sandbox, index):
        try:
            pid = self.target(sandbox, index)
            st = _stat(pid)
            self.victims = [(pid, st[2]), *_descendants(pid)] if st else []
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
        except BaseException as exc:  # surfaced by the test, not lost in the timer thread
            self.errors.append(exc)

    def check(self) -> None:
        assert not self.errors, self.errors
        assert self.killed, "the fault never fired"


def _kill_server():
    return KillDuring(_server_pid)


def _kill_worker(marker: str, **kwargs):
    return KillDuring(lambda sandbox, index: _worker_pid(sandbox, index, marker), **kwargs)


def _wait_gone(victims: list[tuple[int, int]], wait: float = 5.0) -> list[tuple[int, int]]:
    deadline = time.monotonic() + wait
    while (left := [v for v in victims if _running(*v)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.fixture
def sb():
    s = LocalSandbox(pool_size=1, timeout=8)
    yield s
    s.close()


class _PythonEnv(ToolEnv):
    def score(self, task, answer, messages):
        return 1.0


def _python_turn(code: str) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "python", "arguments": {"code": code}}}],
    }


# ----- the hook -------------------------------------------------------------------------------
def test_the_hook_sees_every_request_and_its_failures_are_infra(sb):
    with faults.inject("sandbox.request", lambda **ctx: None) as seen:
        assert sb.run("print(1)").stdout == "1\n"
        with sb.session() as s:
            assert s.run("2 + 2").result == "4"
    assert [c["msg"]["op"] for c in seen.contexts] == ["run", "open", "cell", "close"]
    assert all(c["sandbox"] is sb and c["index"] == 0 for c in seen.contexts)
    # An action that raises what the transport raises is reported the way a real transport failure is.
    with faults.inject("sandbox.request", faults.raises(lambda: SandboxError("injected: server gone")), times=1):
        res = sb.run("print(1)")
    assert res.infra_error == "injected: server gone" and not res.ok
    assert sb.run("print(2)").stdout == "2\n"


# ----- the server killed mid-episode ------------------------------------------------------------
def test_server_killed_mid_cell_is_infra_loses_the_state_and_recovers_without_leaks(sb):
    s = sb.session()
    assert s.run("x = 41").ok
    old = sb._servers[0]
    kill = _kill_server()
    start = time.monotonic()
    with faults.inject("sandbox.request", kill):
        res = s.run(SLEEPY_CELL)
    kill.check()
    assert time.monotonic() - start < 4  # answered when the server died, not after the cell's sleep
    assert res.infra_error and "sandbox server exited" in res.infra_error, res
    assert res.state_lost and "the cell finished" not in res.stdout
    # The same session goes on in a restarted server, with a fresh namespace.
    res = s.run("x")
    assert res.error is not None and res.error.name == "NameError" and res.infra_error is None
    assert s.run("x = 1\nx + 1").result == "2"
    assert sb._servers[0] is not old and sb.run("print('again')").stdout == "again\n"
    s.close()
    # Nothing of the old server runs on, and the client reaped the process it had started.
    assert old.popen.returncode is not None
    assert not _wait_gone(kill.victims), "processes of the killed server are still running"
    assert not _our_zombies()


def test_server_killed_mid_cell_marks_the_episode_and_the_next_call_works(sb):
    env = _PythonEnv([Task(id="t", prompt="compute")], [python_tool(sb, timeout=8)])
    env.reset()
    _, _, done, _, info = env.step(_python_turn("x = 41\nprint('defined')"))
    assert not done and "infra_error" not in info
    kill = _kill_server()
    with faults.inject("sandbox.request", kill):
        obs, _, done, _, info = env.step(_python_turn(SLEEPY_CELL))
    kill.check()
    assert info["tool_errors"] == ["infra"]
    assert "sandbox server exited" in info["infra_error"]  # the episode is left out of training
    assert "not your fault" in obs[0]["content"] and "the cell finished" not in obs[0]["content"]
    obs, _, _, _, _ = env.step(_python_turn("print('still here')"))
    assert obs[0]["content"] == "still here"
    env.close()


# ----- a worker killed from outside ---------------------------------------------------------------
def test_worker_killed_from_outside_mid_cell_is_infra(sb):
    require_level("standard")  # the rule needs the seccomp filter; see the test for level 'none'
    marker = f"victim-{uuid.uuid4().hex}"
    server = sb._servers[0]
    s = sb.session()
    assert s.run(f"x = 41\nopen({marker!r}, 'w').close()").ok
    kill = _kill_worker(marker)
    with faults.inject("sandbox.request", kill):
        res = s.run(SLEEPY_CELL)
    kill.check()
    assert res.infra_error and OUTSIDE in res.infra_error and "out-of-memory" in res.infra_error, res
    assert res.state_lost and res.error is None and res.exit_code is None
    # The server lived on and reaped the worker: no zombie is left behind it.
    assert sb._servers[0] is server and not _wait_gone(kill.victims)
    assert _stat(kill.killed[0]) is None
    res = s.run("x")
    assert res.error.name == "NameError" and res.infra_error is None
    s.close()


def test_worker_killed_from_outside_mid_cell_marks_the_episode(sb):
    require_level("standard")
    marker = f"victim-{uuid.uuid4().hex}"
    env = _PythonEnv([Task(id="t", prompt="compute")], [python_tool(sb, timeout=8)])
    env.reset()
    env.step(_python_turn(f"open({marker!r}, 'w').close()"))
    kill = _kill_worker(marker)
    with faults.inject("sandbox.request", kill):
        obs, _, _, _, info = env.step(_python_turn(SLEEPY_CELL))
    kill.check()
    assert info["tool_errors"] == ["infra"] and OUTSIDE in info["infra_error"]
    assert "not your fault" in obs[0]["content"]
    env.close()


def test_worker_killed_from_outside_mid_run_is_infra(sb):
    require_level("standard")
    marker = f"victim-{uuid.uuid4().hex}"
    kill = _kill_worker(marker, match=lambda msg: msg.get("op") == "run")
    with faults.inject("sandbox.request", kill):
        res = sb.run(SLEEPY_CELL, files={marker: ""})
    kill.check()
    assert res.infra_error and OUTSIDE in res.infra_error and res.exit_code is None, res
    assert _stat(kill.killed[0]) is None  # reaped by the server
    assert sb.run("print(1)").stdout == "1\n"


def test_worker_killed_between_cells_is_infra_and_reaped(sb):
    require_level("standard")
    marker = f"victim-{uuid.uuid4().hex}"
    s = sb.session()
    assert s.run(f"x = 41\nopen({marker!r}, 'w').close()").ok
    pid = _worker_pid(sb, 0, marker)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (_stat(pid) or ("", "Z"))[1] != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    res = s.run("x")
    assert res.infra_error and OUTSIDE in res.infra_error and res.state_lost, res
    assert _stat(pid) is None  # the server reaped it when the next cell found it dead
    assert s.run("x = 2\nx").result == "2"
    s.close()


# ----- the code's own deaths stay the code's ------------------------------------------------------
SELF_KILLS = """
import ctypes, fcntl, os, signal, threading
libc = ctypes.CDLL(None, use_errno=True)

def raw(nr, *args):
    if libc.syscall(nr, *[ctypes.c_long(a) for a in args]) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

attempts = {
    "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "raise": lambda: signal.raise_signal(signal.SIGKILL),
    "pthread_kill": lambda: signal.pthread_kill(threading.get_ident(), signal.SIGKILL),
    # junk in the upper half of the register: the kernel reads only the low 32 bits
    "raw kill": lambda: raw(62, os.getpid(), signal.SIGKILL | (1 << 32)),
    "raw tgkill": lambda: raw(234, os.getpid(), threading.get_native_id(), signal.SIGKILL | (1 << 32)),
    "rt_sigqueueinfo": lambda: raw(129, os.getpid(), signal.SIGKILL, 0),
    "F_SETSIG": lambda: fcntl.fcntl(os.pipe()[0], 10, signal.SIGKILL),
    "timer_create": lambda: raw(222, 1, 0, ctypes.addressof(ctypes.c_int())),
    "mq_notify": lambda: raw(244, 0, 0),
}
for name, attempt in attempts.items():
    try:
        attempt()
        print(name, "sent")
    except OSError as e:
        print(name, e.errno)
"""


def test_code_cannot_sigkill_itself(sb):
    require_level("standard")
    res = sb.run(SELF_KILLS)
    assert res.exit_code == 0 and res.infra_error is None, res
    lines = res.stdout.splitlines()
    assert len(lines) == 9 and all(line.endswith(" 1") for line in lines), res.stdout  # EPERM, every route
    # Nor can it make itself the out-of-memory killer's first choice, then fill the host's memory.
    res = sb.run("open('/proc/self/oom_score_adj', 'w').write('1000')")
    assert res.error is not None and res.error.name == "PermissionError", res
    # In a session too; and other signals to itself still work, as the code's own failure.
    with sb.session() as s:
        res = s.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        assert res.error.name == "PermissionError" and res.infra_error is None and not res.state_lost
        assert s.run("y = 3\ny").result == "3"
        res = s.run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
        assert res.state_lost and res.exit_code == -signal.SIGTERM and res.infra_error is None
    res = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
    assert res.exit_code == -signal.SIGTERM and res.infra_error is None


def test_without_seccomp_a_sigkill_stays_the_codes_failure():
    # At level 'none' the code can send SIGKILL to itself, so a SIGKILL is never taken for an outage there.
    sb = LocalSandbox(isolation="none", pool_size=1, timeout=5)
    try:
        res = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        assert res.exit_code == -signal.SIGKILL and res.infra_error is None
        assert res.error.name == "Killed" and "did not send" in res.error.value
        with sb.session() as s:
            res = s.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
            assert res.infra_error is None and res.state_lost and res.error.name == "Killed"
    finally:
        sb.close()


def test_cpu_limit_kill_is_the_codes_failure():
    # The kernel enforces RLIMIT_CPU with a SIGKILL too; the CPU time used tells it apart from an outage.
    sb = LocalSandbox(pool_size=1, timeout=30, cpu_seconds=1)
    try:
        res = sb.run("while True:\n    pass")
        assert res.infra_error is None and not res.timed_out and res.exit_code == -signal.SIGKILL, res
        assert res.error.name == "CPUTimeLimitExceeded" and "1 s of CPU time" in res.error.value
        with sb.session() as s:
            res = s.run("while True:\n    pass")
            assert res.infra_error is None and res.state_lost and res.error.name == "CPUTimeLimitExceeded", res
    finally:
        sb.close()


def test_memory_limit_is_the_codes_failure():
    sb = LocalSandbox(pool_size=1, timeout=10, memory_mb=128)
    try:
        res = sb.run("x = bytearray(1 << 30)")
        assert res.infra_error is None and res.exit_code == 1 and res.error.name == "MemoryError", res
        res = sb.run("import numpy\nnumpy.ones(1 << 28)")
        assert res.infra_error is None and res.error.name in ("MemoryError", "_ArrayMemoryError"), res
        with sb.session() as s:
            assert s.run("kept = 'yes'").ok
            # Growing step by step until the limit: the allocation that crosses it fails, nothing is killed.
            res = s.run("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))")
            assert res.infra_error is None and res.error.name == "MemoryError" and not res.state_lost, res
            assert "MemoryError" in res.error.traceback
            assert s.run("del chunks\nkept").result == "'yes'"
    finally:
        sb.close()


# ----- grading --------------------------------------------------------------------------------
def _candidate(marker: str) -> str:
    return f"import time\nopen({marker!r}, 'w').close()\ndef add(a, b):\n    time.sleep(1)\n    return a + b\n"


def _is_call(msg) -> bool:
    return msg.get("op") == "cell" and "call" in msg


def test_grade_function_with_a_sandbox_fault_is_infra_not_zero(sb):
    require_level("standard")
    marker = f"victim-{uuid.uuid4().hex}"
    cases = [((1, 2), 3), ((2, 2), 4)]
    kill = _kill_worker(marker, match=_is_call)
    with faults.inject("sandbox.request", kill):
        result = grade_function(sb, _candidate(marker), "add", cases, timeout=5)
    kill.check()
    assert result.infra_error and OUTSIDE in result.infra_error, result
    assert not result.success and result.passed == 0
    # The same candidate passes when nothing fails: a zero would have been wrong.
    assert grade_function(sb, _candidate(marker), "add", cases, timeout=5).success


def test_grade_asserts_with_the_server_killed_is_infra(sb):
    kill = KillDuring(_server_pid, match=_is_call)
    tests = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    marker = f"m-{uuid.uuid4().hex}"
    with faults.inject("sandbox.request", kill):
        result = grade_asserts(sb, _candidate(marker), tests, "add", timeout=5)
    kill.check()
    assert result.infra_error and "sandbox server exited" in result.infra_error, result
    assert not result.success
    assert grade_asserts(sb, _candidate(marker), tests, "add", timeout=5).success


def test_grade_io_with_a_sandbox_fault_is_infra(sb):
    require_level("standard")
    marker = f"victim-{uuid.uuid4().hex}"
    program = f"import time\nopen({marker!r}, 'w').close()\ntime.sleep(1)\nprint(int(input()) * 2)"
    kill = _kill_worker(marker, match=lambda msg: msg.get("op") == "run")
    with faults.inject("sandbox.request", kill):
        result = grade_io(sb, program, [("2", "4"), ("3", "6")], timeout=5)
    kill.check()
    assert result.infra_error and OUTSIDE in result.infra_error and not result.success, result


def test_the_codes_own_sigkill_during_grading_is_a_failure_not_infra(sb):
    require_level("standard")
    code = "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n    return a + b\n"
    result = grade_function(sb, code, "add", [((1, 2), 3)], timeout=5)
    assert result.infra_error is None and not result.success and "PermissionError" in result.failures[0], result
