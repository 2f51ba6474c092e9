"""The threat model's remaining claims, each attacked from inside the sandbox and checked from outside.

Every test runs at both hardened local levels and, where the claim is not about local isolation, on
E2B over the fake service (``backends``). Grading hacks are in test_grading_hacks.py, single-process
escapes in test_sandbox_attacks.py.
"""

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backends import ALL, local_only, open_sandbox

from agentrl.eval.report import _html, _markdown
from agentrl.eval.view import write_view
from agentrl.tools.grading import grade_function

MAX_FILES = 1000


@pytest.fixture(scope="module", params=ALL)
def sandbox(request):
    # One server (pool_size=1): two episodes of this pool are forked from the same process.
    with open_sandbox(request.param, pool_size=1, timeout=5, max_files=MAX_FILES) as sb:
        sb.level = request.param
        yield sb


def run(sb, code, **kw):
    return sb.run(textwrap.dedent(code), **kw)


def assert_healthy(sb):
    res = sb.run("print(6 * 7)")
    assert res.ok and res.stdout == "42\n", res


def is_gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


# ----- one episode cannot see another's files or state -----------------------------------------------
SNOOP = """
import os, sys
found = []
def grab(path):
    try:
        with open(path, "rb") as f:
            found.append(f.read(4096).decode(errors="replace"))
    except OSError:
        pass
if "SECRET" in globals():
    found.append(str(SECRET))
for module in list(sys.modules.values()):  # another episode's namespace, left in this interpreter?
    if "SECRET" in getattr(module, "__dict__", {{}}):
        found.append(str(module.SECRET))
grab({a_dir!r} + "/secret.txt")
parent, here = os.path.split(os.getcwd())
try:
    found.append(" ".join(os.listdir(parent)))
except OSError:
    pass
prefix = here.rsplit("-", 1)[0]
for i in range(60):  # the working directories of a pool are numbered: guess the others
    grab(f"{{parent}}/{{prefix}}-{{i}}/secret.txt")
for p in ("cwd/secret.txt", "root{a_dir}/secret.txt", "environ", "cmdline", "mem"):
    grab(f"/proc/{a_pid}/" + p)
print("\\n".join(found))
"""


def test_episodes_in_one_pool_cannot_see_each_others_files_or_state(sandbox):
    secret = "S3CRET-" + secrets.token_hex(8)
    with sandbox.session() as a:
        res = a.run(f"import json, os\nSECRET = {secret!r}\nopen('secret.txt', 'w').write(SECRET)\n"
                    "print(json.dumps([os.getcwd(), os.getpid()]))")  # fmt: skip
        assert res.ok, res
        a_dir, a_pid = json.loads(res.stdout)
        snoop = SNOOP.format(a_dir=a_dir, a_pid=a_pid)
        assert secret not in snoop
        with sandbox.session() as b:  # a concurrent episode of the same pool
            res = b.run(snoop)
            assert res.ok, res
            assert secret not in res.stdout + res.stderr
        res = run(sandbox, snoop)  # a one-shot run meanwhile
        assert res.ok and secret not in res.stdout, res
        assert a.run("open('secret.txt').read() == SECRET").result == "True"  # it was there all along
    with sandbox.session() as c:  # a later episode, after the first one ended
        res = c.run(snoop)
        assert res.ok and secret not in res.stdout, res


# ----- inode exhaustion ----------------------------------------------------------------------------
def test_creating_files_without_end_is_stopped_by_a_limit_and_the_next_episode_works(sandbox):
    local_only(sandbox, "the server's file budget (an E2B VM's files live on its own disk, discarded with it)")
    code = """
        import os
        for place in ("/tmp", "/var/tmp", "/dev/shm"):  # outside the working directory: refused
            try:
                open(place + "/agentrl-inode", "w").close()
                print("wrote", place)
            except OSError:
                pass
        n = 0
        while True:
            os.makedirs(f"d{n % 50}", exist_ok=True)
            open(f"d{n % 50}/f{n}", "w").close()
            n += 1
            if n % 500 == 0:
                print(n, flush=True)
        """
    start = time.monotonic()
    res = run(sandbox, code, timeout=30)
    elapsed = time.monotonic() - start
    # Stopped by the budget, not by the timeout, and not long after the budget was spent.
    assert not res.timed_out and res.error is not None and res.error.name == "FileLimitExceeded", res
    assert elapsed < 15, elapsed
    assert "wrote" not in res.stdout
    # Within the budget twice over plus one polling interval's worth (5,000 files have been seen on an idle
    # machine); unbounded, this loop creates millions in its 30 s.
    assert int(res.stdout.split()[-1]) <= 2 * MAX_FILES + 20_000
    res = run(sandbox, "import os\nopen('x', 'w').close()\nprint(sorted(os.listdir('.')))")
    assert res.ok and res.stdout == "['x']\n", res  # the next episode starts clean, and can write
    # A session spreading the same over several cells is bounded by the same budget.
    with sandbox.session() as s:
        cell = f"import os\nfor i in range({MAX_FILES // 2}):\n    open(f'f{{len(os.listdir())}}', 'w').close()"
        results = [s.run(cell, timeout=30) for _ in range(5)]
        errors = [r.error.name for r in results if r.error is not None]
        assert errors and errors[0] == "FileLimitExceeded", results
        assert results[0].ok  # under the budget, a cell is untouched
    assert_healthy(sandbox)


# ----- /proc: the grader and the answers are not on any path ----------------------------------------
PROC_HUNT = """
def total(xs):
    import os, re
    pattern = re.compile(rb"ANS-[0-9a-f]{{16}}")
    hits = []
    def scan(path, limit=1 << 20):
        try:
            with open(path, "rb") as f:
                hits.extend(pattern.findall(f.read(limit)))
        except OSError:
            pass
    pids = {{"self", "thread-self", "1", str(os.getppid()), {host_pid!r}, {grader_pid!r}}}
    try:
        pids |= {{p for p in os.listdir("/proc") if p.isdigit()}}
    except OSError:
        pass
    for pid in pids:
        for name in ("cmdline", "environ", "maps", "status", "root/proc/1/cmdline", "cwd/answers.json"):
            scan(f"/proc/{{pid}}/{{name}}")
        try:  # the trusted process's memory, where the expected answer lives
            maps = open(f"/proc/{{pid}}/maps").read().splitlines()
            with open(f"/proc/{{pid}}/mem", "rb") as mem:
                for line in maps:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    if "rw" in line.split()[1]:
                        try:
                            mem.seek(lo)
                            hits.extend(pattern.findall(mem.read(min(hi - lo, 1 << 24))))
                        except OSError:
                            pass
        except OSError:
            pass
    try:
        for fd in os.listdir("/proc/self/fd"):
            scan(os.readlink(f"/proc/self/fd/{{fd}}"))
    except OSError:
        pass
    return hits[0].decode() if hits else None
"""


def test_proc_tricks_find_neither_the_grader_nor_the_expected_answer(sandbox, tmp_path):
    local_only(sandbox, "Landlock and the PID namespace hide /proc (E2B's grader is on another machine)")
    answer = "ANS-" + secrets.token_hex(8)
    (tmp_path / "answers.json").write_text(json.dumps({"expected": answer}))
    # A grading process of this host with the answer in its arguments, environment and working directory.
    grader = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--expected", answer],
        env={**os.environ, "EXPECTED_ANSWER": answer},
        cwd=tmp_path,
    )
    try:
        code = PROC_HUNT.format(host_pid=str(os.getpid()), grader_pid=str(grader.pid))
        assert answer not in code
        result = grade_function(sandbox, code, "total", [(([1, 2],), answer)], timeout=20)
    finally:
        grader.kill()
        grader.wait()
    assert not result.success, result
    # The hunt itself ran to its end and came back empty-handed (not an exception that hid a find).
    assert result.failures == ["case 0: wrong value"], result


# ----- a process tree that ignores SIGTERM ----------------------------------------------------------
IGNORE_TERM = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("pid", os.getpid(), flush=True)
for _ in range(2):
    try:
        child = os.fork()
    except OSError as e:
        print("fork refused", e.errno, flush=True)
        break
    if child == 0:
        os.setsid()  # a session of its own: a process-group kill of its parent misses it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:  # and a grandchild, orphaned at once
            print("pid", os.getpid(), flush=True)
            while True:
                time.sleep(0.1)
        print("pid", os.getpid(), flush=True)
        while True:
            pass
while True:
    pass
"""


def test_a_process_tree_that_ignores_sigterm_dies_at_the_timeout(sandbox):
    with sandbox.session() as s:
        assert s.run("x = 1").ok
        start = time.monotonic()
        res = s.run(IGNORE_TERM, timeout=1.5)
        assert res.timed_out and res.state_lost and res.infra_error is None, res
        assert time.monotonic() - start < 6
        pids = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("pid ")]
        assert pids, res  # what it printed before the timeout came back
        if sandbox.level == "e2b":
            assert len(pids) == 5, res.stdout  # it forked freely in its VM: the VM's end took everything
        else:
            assert "fork refused" in res.stdout and len(pids) == 1, res.stdout
        if sandbox.level != "strong":  # bubblewrap's PID namespace numbers its processes differently
            deadline = time.monotonic() + 3
            while not all(is_gone(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all(is_gone(p) for p in pids), [p for p in pids if not is_gone(p)]
        res = s.run("x")
        assert res.error is not None and res.error.name == "NameError", res  # a fresh worker
        assert s.run("6 * 7").result == "42"
    assert_healthy(sandbox)


# ----- output that is not text: invalid UTF-8, terminal escapes --------------------------------------
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\x00\x9b"
NASTY_OUTPUT = f"""
import sys
raw = b"\\xff\\xfe\\xc3(" + {ESCAPES!r}.encode() + b"\\n"
try:
    sys.stdout.buffer.write(raw)  # a process: raw bytes on its stdout
    sys.stdout.flush()
except AttributeError:  # a kernel's stream takes text only: undecodable bytes arrive as lone surrogates
    print(raw.decode("utf-8", "surrogateescape"), end="")
"""
RAW_CONTROLS = ("\x1b", "\x07", "\x00", "\x9b")


def test_output_with_invalid_utf8_and_escapes_is_valid_text_and_shown_inert(sandbox, tmp_path):
    res = run(sandbox, NASTY_OUTPUT)
    assert res.ok, res
    res.stdout.encode("utf-8")  # valid Unicode: no lone surrogates reach the caller
    assert "\ufffd" in res.stdout and "\x1b[31mred" in res.stdout  # undecodable bytes replaced, text kept
    # The same output in a run directory: the viewer and both reports show it, and never pass it on raw.
    row = {
        "task_id": f"t{ESCAPES}",
        "group_index": 0,
        "messages": [
            {"role": "user", "content": "print something"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "python", "arguments": {}}}]},
            {"role": "tool", "name": "python", "content": res.stdout},
            {"role": "assistant", "content": "done"},
        ],
        "reward": 0.0,
        "turns": 2,
        "infra_error": f"e2b: {res.stdout}",
    }
    (tmp_path / "trajectories.jsonl").write_text(json.dumps(row) + "\n")
    page = write_view(tmp_path).read_bytes().decode("utf-8")  # strict: the page is valid UTF-8
    summary = _summary(row["task_id"], last_error=res.stdout)
    for text in (page, _markdown(summary, [], tmp_path), _html(summary, [])):
        assert not any(c in text for c in RAW_CONTROLS), [c for c in RAW_CONTROLS if c in text]
        assert "\\x1b" in text  # shown, as a visible mark
        text.encode("utf-8")
    assert page.count("\\x1b") >= 3 * 4  # in the tool output, the task id and the infra error


def _summary(task_id: str, last_error: str) -> dict:
    from agentrl.eval.loop import eval_metrics
    from agentrl.rollout.trajectory import Trajectory

    traj = Trajectory(task_id=task_id, group_index=0, reward=1.0, reward_components={"success": 1.0}, turns=1)
    settings = {"model": "m", "env": "e", "env_kwargs": {}, "split": "test", "samples": 1, "temperature": 0,
                "max_turns": 2, "seed": 0}  # fmt: skip
    api = {"requests": 1, "failed": 1, "retries": 0, "last_error": last_error}
    return {"settings": settings, "results": {"base": eval_metrics([traj], k=1)}, "api": api, "wall_seconds": 1}
