"""What a tool call through an MCP server costs over a local ``@tool`` doing the same work, side by side.

    python benchmarks/mcp_bench.py [--calls 400] [--concurrent 32] [--out benchmarks/results/mcp-cpu.json]

Both tools add two integers. The local one is an ``@agentrl.tool`` function (a sync one, which runs in a
thread of its own, and an ``async`` one, which does not); the MCP one is the ``add`` tool
of the SDK-written test server (tests/tools/mcp_server.py) over stdio, shared by every call. Each call goes
through ``ToolRunner.run_one``, as an environment's step makes it: schema validation, the call, the result
as text. The two kinds alternate call by call, so load on the machine falls on both alike.

1. sequential: ``--calls`` calls of each kind, one at a time; p50 and p90 per kind and the p50 difference.
   Target: the MCP call adds at most 5 ms at p50.
2. concurrent: ``--concurrent`` calls at once (as many episodes stepping together) on one shared server;
   the wall time of each burst, median over bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


KINDS = ("local", "local_async", "mcp")


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _timed(runner, call) -> float:
    start = time.perf_counter()
    out = await runner.run_one(call)
    if not out.ok:
        raise RuntimeError(out.message["content"])
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=400, help="sequential calls of each kind")
    p.add_argument("--concurrent", type=int, default=32, help="calls at once in the concurrent part")
    p.add_argument("--bursts", type=int, default=20, help="concurrent bursts of each kind")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args()

    import agentrl
    from agentrl.chat.parsing import ToolCall
    from agentrl.tools.mcp_tools import close_servers, from_mcp
    from agentrl.tools.runner import ToolRunner

    @agentrl.tool
    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first.
            b: The second.
        """
        return a + b

    @agentrl.tool(name="add")
    async def add_async(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first.
            b: The second.
        """
        return a + b

    runners = {"local": ToolRunner([add]), "local_async": ToolRunner([add_async])}
    server = [sys.executable, str(ROOT / "tests" / "tools" / "mcp_server.py")]
    runners["mcp"] = ToolRunner(from_mcp(server, tools=["add"]))
    call = ToolCall(name="add", arguments={"a": 20, "b": 22})

    async def run() -> dict:
        seq: dict[str, list[float]] = {kind: [] for kind in runners}
        bursts: dict[str, list[float]] = {kind: [] for kind in runners}
        for _ in range(20):  # warm every path (imports, the server's first requests)
            for runner in runners.values():
                await _timed(runner, call)
        for _ in range(args.calls):
            for kind, runner in runners.items():
                seq[kind].append(await _timed(runner, call))
        for _ in range(args.bursts):
            for kind, runner in runners.items():
                start = time.perf_counter()
                await asyncio.gather(*(_timed(runner, call) for _ in range(args.concurrent)))
                bursts[kind].append((time.perf_counter() - start) * 1e3)
        return {"seq": seq, "bursts": bursts}

    raw = asyncio.run(run())
    close_servers()
    out = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "calls": args.calls,
        "concurrent": args.concurrent,
    }
    for kind in KINDS:
        xs = raw["seq"][kind]
        out[f"{kind}_p50_ms"] = round(statistics.median(xs), 3)
        out[f"{kind}_p90_ms"] = round(_quantile(xs, 0.9), 3)
        out[f"{kind}_burst_ms"] = round(statistics.median(raw["bursts"][kind]), 2)
    out["mcp_added_p50_ms"] = round(out["mcp_p50_ms"] - out["local_p50_ms"], 3)
    out["mcp_added_over_async_p50_ms"] = round(out["mcp_p50_ms"] - out["local_async_p50_ms"], 3)
    out["target_added_p50_ms"] = 5.0
    out["target_met"] = out["mcp_added_p50_ms"] <= 5.0
    print(f"sequential, {args.calls} calls each (ms):   p50      p90")
    for kind in KINDS:
        print(f"  {kind:<34}{out[f'{kind}_p50_ms']:>7.3f}  {out[f'{kind}_p90_ms']:>7.3f}")
    verdict = "met" if out["target_met"] else "NOT met"
    print(f"  MCP adds at p50 over the sync @tool: {out['mcp_added_p50_ms']:.3f} ms (target <= 5 ms: {verdict})")
    print(f"  over the async @tool: {out['mcp_added_over_async_p50_ms']:.3f} ms")
    print(f"{args.concurrent} calls at once, median of {args.bursts} bursts (ms): "
          + ", ".join(f"{k} {out[k + '_burst_ms']:.2f}" for k in KINDS))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
