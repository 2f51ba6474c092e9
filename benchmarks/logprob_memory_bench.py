"""Peak memory of the trainer's logprobs: chunked from hidden states vs full ``[B, T, vocab]`` logits.

Each variant runs a forward and backward pass (LoRA on a tiny Qwen3 with the real Qwen3 vocabulary
of 151,669 tokens) in a fresh process, so one variant's allocator cache cannot hide the other's
peak. The figure is the rise in peak resident memory over the same process after loading the model
(on CUDA: ``torch.cuda.max_memory_allocated``). The model is tiny on purpose: the vocabulary
projection is then what dominates, which is the part the chunking changes.

    python benchmarks/logprob_memory_bench.py             # T=4096, chunk 512 (the default)
    python benchmarks/logprob_memory_bench.py --seq-len 8192 --chunk 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(variant: str, seq_len: int, chunk: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from agentrl.testing import tiny_qwen3
    from agentrl.train.logprobs import naive_token_logprobs, token_logprobs

    model, _ = tiny_qwen3()
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    torch.manual_seed(0)
    ids = torch.randint(0, 150_000, (1, seq_len), device=device)
    attn = torch.ones_like(ids)
    mask = torch.zeros_like(ids)
    mask[:, seq_len // 8 :] = 1  # a prompt, then a long completion
    # Warm up allocator and kernels on a short sequence so that one-off costs do not count.
    fn = naive_token_logprobs if variant == "naive" else token_logprobs
    kwargs = {} if variant == "naive" else {"chunk_size": chunk}
    fn(model, ids[:, :64], attn[:, :64], torch.ones_like(ids[:, :64]), **kwargs).sum().backward()
    model.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_peak_mb()
    lp = fn(model, ids, attn, mask, **kwargs)
    (lp * mask).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _rss_peak_mb() - base_rss
    return {"variant": variant, "peak_mb": peak, "device": device, "value": float((lp * mask).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=4096, help="tokens in the sequence (batch 1)")
    ap.add_argument("--chunk", type=int, default=512, help="positions per chunk for the chunked variant")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.seq_len, args.chunk)))
        return
    results = {}
    for variant in ("naive", "chunked"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--seq-len",
            str(args.seq_len),
            "--chunk",
            str(args.chunk),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[variant] = json.loads(out)
    naive, chunked = results["naive"], results["chunked"]
    agree = abs(naive["value"] - chunked["value"]) <= 1e-3 * abs(naive["value"])
    print(f"T={args.seq_len}, vocab 151669, chunk {args.chunk}, device {naive['device']}")
    print(f"naive   [B, T, vocab] logits   peak +{naive['peak_mb']:8.0f} MB")
    print(f"chunked from hidden states     peak +{chunked['peak_mb']:8.0f} MB")
    print(f"ratio {chunked['peak_mb'] / naive['peak_mb']:.3f} (target <= 0.25); same logprob sum: {agree}")


if __name__ == "__main__":
    main()
