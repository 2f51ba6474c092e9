"""Per-stage behaviour of a ``recipes/sandbox.yaml`` run: what the model did with the sandbox.

    python benchmarks/sandbox_stages.py runs/sandbox [runs/sandbox-seed1 ...]

Reads the held-out evaluations a run saved (``eval_before``, ``eval_sft``, ``eval_after``, each with
its trajectories) and prints, per stage: success, the share of episodes with at least one python
call, the share whose sandbox output reports an error or a timeout in the model's code, the
infrastructure failures, truncations, and success per kind of puzzle. Everything is computed from
the saved messages, so episodes cut by a limit count too (their reward components are empty).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

STAGES = (("base", "eval_before"), ("sft", "eval_sft"), ("grpo", "eval_after"))
KINDS = {"How many times": "letters", "What is the sum": "digit_sum", "How many distinct": "distinct",
         "How many days": "days"}  # fmt: skip


def _kind(messages: list[dict]) -> str:
    question = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
    return next((k for prefix, k in KINDS.items() if question.startswith(prefix)), "other")


def stage_stats(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    valid = [r for r in rows if not r.get("infra_error")]
    n = max(len(valid), 1)
    tools = [[m for m in r["messages"] if m.get("role") == "tool"] for r in valid]
    errored = [
        any("[error]" in str(m.get("content")) or "[timed out" in str(m.get("content")) for m in ms) for ms in tools
    ]
    per_kind: dict[str, list[float]] = defaultdict(list)
    for r in valid:
        per_kind[_kind(r["messages"])].append(float(r["reward"] >= 1.0))
    return {
        "n": len(valid),
        "success": sum(r["reward"] >= 1.0 for r in valid) / n,
        "episodes_with_python_call": sum(bool(ms) for ms in tools) / n,
        "episodes_with_sandbox_error": sum(errored) / n,
        "infra_failures": len(rows) - len(valid),
        "truncated": sum(bool(r.get("truncated")) for r in valid) / n,
        "success_by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(per_kind.items())},
    }


def main(run_dirs: list[str]) -> None:
    for run in map(Path, run_dirs):
        print(f"{run}")
        print(f"  {'stage':6} {'n':>4} {'success':>8} {'python':>7} {'sbx err':>8} {'infra':>6} {'trunc':>6}  by kind")
        for stage, name in STAGES:
            path = run / f"{name}_trajectories.jsonl"
            if not path.exists():
                continue
            s = stage_stats(path)
            kinds = " ".join(f"{k} {v:.2f}" for k, v in s["success_by_kind"].items())
            rates = f"{s['success']:8.3f} {s['episodes_with_python_call']:7.3f} {s['episodes_with_sandbox_error']:8.3f}"
            print(f"  {stage:6} {s['n']:4d} {rates} {s['infra_failures']:6d} {s['truncated']:6.3f}  {kinds}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
