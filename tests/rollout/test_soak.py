"""The soak test (benchmarks/soak.py): many episodes through engine, tools and sandbox must not leak.

200 episodes of every plan (cells that raise, time out or crash their worker, malformed calls,
answers that fail, hang or do not compile, steps the harness gives up on) through the real rollout
engine, ``code-tests`` environment, python tool with sessions, trusted grading and LocalSandbox, with
one sandbox server killed halfway; then the verdict on descriptors, processes, threads and memory.
``python benchmarks/soak.py`` runs the same loop for 1,000 episodes; the test runs it for 200, in a process
of its own.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agentrl

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def soak():
    """benchmarks/soak.py, imported from benchmarks/ (not a package) and forgotten afterwards."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("soak")
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("soak", None)


def series(**grow):
    """Samples every 25 episodes up to 200, flat except for the given per-sample growth of some fields."""
    base = {"fds": 12, "children": 10, "zombies": 0, "threads_python": 5, "threads_os": 8, "rss_mib": 740.0,
            "gc_objects": 423_600, "py_blocks": 1_663_000, "servers": 2, "server_fds": 80, "server_rss_mib": 61.0,
            "server_workdirs": 4}  # fmt: skip
    return [{"episodes": i * 25, **{k: v + grow.get(k, 0) * i for k, v in base.items()}} for i in range(9)]


def failed(soak, samples):
    return sorted(c["name"] for c in soak.verdict(samples, 50)["checks"] if not c["passed"])


def test_the_verdict_tells_leaks_from_noise(soak):
    assert failed(soak, series()) == []
    assert failed(soak, series(fds=1)) == ["fds"]
    assert failed(soak, series(children=1, zombies=1)) == ["children", "zombies"]
    assert failed(soak, series(threads_python=1, threads_os=1)) == ["threads_os", "threads_python"]
    assert failed(soak, series(server_workdirs=1)) == ["server_workdirs"]
    # A trajectory leaked per episode (soak.py --inject-leak trajectories): per 100 episodes about 2 MiB,
    # 1,400 collected objects and 50,000 allocator blocks.
    assert failed(soak, series(rss_mib=0.5, gc_objects=350, py_blocks=12_500)) == [
        "gc_objects_slope_per_100", "py_blocks_slope_per_100", "rss_monotonic_rise_mib", "rss_slope_mib_per_100"
    ]  # fmt: skip
    # A slow leak under the slope bound still rises at every sample.
    assert failed(soak, series(rss_mib=0.35)) == ["rss_monotonic_rise_mib"]
    # One step of the allocator, or a sample that dips, is not a trend.
    stepped = series()
    for s in stepped[5:]:
        s["rss_mib"] += 1.0
    stepped[3]["fds"] -= 1
    assert failed(soak, stepped) == []
    assert not soak.verdict(series()[:3], 50)["passed"]  # too few samples after the warm-up to judge


@pytest.mark.slow
def test_200_episodes_leak_nothing(soak, tmp_path):
    # In a process of its own, as `python benchmarks/soak.py` runs: what other tests left behind (threads,
    # memory, a server) cannot blur the counts, and pinning the allocator's thresholds stays in there.
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(BENCHMARKS / "soak.py"), "--episodes", "200", "--sample-every", "25",
           "--warmup", "50", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    # Every plan ran, each ended as planned (state kept across cells, wiped by a timeout, ...).
    assert set(result["outcomes"]) == set(soak.PLANS), result["outcomes"]
    assert result["unexpected"] == 0, result["unexpected_examples"]
    assert [s["episodes"] for s in result["samples"]] == list(range(0, 201, 25))
    assert result["server_kills"] == 1  # and the episodes after it restarted the server without a failure
    assert result["verdict"]["passed"], soak.report(result)


def test_a_step_given_up_drops_its_tool_calls(caplog):
    # Found by the soak: when the harness gave up a step, the thread of a tool call still running later
    # failed into a future nobody awaited, and asyncio logged each one with its traceback (held in memory
    # wherever logs are captured).
    @agentrl.tool
    def slow() -> str:
        """Fail after a while."""
        time.sleep(0.2)
        raise RuntimeError("late")

    async def main():
        call = asyncio.ensure_future(slow.acall({}))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.4)  # the thread fails meanwhile

    asyncio.run(main())
    gc.collect()
    assert "never retrieved" not in caplog.text
