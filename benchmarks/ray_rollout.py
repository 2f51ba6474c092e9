"""Rollout throughput with environments in-process and in 1 and 2 Ray workers, side by side in one run.

    python benchmarks/ray_rollout.py [--tasks 16] [--group 4] [--repeats 3] [--heavy-ms 100]

The policy is a script (exact tokens, no model), so only the environment side is measured: building
each episode's ``sandbox-puzzles`` environment, parsing the turns, running the real ``python`` tool
in the sandbox, grading. It calls python with the one line that answers the puzzle (a first try at
the list puzzles fails with a NameError and is retried) and boxes the printed number; it guesses the
date puzzles. Two workloads on the same tasks:

* light: the puzzles' own one-line programs, a few milliseconds of sandbox time each;
* heavy: every program first burns ``--heavy-ms`` of CPU in the sandbox, as running unit tests would.

Three placements: in-process (``workers.kind=local``), one Ray worker, two Ray workers. Each figure
is the median of ``--repeats`` batches after one warm-up batch, the placements alternating so that
they see the same machine; every placement must give the same rewards (checked). Scaling efficiency
is throughput(2 workers) / (2 x throughput(1 worker)). Ray runs locally with one more logical CPU
than the machine has cores, so that the 1- and 2-worker pools (one logical CPU per worker) exist
side by side; the actors still share the machine's real cores. Writes
``benchmarks/results/ray-rollout-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path

from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import render_call_text
from agentrl.envs.tasks import split_task_ids
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.generation import Completion
from agentrl.rollout.ray_workers import RayEnvPool, env_factory


def solve(question: str) -> str | None:
    if m := re.search(r'the letter "(.)" appear in "([a-z]+)"', question):
        return f"print('{m[2]}'.count('{m[1]}'))"
    if m := re.search(r"sum of the digits of (\d+\*\*\d+)", question):
        return f"print(sum(int(d) for d in str({m[1]})))"
    if m := re.search(r"distinct numbers are in this list\? (\[[\d, ]+\])", question):
        return f"print(len(set({m[1]})))"
    return None


def policy(text: str, heavy_ms: float) -> str:
    question = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", text, flags=re.S)[0]
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, flags=re.S)
    code = solve(question)
    if code is None:
        return "\\boxed{365}"
    if results and "[error]" not in results[-1]:
        return f"\\boxed{{{results[-1].strip().splitlines()[-1]}}}"
    if not results and "distinct" in question:
        code = "print(len(set(numbers)))"
    if heavy_ms:
        burn = f"import time\nt = time.process_time()\nwhile time.process_time() - t < {heavy_ms / 1000}:\n    pass\n"
        code = burn + code
    return render_call_text("python", {"code": code})


class ScriptedBackend:
    name = "scripted"

    def __init__(self, tok, heavy_ms: float):
        self.tok, self.heavy_ms = tok, heavy_ms

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            text = policy(self.tok.decode(ids), self.heavy_ms) + "<|im_end|>"
            toks = self.tok.encode(text, add_special_tokens=False)
            out.append(Completion(toks, [0.0] * len(toks), "stop"))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=16, help="tasks per batch (kinds in turn)")
    ap.add_argument("--group", type=int, default=4, help="episodes per task")
    ap.add_argument("--repeats", type=int, default=3, help="measured batches per placement (the median is reported)")
    ap.add_argument("--heavy-ms", type=float, default=100.0, help="CPU milliseconds each heavy tool call burns")
    ap.add_argument("--out", default="benchmarks/results/ray-rollout-cpu.json")
    args = ap.parse_args()
    import ray

    from agentrl.assets import qwen3_tokenizer

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False)
    chat = ChatFormat(qwen3_tokenizer("training"), enable_thinking=False)
    env_kwargs = {"num_tasks": max(args.tasks, 8)}
    pools = {1: RayEnvPool(1), 2: RayEnvPool(2)}
    factories = {
        "in-process": env_factory("sandbox-puzzles", "train", env_kwargs),
        "1 ray worker": pools[1].factory("sandbox-puzzles", split="train", **env_kwargs),
        "2 ray workers": pools[2].factory("sandbox-puzzles", split="train", **env_kwargs),
    }
    tasks = split_task_ids(factories["in-process"])[: args.tasks]
    episodes = args.tasks * args.group
    config = RolloutConfig(group_size=args.group, max_turns=4, zero_variance="keep", step_timeout=120.0)

    results: dict[str, dict] = {}
    print(f"cores: {cores}  ray {ray.__version__}  {args.tasks} tasks x {args.group} episodes = {episodes} per batch")
    for workload, heavy_ms in (("light", 0.0), ("heavy", args.heavy_ms)):
        engines = {k: RolloutEngine(ScriptedBackend(chat.tokenizer, heavy_ms), chat, f, config)
                   for k, f in factories.items()}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in engines}
        rewards: dict[str, list[float]] = {}
        tool_calls = 0
        for attempt in range(args.repeats + 1):  # the first round warms sandboxes and workers up
            for name, engine in engines.items():
                t0 = time.perf_counter()
                batch = engine.run(tasks, seed=attempt)
                wall = time.perf_counter() - t0
                trajs = [t for g in batch.groups for t in g.trajectories]
                if not all(t.valid for t in trajs):
                    raise SystemExit(f"{name}: infra failures: {[t.infra_error for t in trajs if not t.valid][:3]}")
                rewards[name] = [t.reward for t in trajs]
                tool_calls = sum(t.tool_calls for t in trajs)
                if attempt:
                    times[name].append(wall)
        same = all(r == rewards["in-process"] for r in rewards.values())
        if not same:
            raise SystemExit(f"{workload}: the placements disagree on the rewards")
        rate = {k: episodes / statistics.median(v) for k, v in times.items()}
        efficiency = rate["2 ray workers"] / (2 * rate["1 ray worker"])
        print(f"\n{workload} tools" + (f" ({heavy_ms:g} ms of CPU per call)" if heavy_ms else ""))
        for name, value in rate.items():
            print(f"  {name:14s} {value:7.1f} episodes/s   median {statistics.median(times[name]):6.2f} s per batch")
        print(f"  scaling efficiency, 1 -> 2 workers: {efficiency:.2f}")
        results[workload] = {
            "heavy_ms": heavy_ms,
            "episodes_per_s": {k: round(v, 2) for k, v in rate.items()},
            "seconds_per_batch": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "scaling_efficiency": round(efficiency, 3),
            "mean_reward": round(statistics.fmean(rewards["in-process"]), 3),
            "tool_calls_per_batch": tool_calls,
            "same_rewards": same,
        }
    for pool in pools.values():
        pool.close()
    ray.shutdown()
    out = {"cores": cores, "ray": ray.__version__, "env": "sandbox-puzzles", "tasks": args.tasks,
           "group_size": args.group, "episodes_per_batch": episodes, "repeats": args.repeats,
           "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
