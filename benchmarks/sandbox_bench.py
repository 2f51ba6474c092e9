"""Sandbox latency and throughput, against a fresh ``python -c`` subprocess measured in the same run.

    python benchmarks/sandbox_bench.py [--n 300] [--isolation auto|strong|standard]

Prints one table: p50/p90 latency for trivial code and for code that imports numpy, throughput
with as many concurrent callers as cores, session cell latency, and the same trivial workload
through ``subprocess.run([python, "-c", ...])``. Numbers are noisy on shared machines; compare the
ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from agentrl.tools.sandbox import LocalSandbox

TRIVIAL = "x = 1 + 1"
NUMPY = "import numpy as np\nprint(np.arange(10).sum())"


def percentiles(samples: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(samples, n=10)
    return statistics.median(samples), qs[8]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def check(res) -> None:
    if not res.ok:
        raise SystemExit(f"benchmark run failed: {res}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="executions per measurement")
    ap.add_argument("--isolation", default="auto", help="auto, strong or standard")
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    sb = LocalSandbox(isolation=args.isolation, strict=args.isolation != "auto")
    for _ in range(20):  # warm every server in the pool
        check(sb.run(TRIVIAL))
    rows = []
    trivial = timed(lambda: check(sb.run(TRIVIAL)), args.n)
    rows.append(("trivial code, sandbox", *percentiles(trivial)))
    numpy = timed(lambda: check(sb.run(NUMPY)), args.n)
    rows.append(("import numpy, sandbox", *percentiles(numpy)))
    with sb.session() as s:
        check(s.run("state = 0"))
        cells = timed(lambda: check(s.run("state += 1")), args.n)
    rows.append(("session cell", *percentiles(cells)))

    n_sub = max(20, args.n // 10)
    sub = timed(lambda: subprocess.run([sys.executable, "-c", TRIVIAL], check=True), n_sub)
    rows.append(("trivial code, fresh python -c", *percentiles(sub)))
    sub_np = timed(lambda: subprocess.run([sys.executable, "-c", NUMPY], check=True, capture_output=True), n_sub)
    rows.append(("import numpy, fresh python -c", *percentiles(sub_np)))

    total = args.n * 3
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        results = list(pool.map(lambda _: sb.run(TRIVIAL), range(total)))
    wall = time.perf_counter() - t0
    assert all(r.ok for r in results)
    sb.close()

    print(f"isolation: {sb.isolation.name.lower()}   cores: {cores}   n: {args.n}")
    print(f"{'measure':34s} {'p50 ms':>8s} {'p90 ms':>8s}")
    for name, p50, p90 in rows:
        print(f"{name:34s} {p50:8.2f} {p90:8.2f}")
    print(f"{'throughput, ' + str(cores) + ' concurrent callers':34s} {total / wall:8.0f} exec/s")
    speedups = f"{rows[3][1] / rows[0][1]:8.1f}x trivial, {rows[4][1] / rows[1][1]:.1f}x numpy"
    print(f"{'speed-up vs fresh python -c (p50)':34s} {speedups}")


if __name__ == "__main__":
    main()
