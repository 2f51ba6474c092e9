"""The quickstart in 16-bit and on a 4-bit NF4 base, side by side: does it still learn, how long, how much memory.

Each run is a separate `agentrl train` process (so its peak resident memory is its own), started one
after the other in this one benchmark run, with everything else equal:

    python benchmarks/quickstart_precision_bench.py [--out runs/precision] [key=value ...]

It prints held-out success before and after (n=200, greedy), the paired difference with its 95% CI,
the wall time of the whole command, and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _run(out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "agentrl", "train", "recipes/quickstart.yaml", f"output_dir={out}", "overwrite=true",
           *extra]  # fmt: skip
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; the largest child so far
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds": seconds, "peak_rss_mib": peak / 1024, "peak_is_own": peak > before, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/precision", help="parent directory of the two runs")
    ap.add_argument("overrides", nargs="*", help="extra recipe overrides for both runs")
    args = ap.parse_args()
    out = Path(args.out)
    # The 4-bit run goes first: RUSAGE_CHILDREN keeps the maximum over children, so the second
    # run's peak is only its own when it is the larger one (reported as peak_is_own).
    results = {
        "4-bit NF4": _run(out / "nf4", ["model.load_in_4bit=true", *args.overrides]),
        "fp32": _run(out / "fp32", ["model.load_in_4bit=false", *args.overrides]),
    }
    print(f"\n{'base':<10} {'before':>8} {'after':>8} {'difference (95% CI)':>28} {'wall':>8} {'peak RSS':>10}")
    for name, r in results.items():
        s = r["summary"]
        d = s["success_difference"]
        diff = f"{100 * d['difference']:+.1f} ({100 * d['ci95_low']:+.1f} to {100 * d['ci95_high']:+.1f})"
        rss = f"{r['peak_rss_mib']:.0f} MiB" if r["peak_is_own"] else "<= above"
        print(f"{name:<10} {s['eval_before']['success_rate']:>8.1%} {s['eval_after']['success_rate']:>8.1%} "
              f"{diff:>28} {r['seconds']:>7.0f}s {rss:>10}")  # fmt: skip
    (out / "precision.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
