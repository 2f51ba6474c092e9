"""Soak test: many episodes through the rollout engine, the environment, the tools and the sandbox, looking for leaks.

    python benchmarks/soak.py [--episodes 1000] [--sample-every 100] [--warmup 200] [--check]

A scripted policy (exact tokens, no model) plays ``code-tests`` episodes through the real
:class:`RolloutEngine`, the real ``python`` tool with sessions and the real :class:`LocalSandbox`;
the final answer is graded with :func:`agentrl.tools.grading.grade_asserts` in a sandbox session.
Every episode follows one of these plans, in turn, so that every error path runs hundreds of times:

* ``ok``: cell 1 sets ``x = 41``, cell 2 prints ``x + 1`` (the session kept the variable), then the
  right function is answered and passes the hidden tests;
* ``raise``: cell 2 raises; ``timeout``: cell 2 sleeps past the tool's timeout and cell 3 checks that
  the session came back empty; ``crash``: cell 2 ends its worker with ``os._exit``;
* ``malformed``: the first turn's tool call is not valid JSON;
* ``stuck``: three sleeping cells in one turn, which run one after another on the session and outlast
  the harness's step timeout: the engine gives the episode up as an infrastructure failure and
  closes its session while a cell is running and two more wait for it;
* ``two_calls``: two cells in one turn (two calls on one session at once);
* ``wrong``: the answer fails the tests; ``hang``: the answer sleeps past the grading timeout;
  ``broken``: the answer does not compile.

Every ``--kill-server-every`` episodes, between batches, the second sandbox server is killed with
SIGKILL (as the OOM killer would) and the next episodes restart it; the first server runs throughout,
so growth inside a server still shows.

The policy answers correctly only when what it saw is what it expected (the variable survived, the
timeout wiped the session), so each plan has a known reward; an episode that ends otherwise, or
with an infrastructure error, is counted as unexpected.

Every ``--sample-every`` episodes, after the batch has ended, it records this process's open file
descriptors, its descendant processes (and zombies among them), its threads (Python's and the
kernel's count), its RSS (with glibc's malloc thresholds pinned, see :func:`pin_malloc_thresholds`),
its count of garbage-collected objects and of Python allocator blocks, and each sandbox server's
fds, RSS and working directories. The verdict compares the samples after ``--warmup`` episodes with
the first of them (see :data:`BOUNDS`); ``--check`` exits with status 1 when a bound is broken.
``--inject-leak`` adds a known leak, to see the verdict catch it. Writes
``benchmarks/results/soak-cpu.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import render_call_text
from agentrl.environments.code_tests import CodeTestsEnv, load_splits
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.generation import SamplingParams
from agentrl.testing import ScriptedBackend, qwen3_tokenizer
from agentrl.tools import LocalSandbox

RESULTS = Path(__file__).resolve().parent / "results" / "soak-cpu.json"

# Plans and the reward each must end with. Cheap plans come more often than the ones that wait out a timeout.
PLANS = ("ok", "raise", "timeout", "ok", "malformed", "crash", "two_calls", "wrong", "ok", "hang", "broken", "stuck")
EXPECTED_REWARD: dict[str, float | None] = {
    "ok": 1.0, "raise": 1.0, "timeout": 1.0, "crash": 1.0, "malformed": 1.0, "two_calls": 1.0,
    "wrong": 0.0, "hang": 0.0, "broken": 0.0,
    "stuck": None,  # an infrastructure failure, not scored
}  # fmt: skip
NUM_TASKS = 10  # a fixed task set that the warm-up sees in full: after it, the workload is stationary
TOOL_TIMEOUT = 1.0  # ordinary cells take milliseconds: a hundred times that, on a loaded machine too
TEST_TIMEOUT = 1.0
# Above any honest step (each cell and each graded call is cut at 1 s), below the stuck plan's cells in a row.
STEP_TIMEOUT = 2.5

# What "does not grow" means, after the warm-up, relative to the first sample after it (the baseline).
BOUNDS = {
    # Between batches every session is closed and only the pool's servers remain: the process holds
    # three descriptors per server (two pipes, a stderr file). Any growth is a leak; the slack covers
    # one server being restarted at the moment of the sample.
    "fds_slack": 4,
    # Descendants: per server, bubblewrap, its init, the server and its pre-forked spares. A spare
    # being re-forked at the sampling moment may be counted or not.
    "children_slack": 4,
    "zombies_slack": 2,
    # Threads: the process's long-lived threads (engine, sandbox spawner and readers, tokenizer pool);
    # a tool call's thread may still be unwinding when the sample is taken.
    "threads_slack": 3,
    # RSS: one leaked episode (its trajectory: token ids, logprobs, messages) is about 22 KiB here
    # (--inject-leak trajectories adds 2.2 MiB per 100 episodes). With glibc's thresholds pinned (see
    # pin_malloc_thresholds) the drift after the warm-up measured under 0.5 MiB per 100 episodes, on a
    # loaded machine too. A least-squares slope over the post-warm-up samples above this is a leak.
    "rss_slope_mib_per_100": 1.5,
    # A slow leak hides under the slope bound but rises at every sample; noise does not. Fail a
    # strictly rising series (at least 4 steps) that has also gained more than this much in total.
    "rss_monotonic_mib": 2.0,
    # Garbage-collected objects: one leaked episode keeps dozens (trajectory, messages, dicts).
    # Caches that fill during the warm-up (regex, tokenizer) are bounded; the slope must stay under this.
    "gc_objects_slope_per_100": 300,
    # Blocks of Python's small-object allocator, strings and numbers included: one leaked trajectory is
    # thousands (every token id above 256 is an object of its own). Measured noise: a few hundred.
    "py_blocks_slope_per_100": 2000,
}


# ----- the scripted policy -----------------------------------------------------------------------


class SoakPolicy:
    """Answers a conversation's next turn from its text alone; the plan is written into the first turn."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.started = 0

    def __call__(self, text: str, rng: Any = None) -> str:
        entry = re.search(r"Complete the Python function `(\w+)`", text)[1]
        plan_mark = re.search(r"# soak: (\w+)", text)
        results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, flags=re.S)
        if plan_mark is None:
            plan = PLANS[self.started % len(PLANS)]
            self.started += 1
            if plan == "malformed":
                # The JSON object is never closed: a parse error the model reads as a tool message. The
                # plan is written outside the call, where the episode's messages keep it.
                return f'# soak: {plan}\n<tool_call>\n{{"name": "python", "arguments": {{"code": "x"\n</tool_call>'
            if plan == "two_calls":
                return call(f"# soak: {plan}\nx = 41") + "\n" + call("y = 1")
            if plan == "stuck":
                sleep = "import time\ntime.sleep(60)"
                return "\n".join(call(f"# soak: {plan}\n{sleep}" if i == 0 else sleep) for i in range(3))
            return call(f"# soak: {plan}\nx = 41")
        plan = plan_mark[1]
        step = len(results)
        if plan == "malformed":
            return self.answer(entry, ok=results[-1].startswith("Error:"))
        if step == 1:
            second = {
                "raise": "raise ValueError('soak')",
                "timeout": "import time\ntime.sleep(60)",
                "crash": "import os\nos._exit(3)",
            }
            return call(second.get(plan, "print(x + 1)"))
        if plan == "two_calls" and step == 2:  # both calls of the first turn answered: x and y are both set
            return call("print(x + y)")
        if plan == "timeout" and step == 2:
            return call("print('x' in globals())")
        last = results[-1]
        expect = {
            "raise": "ValueError: soak",
            "timeout": "False",
            "crash": "the session ended",
            "two_calls": "42",
        }.get(plan, "42")
        seen = expect in last if plan in ("raise", "crash") else last.strip() == expect
        if plan == "timeout":  # the cell before this one must have said that it timed out
            seen = seen and "timed out after" in results[-2]
        if plan == "wrong":
            return fenced(f"def {entry}(*args):\n    return None\n")
        if plan == "hang":
            return fenced(f"import time\n\ndef {entry}(*args):\n    time.sleep(60)\n")
        if plan == "broken":
            return fenced(f"def {entry}(*args):\n    return (\n")
        return self.answer(entry, ok=seen)

    def answer(self, entry: str, *, ok: bool) -> str:
        # Answering wrong when the tool misbehaved turns a broken session into a reward of 0, which the
        # soak counts as unexpected.
        return fenced(self.answers[entry] if ok else f"def {entry}(*args):\n    return None\n")


def call(code: str) -> str:
    return render_call_text("python", {"code": code})


def fenced(code: str) -> str:
    return f"Here it is.\n\n```python\n{code}```"


# ----- measurements ------------------------------------------------------------------------------


def pin_malloc_thresholds() -> bool:
    """Keep glibc's trim and mmap thresholds at their defaults (128 KiB); False where that is not possible.

    glibc raises both thresholds for good after the first large block is freed (the soak's own
    ``gc.get_objects()`` list is one; loading a tokenizer is another), and each thread arena then keeps
    up to twice that much free memory at its top. Short-lived tool and grading threads spread over up
    to eight arenas per core, so under load RSS climbs in steps of a few MiB for hundreds of
    episodes: bounded, not a leak, but indistinguishable from one in a short run. With the thresholds
    pinned, freed memory goes back to the kernel and RSS follows the memory in use.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 128 * 1024)) and bool(mallopt(m_mmap_threshold, 128 * 1024))


def _status(pid: int | str = "self") -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kib(value: str) -> int:
    return int(value.split()[0]) if value else 0


def process_table() -> dict[int, tuple[int, str]]:
    """``pid -> (parent pid, state)`` of every process visible in /proc (psutil may not be installed)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # it exited meanwhile
            continue
        # The command name is in parentheses and may hold spaces or parentheses itself: split after the last one.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _count_dir(path: str) -> int | None:
    try:
        return len(os.listdir(path))
    except OSError:
        return None


def _runs_server(pid: int) -> bool:
    """Python running ``server.py``: the server or a child it forked (bubblewrap's command line names it too)."""
    cmd = _cmdline(pid)
    return cmd.startswith(f"{sys.executable} -I ") and "server.py" in cmd


def sandbox_servers(sandbox: LocalSandbox, pids: list[int]) -> list[dict[str, Any]]:
    """Each server process: one that runs ``server.py`` and whose parent does not (its children share its
    command line)."""
    is_server = {p: _runs_server(p) for p in pids}
    table = process_table()
    out = []
    for p in pids:
        if not is_server[p] or is_server.get(table.get(p, (0, ""))[0]):
            continue
        try:
            rss = _kib(_status(p).get("VmRSS", "")) / 1024
        except OSError:
            continue
        # Each child works in a directory of the server's work root; one left behind per episode fills the disk.
        root = sandbox._cfg["workroot"]
        out.append(
            {
                "pid": p,
                "fds": _count_dir(f"/proc/{p}/fd"),
                "rss_mib": round(rss, 1),
                "workdirs": _count_dir(f"/proc/{p}/root{root}"),
            }
        )
    return out


def sample(episodes: int, started: float, sandbox: LocalSandbox) -> dict[str, Any]:
    """One row of the table. Garbage is collected first: a cycle the collector frees is not a leak."""
    gc.collect()
    time.sleep(0.2)  # let the last tool threads unwind and the servers re-fork their spares
    me = os.getpid()
    table = process_table()
    below = descendants(me, table)
    status = _status()
    servers = sandbox_servers(sandbox, below)
    return {
        "episodes": episodes,
        "seconds": round(time.perf_counter() - started, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "children": len(below),
        "zombies": sum(table[p][1] == "Z" for p in below if p in table),
        "threads_python": threading.active_count(),
        "threads_os": int(status["Threads"]),
        "rss_mib": round(_kib(status["VmRSS"]) / 1024, 1),
        "gc_objects": len(gc.get_objects()),
        "py_blocks": sys.getallocatedblocks(),
        "servers": len(servers),
        "server_fds": sum(s["fds"] or 0 for s in servers),
        "server_rss_mib": round(sum(s["rss_mib"] for s in servers), 1),
        "server_workdirs": sum(s["workdirs"] or 0 for s in servers),
    }


def kill_server(sandbox: LocalSandbox, index: int) -> int | None:
    """SIGKILL the server process of pool slot ``index`` and wait until the client sees it gone; its pid."""
    server = sandbox._servers[index]
    if server is None:
        return None
    below = [server.popen.pid, *descendants(server.popen.pid, process_table())]
    pid = next((p for p in below if _runs_server(p)), server.popen.pid)  # parents come before their children
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    # Until then a request could still be written to the dying server and fail an episode.
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


# ----- the verdict -------------------------------------------------------------------------------


def slope_per_100(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of ``value`` against ``episodes``, per 100 episodes."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] / 100 for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def verdict(samples: list[dict[str, Any]], warmup: int, bounds: dict[str, float] = BOUNDS) -> dict[str, Any]:
    """Compare every sample after ``warmup`` episodes with the first of them."""
    after = [s for s in samples if s["episodes"] >= warmup]
    if len(after) < 3:
        return {"passed": False, "checks": [], "why": f"need 3 samples from episode {warmup} on, got {len(after)}"}
    base, last = after[0], after[-1]
    checks = []

    def bounded(key: str, slack: float) -> None:
        growth = max(s[key] for s in after) - base[key]
        checks.append({"name": key, "baseline": base[key], "last": last[key], "growth": growth, "limit": slack,
                       "passed": growth <= slack})  # fmt: skip

    bounded("fds", bounds["fds_slack"])
    bounded("children", bounds["children_slack"])
    bounded("zombies", bounds["zombies_slack"])
    bounded("threads_python", bounds["threads_slack"])
    bounded("threads_os", bounds["threads_slack"])
    # The servers hold a fixed number of descriptors and directories between batches, like this process.
    bounded("server_fds", bounds["fds_slack"] * max(base["servers"], 1))
    bounded("server_workdirs", bounds["children_slack"])

    rss = [(s["episodes"], s["rss_mib"]) for s in after]
    slope = slope_per_100(rss)
    checks.append({"name": "rss_slope_mib_per_100", "baseline": base["rss_mib"], "last": last["rss_mib"],
                   "growth": round(slope, 3), "limit": bounds["rss_slope_mib_per_100"],
                   "passed": slope <= bounds["rss_slope_mib_per_100"]})  # fmt: skip
    steps = [b[1] - a[1] for a, b in itertools.pairwise(rss)]
    rising = len(steps) >= 4 and all(d > 0 for d in steps)
    total = rss[-1][1] - rss[0][1]
    checks.append({"name": "rss_monotonic_rise_mib", "baseline": base["rss_mib"], "last": last["rss_mib"],
                   "growth": round(total, 1) if rising else 0.0, "limit": bounds["rss_monotonic_mib"],
                   "passed": not (rising and total > bounds["rss_monotonic_mib"])})  # fmt: skip
    gc_slope = slope_per_100([(s["episodes"], s["gc_objects"]) for s in after])
    checks.append({"name": "gc_objects_slope_per_100", "baseline": base["gc_objects"], "last": last["gc_objects"],
                   "growth": round(gc_slope, 1), "limit": bounds["gc_objects_slope_per_100"],
                   "passed": gc_slope <= bounds["gc_objects_slope_per_100"]})  # fmt: skip
    blocks_slope = slope_per_100([(s["episodes"], s["py_blocks"]) for s in after])
    checks.append({"name": "py_blocks_slope_per_100", "baseline": base["py_blocks"], "last": last["py_blocks"],
                   "growth": round(blocks_slope, 1), "limit": bounds["py_blocks_slope_per_100"],
                   "passed": blocks_slope <= bounds["py_blocks_slope_per_100"]})  # fmt: skip
    server_slope = slope_per_100([(s["episodes"], s["server_rss_mib"]) for s in after])
    limit = bounds["rss_slope_mib_per_100"] * max(base["servers"], 1)
    checks.append({"name": "server_rss_slope_mib_per_100", "baseline": base["server_rss_mib"],
                   "last": last["server_rss_mib"], "growth": round(server_slope, 3), "limit": limit,
                   "passed": server_slope <= limit})  # fmt: skip
    return {"passed": all(c["passed"] for c in checks), "baseline_episodes": base["episodes"], "checks": checks}


# ----- the loop ----------------------------------------------------------------------------------


def plan_of(traj: Any) -> str | None:
    for m in traj.messages:
        if m.get("role") == "assistant":
            found = re.search(r"# soak: (\w+)", str(m.get("content", "")) + json.dumps(m.get("tool_calls", [])))
            if found:
                return found[1]
    return None


def run_soak(
    episodes: int = 1000,
    *,
    sample_every: int = 100,
    warmup: int = 200,
    group_size: int = 5,
    tasks_per_batch: int = 5,
    pool_size: int = 2,
    kill_server_every: int = 100,
    inject_leak: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Play ``episodes`` episodes and sample every ``sample_every``; returns samples, outcomes and the verdict."""
    per_batch = group_size * tasks_per_batch
    for name, every in (("sample_every", sample_every), ("kill_server_every", kill_server_every)):
        if every % per_batch:
            raise ValueError(f"{name} ({every}) must be a multiple of the batch ({per_batch} episodes)")
    tasks = load_splits()["train"][:NUM_TASKS]
    answers = {t.metadata["entry_point"]: t.answer for t in tasks}
    chat = ChatFormat(qwen3_tokenizer("training"), enable_thinking=False)
    pinned = pin_malloc_thresholds()
    sandbox = LocalSandbox(pool_size=pool_size)
    leaked: list[Any] = []
    try:

        def make_env() -> CodeTestsEnv:
            return CodeTestsEnv(
                num_tasks=NUM_TASKS,
                sandbox=sandbox,
                grading_sandbox=sandbox,
                tool_timeout=TOOL_TIMEOUT,
                test_timeout=TEST_TIMEOUT,
            )

        config = RolloutConfig(
            group_size=group_size,
            max_turns=6,
            max_total_tokens=8192,
            sampling=SamplingParams(max_new_tokens=1024),
            zero_variance="keep",
            step_timeout=STEP_TIMEOUT,
        )
        engine = RolloutEngine(ScriptedBackend(chat.tokenizer, SoakPolicy(answers)), chat, make_env, config)
        started = time.perf_counter()
        samples = [sample(0, started, sandbox)]
        log(_header())
        log(_row(samples[0]))
        outcomes: Counter[str] = Counter()
        unexpected: list[str] = []
        done = 0
        batch_no = 0
        kills = 0
        while done < episodes:
            ids = [tasks[(batch_no * tasks_per_batch + i) % len(tasks)].id for i in range(tasks_per_batch)]
            batch = engine.run(ids, seed=batch_no)
            batch_no += 1
            for traj in (t for g in batch.groups for t in g.trajectories):
                plan = plan_of(traj) or "?"
                outcomes[plan] += 1
                why = None
                if plan == "stuck":
                    if "harness timeout" not in (traj.infra_error or ""):
                        why = f"expected the harness timeout, got infra error {traj.infra_error!r}"
                elif traj.infra_error:
                    why = f"infra error: {traj.infra_error}"
                elif not traj.terminated:
                    why = f"not terminated ({traj.truncated_by})"
                elif traj.reward != EXPECTED_REWARD.get(plan):
                    why = f"reward {traj.reward}, expected {EXPECTED_REWARD.get(plan)}"
                if why:
                    unexpected.append(f"{traj.task_id} [{plan}]: {why}")
                if inject_leak == "trajectories":
                    leaked.append(traj)
            if inject_leak == "fds":
                leaked.append(open(os.devnull))  # noqa: SIM115 - the leak is the point
            elif inject_leak == "threads":
                stop = threading.Event()
                threading.Thread(target=stop.wait, daemon=True).start()
                leaked.append(stop)
            done += per_batch
            if done % sample_every == 0 or done >= episodes:
                samples.append(sample(done, started, sandbox))
                log(_row(samples[-1]))
            if kill_server_every and done % kill_server_every == 0 and done < episodes and pool_size > 1:
                kills += kill_server(sandbox, 1) is not None
        wall = time.perf_counter() - started
    finally:
        sandbox.close()
        for item in leaked:
            if isinstance(item, threading.Event):
                item.set()
            elif hasattr(item, "close"):
                item.close()
    result = verdict(samples, warmup)
    return {
        "episodes": done,
        "sample_every": sample_every,
        "warmup": warmup,
        "group_size": group_size,
        "tasks_per_batch": tasks_per_batch,
        "pool_size": pool_size,
        "server_kills": kills,
        "isolation": sandbox.isolation.name.lower(),
        "malloc_thresholds_pinned": pinned,
        "inject_leak": inject_leak,
        "wall_seconds": round(wall, 1),
        "episodes_per_second": round(done / wall, 2),
        "outcomes": dict(sorted(outcomes.items())),
        "unexpected": len(unexpected),
        "unexpected_examples": unexpected[:10],
        "samples": samples,
        "bounds": BOUNDS,
        "verdict": result,
        "passed": result["passed"] and not unexpected,
    }


COLUMNS = (
    ("episodes", "episodes"), ("seconds", "s"), ("fds", "fds"), ("children", "children"), ("zombies", "zombies"),
    ("threads_python", "threads (py)"), ("threads_os", "threads (os)"), ("rss_mib", "RSS MiB"),
    ("gc_objects", "gc objects"), ("py_blocks", "py blocks"), ("server_fds", "server fds"),
    ("server_rss_mib", "server RSS MiB"), ("server_workdirs", "server dirs"),
)  # fmt: skip


def _header() -> str:
    return " ".join(f"{label:>{max(len(label), 8)}}" for _, label in COLUMNS)


def _row(s: dict[str, Any]) -> str:
    return " ".join(f"{s[key]!s:>{max(len(label), 8)}}" for key, label in COLUMNS)


def markdown_table(samples: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(label for _, label in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(s[key]) for key, _ in COLUMNS) + " |" for s in samples]
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    v = result["verdict"]
    lines = [
        f"{result['episodes']} episodes in {result['wall_seconds']} s ({result['episodes_per_second']} per s), "
        f"isolation {result['isolation']}, {result['pool_size']} servers ({result['server_kills']} killed, restarted)",
        "plans: " + ", ".join(f"{k} {n}" for k, n in result["outcomes"].items()),
        f"unexpected outcomes: {result['unexpected']}",
    ]
    lines += [f"  {u}" for u in result["unexpected_examples"]]
    if not v.get("checks"):
        lines.append(f"verdict: FAIL ({v.get('why')})")
        return "\n".join(lines)
    lines.append(f"growth after the warm-up (baseline: the sample at {v['baseline_episodes']} episodes):")
    for c in v["checks"]:
        mark = "ok  " if c["passed"] else "FAIL"
        lines.append(f"  {mark} {c['name']:<30} {c['baseline']!s:>10} -> {c['last']!s:<10} "
                     f"growth {c['growth']!s:>8} (limit {c['limit']})")  # fmt: skip
    lines.append("verdict: " + ("PASS" if result["passed"] else "FAIL"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--sample-every", type=int, default=100, help="episodes between samples")
    ap.add_argument("--warmup", type=int, default=200, help="episodes before the baseline sample")
    ap.add_argument("--group-size", type=int, default=5)
    ap.add_argument("--tasks-per-batch", type=int, default=5)
    ap.add_argument("--pool-size", type=int, default=2, help="sandbox servers")
    ap.add_argument("--kill-server-every", type=int, default=100, help="episodes between server kills; 0: never")
    ap.add_argument("--inject-leak", choices=("trajectories", "fds", "threads"), help="add a known leak")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    ap.add_argument("--check", action="store_true", help="exit with status 1 when a bound is broken")
    args = ap.parse_args()
    result = run_soak(
        args.episodes,
        sample_every=args.sample_every,
        warmup=args.warmup,
        group_size=args.group_size,
        tasks_per_batch=args.tasks_per_batch,
        pool_size=args.pool_size,
        kill_server_every=args.kill_server_every,
        inject_leak=args.inject_leak,
    )
    print(report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.check and not result["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
