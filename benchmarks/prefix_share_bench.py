"""Shared-prefix KV cache: rollout generation and trainer logprobs, with and without, side by side.

    python benchmarks/prefix_share_bench.py [--model smollm2-135m] [--batch 32] [--repeats 3]

Prompts are the quickstart's: the arithmetic environment with two worked examples, so every prompt
opens with the same ~420 tokens (system prompt, tool specs, demonstrations) and differs only in
the question. Measured:

1. generate: ``HFBackend.generate`` on ``--batch`` prompts, T=1, 40 new tokens, same seed, with
   ``share_prefix`` on and off. Both produce the same tokens (checked).
2. logprobs: ``token_logprobs`` forward + backward on the same batch with its completions, LoRA on
   the top 6 layers as in the quickstart, ``share_prefix`` on and off. Same values (checked).

Each figure is the median of ``--repeats`` runs; the A/B runs alternate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict

import torch

import agentrl
from agentrl.chat.format import ChatFormat
from agentrl.rollout.generation import SamplingParams
from agentrl.rollout.hf_backend import HFBackend
from agentrl.train.logprobs import token_logprobs
from agentrl.train.model import load_lora_model
from agentrl.train.recipe import LoRASection


def _prompts(chat: ChatFormat, n: int) -> list[list[int]]:
    env = agentrl.make("arithmetic", split="train", digits=2, num_ops=1, worked_examples=2)
    out = []
    for task_id in env.unwrapped.task_ids[:n]:
        obs, info = env.reset(options={"task_id": task_id})
        out.append(chat.encode(obs, info["tools"], add_generation_prompt=True))
    return out


def _alternate(fn, repeats: int) -> dict[bool, float]:
    """Median seconds of ``fn(False)`` and ``fn(True)``, run alternately ``repeats`` times each."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for flag in (False, True):
            t0 = time.perf_counter()
            fn(flag)
            times[flag].append(time.perf_counter() - t0)
    return {flag: statistics.median(t) for flag, t in times.items()}


def _report(name: str, t: dict[bool, float]) -> None:
    print(f"{name:10s} plain {t[False]:6.1f} s   shared prefix {t[True]:6.1f} s   speed-up {t[False] / t[True]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    lora = asdict(LoRASection(r=16, alpha=32, last_n_layers=6))  # the quickstart's adapter
    model, tok, _ = load_lora_model(args.model, lora=lora, device="cpu")
    chat = ChatFormat(tok)
    prompts = _prompts(chat, args.batch)
    print(f"{args.model}: {len(prompts)} prompts of {len(prompts[0])} tokens, shared opening of each")

    # 1. generation
    params = SamplingParams(temperature=1.0, max_new_tokens=40, stop_token_ids=[chat.end_of_turn_id], seed=1)
    backends = {flag: HFBackend(model, tok, share_prefix=flag) for flag in (True, False)}
    model.eval()
    outs = {flag: backends[flag].generate(prompts, params) for flag in (True, False)}  # warm-up, and the check
    assert [c.token_ids for c in outs[True]] == [c.token_ids for c in outs[False]], "tokens differ"
    gen = _alternate(lambda f: backends[f].generate(prompts, params), args.repeats)
    _report("generate", gen)

    # 2. trainer logprobs, forward + backward
    rows = [p + c.token_ids for p, c in zip(prompts, outs[True], strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        mask[i, len(p) : len(r)] = 1
    model.train()

    def step(flag: bool) -> torch.Tensor:
        lp = token_logprobs(model, ids, attn, mask, share_prefix=flag)
        lp.sum().backward()
        model.zero_grad(set_to_none=True)
        return lp.detach()

    assert torch.allclose(step(True), step(False), atol=1e-4), "logprobs differ"
    fwd = _alternate(step, args.repeats)
    _report("logprobs", fwd)


if __name__ == "__main__":
    main()
