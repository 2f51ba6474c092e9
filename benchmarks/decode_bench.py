"""Decoding on a CPU: the hf backend's KV cache and attention against transformers' defaults, side by side.

    python benchmarks/decode_bench.py [--model smollm2-135m] [--batch 64] [--tokens 80] [--repeats 2]

Prompts are the sandbox recipe's: ``sandbox-puzzles`` test questions, which share the system prompt
and tool specs (about 290 tokens) and differ in the question, so the batch is left-padded and every
attention call carries a mask. Greedy, at most ``--tokens`` new tokens, LoRA on the top 6 layers as in the
recipes; each turn ends at the chat's end-of-turn token, so rows finish at different steps. Four
variants of ``HFBackend.generate``:

1. transformers' defaults: the shared prefix's cache grows by concatenation (every step copies every
   layer's cache), and with a mask, grouped KV heads are copied per head group before SDPA;
2. the preallocated cache only (written in place);
3. the preallocated cache and grouped heads handed to SDPA with the mask, through ``generate()``;
4. all that, decoded step by step with finished rows leaving the batch (what the backend does on a CPU).

All four must give the same tokens (checked). Each figure is the median of ``--repeats`` runs,
the variants alternating, so that they see the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import agentrl
from agentrl.chat.conversation import TokenConversation
from agentrl.chat.format import load_chat_format
from agentrl.rollout import hf_backend
from agentrl.rollout.generation import SamplingParams
from agentrl.train.model import load_lora_model
from agentrl.train.recipe import LoRASection

VARIANTS = (
    "transformers defaults",
    "preallocated cache",
    "preallocated cache + grouped SDPA",
    "+ finished rows leave the batch",
)


@contextlib.contextmanager
def _variant(backend: hf_backend.HFBackend, name: str):
    """Switch the backend's changes off (or some of them) for the duration of one run."""
    prealloc, gqa = hf_backend._preallocated, hf_backend._grouped_query_attention_with_masks
    backend.drop_finished = name == VARIANTS[3]
    if name == VARIANTS[0]:
        hf_backend._preallocated = lambda layer, capacity: layer
    if name in VARIANTS[:2]:
        hf_backend._grouped_query_attention_with_masks = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        hf_backend._preallocated, hf_backend._grouped_query_attention_with_masks = prealloc, gqa
        backend.drop_finished = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/decode-cpu.json")
    args = ap.parse_args()

    lora = LoRASection(last_n_layers=6)
    model, tok, _ = load_lora_model(
        args.model, lora={k: getattr(lora, k) for k in ("r", "alpha", "dropout", "target_modules", "last_n_layers")},
        device="cpu",
    )  # fmt: skip
    chat = load_chat_format(tok, "auto")
    env = agentrl.make("sandbox-puzzles", split="test").unwrapped
    prompts = [TokenConversation.start(chat, env.build_prompt(t), env.tool_specs).ids for t in env.tasks[: args.batch]]
    backend = hf_backend.HFBackend(model, tok, max_batch_size=args.batch)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.tokens, stop_token_ids=[chat.end_of_turn_id])

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name in VARIANTS:
            with _variant(backend, name):
                t0 = time.perf_counter()
                out = backend.generate(prompts, params)
                times[name].append(time.perf_counter() - t0)
            outputs[name] = [c.token_ids for c in out]
    same = all(outputs[v] == outputs[VARIANTS[0]] for v in VARIANTS)
    tokens = sum(len(ids) for ids in outputs[VARIANTS[0]])
    base = statistics.median(times[VARIANTS[0]])
    rows = []
    print(f"{args.batch} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.tokens} new tokens")
    for name in VARIANTS:
        t = statistics.median(times[name])
        rows.append({"variant": name, "seconds": round(t, 2), "tokens_per_s": round(tokens / t, 1),
                     "speedup": round(base / t, 2)})  # fmt: skip
        print(f"{name:36s} {t:7.1f} s  {tokens / t:7.1f} tok/s  {base / t:5.2f}x")
    print(f"same tokens in all variants: {same}")
    result = {"model": args.model, "batch": args.batch, "new_tokens": args.tokens, "repeats": args.repeats,
              "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))], "same_tokens": same,
              "results": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        raise SystemExit("the variants disagree on the tokens")


if __name__ == "__main__":
    main()
