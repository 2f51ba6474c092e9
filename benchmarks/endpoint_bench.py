"""The agent endpoint against the native engine, side by side in one run.

    python benchmarks/endpoint_bench.py [--model smollm2-135m] [--tasks 8] [--group 8] [--repeats 2]
                                        [--out benchmarks/results/endpoint-cpu.json]

1. overhead: the quickstart's episodes (arithmetic, two-digit, two worked examples, the calculator) played
   by the native engine on ``ArithmeticEnv`` and by ``examples/calculator_agent.py`` (an openai-SDK tool
   loop) through the endpoint, with the real model on the HF backend, greedy, so both play the same
   episodes. ``--tasks`` x ``--group`` episodes at once (64 by default). Target: endpoint wall <= 1.3x native.
2. latency: the same 64 concurrent episodes with a backend that samples instantly (a scripted policy), so
   that what remains is the endpoint's own cost. For every request: the client's round trip minus the time
   the request spent in the batcher (gathering, queueing and generation). Target: p50 < 5 ms.

The A/B runs alternate and each figure is the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _agent_env(split: str, timings: dict | None = None):
    """The example agent; with ``timings``, each response id's client round trip is recorded there."""
    from agentrl.envs.registry import load_entry_point

    make_env = load_entry_point(f"{ROOT / 'examples' / 'calculator_agent.py'}:make_env")
    env = make_env(split)
    if timings is None:
        return env
    inner = env.run

    async def run(task, client, model):
        create = client.chat.completions.create

        async def timed(*args, **kwargs):
            t0 = time.perf_counter()
            response = await create(*args, **kwargs)
            timings[response.id] = time.perf_counter() - t0
            return response

        client.chat.completions.create = timed
        return await inner(task, client, model)

    env.run = run
    return env


def bench_overhead(args) -> dict:
    from agentrl.chat.format import load_chat_format
    from agentrl.environments.arithmetic import ArithmeticEnv
    from agentrl.models import load_base, load_tokenizer
    from agentrl.rollout.engine import RolloutConfig, RolloutEngine
    from agentrl.rollout.generation import SamplingParams
    from agentrl.rollout.hf_backend import HFBackend

    model, _ = load_base(args.model)
    tok = load_tokenizer(args.model)
    chat = load_chat_format(tok)
    backend = HFBackend(model, tok, max_batch_size=args.tasks * args.group)
    config = RolloutConfig(group_size=args.group, max_turns=2, max_total_tokens=1024, zero_variance="keep",
                           sampling=SamplingParams(temperature=0.0, max_new_tokens=40))  # fmt: skip
    native_env = lambda: ArithmeticEnv("train", None, digits=2, num_ops=1, worked_examples=2)  # noqa: E731
    native = RolloutEngine(backend, chat, native_env, config)
    harness = RolloutEngine(backend, chat, lambda: _agent_env("train"), config)
    tasks = native_env().task_ids[: args.tasks]
    walls: dict[str, list[float]] = {"native": [], "endpoint": []}
    batches = {}
    try:
        for _ in range(args.repeats):
            for name, engine in (("native", native), ("endpoint", harness)):
                t0 = time.perf_counter()
                batches[name] = engine.run(tasks, seed=0)
                walls[name].append(time.perf_counter() - t0)
    finally:
        harness.close()
    a = [t for g in batches["native"].groups for t in g.trajectories]
    b = [t for g in batches["endpoint"].groups for t in g.trajectories]
    same = sum(x.ids == y.ids and x.mask == y.mask for x, y in zip(a, b, strict=True))
    native_s, endpoint_s = statistics.median(walls["native"]), statistics.median(walls["endpoint"])
    return {
        "episodes": len(a), "native_seconds": native_s, "endpoint_seconds": endpoint_s,
        "ratio": endpoint_s / native_s, "identical_episodes": same,
        "native_success": statistics.fmean(t.reward for t in a),
        "endpoint_success": statistics.fmean(t.reward for t in b),
        "native_walls": walls["native"], "endpoint_walls": walls["endpoint"],
    }  # fmt: skip


def _canned_server():
    """An OpenAI-compatible server that does nothing: a calculator call, then a boxed answer, written at once. The
    same agent code against it gives the floor of the client's own cost (the openai SDK, HTTP) at each concurrency."""
    import socket
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def complete(request: Request):
        body = await request.json()
        if body["messages"][-1]["role"] == "tool":
            message = {"role": "assistant", "content": "\\boxed{1}"}
        else:
            fn = {"name": "calculator", "arguments": '{"expression": "1"}'}
            call = {"id": "c", "type": "function", "function": fn}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return JSONResponse({"id": f"x{time.perf_counter_ns()}", "object": "chat.completion", "created": 0,
                             "model": "m",
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1", server


def _floor(base_url: str, tasks: list, concurrent: int) -> list[float]:
    """Round trips of the same agent code against the canned server, ``concurrent`` episodes at once."""
    import ssl

    import httpx
    import openai

    context = ssl.create_default_context()

    async def one(env, task):  # a client per episode, built as the rollout builds them (agentrl.rollout.harness)
        async with httpx.AsyncClient(verify=context) as http:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="k", http_client=http, max_retries=0)
            await env.run(task, client, "m")

    async def go():
        timings: dict[str, float] = {}
        env = _agent_env("train", timings)
        await asyncio.gather(*(one(env, t) for t in tasks[:concurrent]))
        return list(timings.values())

    asyncio.run(go())  # warm-up
    return asyncio.run(go())


def bench_latency(args) -> dict:
    from agentrl.chat.format import load_chat_format
    from agentrl.chat.parsing import render_call_text
    from agentrl.models import load_tokenizer
    from agentrl.rollout.engine import RolloutConfig, RolloutEngine
    from agentrl.testing import ScriptedBackend

    tok = load_tokenizer(args.model)
    chat = load_chat_format(tok)

    def policy(text, rng):  # the calculator call, then the boxed result: two requests per episode
        if text.rstrip().endswith("</tool_response><|im_end|>\n<|im_start|>assistant"):
            return "\\boxed{1}"
        return render_call_text("calculator", {"expression": "1 + 1"})

    backend = ScriptedBackend(tok, policy)
    all_tasks = _agent_env("train").tasks
    base_url, server = _canned_server()
    out = {}
    for tasks, group in ((1, 1), (args.tasks, args.group)):
        config = RolloutConfig(group_size=group, max_turns=4, max_total_tokens=2048, zero_variance="keep")
        added, handler, in_batcher = [], [], []
        for repeat in range(args.repeats + 1):  # the first run warms up
            timings: dict[str, float] = {}
            engine = RolloutEngine(backend, chat, lambda t=timings: _agent_env("train", t), config)
            try:
                batch = engine.run([t.id for t in all_tasks[:tasks]], seed=repeat)
            finally:
                engine.close()
            if repeat == 0:
                continue
            for r in (r for g in batch.groups for t in g.trajectories for r in t.requests):
                added.append(timings[r["id"]] - r["seconds"])
                handler.append(r["handler_seconds"])
                in_batcher.append(r["seconds"])
        floor = [x for _ in range(args.repeats) for x in _floor(base_url, all_tasks, tasks * group)]
        out[str(tasks * group)] = {
            "requests": len(added),
            "added_ms_p50": 1000 * statistics.median(added), "added_ms_p90": _p90(added),
            "handler_ms_p50": 1000 * statistics.median(handler), "handler_ms_p90": _p90(handler),
            "batcher_ms_p50": 1000 * statistics.median(in_batcher),
            "sdk_floor_ms_p50": 1000 * statistics.median(floor),
        }  # fmt: skip
    server.should_exit = True
    return out


def _p90(xs: list[float]) -> float:
    return 1000 * sorted(xs)[int(0.9 * (len(xs) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="base model (offline alias, directory or hub id)")
    p.add_argument("--tasks", type=int, default=8, help="tasks per batch")
    p.add_argument("--group", type=int, default=8, help="episodes per task")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side; the median is reported")
    p.add_argument("--only", default="overhead,latency", help="comma-separated: overhead, latency")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    results = {}
    if "latency" in args.only:
        results["latency"] = lat = bench_latency(args)
        for n, r in lat.items():
            print(f"latency, {n} concurrent episode(s), {r['requests']} requests: in the endpoint outside the batcher "
                  f"p50 {r['handler_ms_p50']:.2f} ms (p90 {r['handler_ms_p90']:.2f}); the client's round trip minus "
                  f"the batcher p50 {r['added_ms_p50']:.1f} ms (p90 {r['added_ms_p90']:.1f}), against "
                  f"{r['sdk_floor_ms_p50']:.1f} ms for the same agent code and a server that does nothing")  # fmt: skip
    if "overhead" in args.only:
        results["overhead"] = o = bench_overhead(args)
        print(f"overhead: {o['episodes']} episodes, native {o['native_seconds']:.1f} s, endpoint "
              f"{o['endpoint_seconds']:.1f} s: {o['ratio']:.2f}x (target <= 1.3x); identical episodes "
              f"{o['identical_episodes']}/{o['episodes']}; success native {o['native_success']:.3f}, "
              f"endpoint {o['endpoint_success']:.3f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(["benchmarks/endpoint_bench.py", *(
            argv if argv is not None else sys.argv[1:])]), **results}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
