"""Statistics of an evaluation: pass@k, pass^k and bootstrap confidence intervals.

With ``n`` samples of a task of which ``c`` succeeded:

* ``pass@k`` is the chance that at least one of ``k`` samples drawn without replacement succeeds,
  ``1 - C(n-c, k) / C(n, k)``. Averaged over tasks it is the unbiased estimator of the Codex paper;
  the naive ``1 - (1 - c/n)**k`` is biased low.
* ``pass^k`` is the chance that all ``k`` succeed, ``C(c, k) / C(n, k)``: how *reliably* a model
  solves a task, which matters for agents that run many times.

Intervals:

* A rate of binary outcomes (one greedy episode per task succeeds or not) gets the Wilson score
  interval. Unlike the percentile bootstrap it does not collapse at 0/n or n/n: 200 successes out
  of 200 is reported as [98.1%, 100%], not [100%, 100%].
* Anything else (per-task means over several samples, rewards) gets the percentile bootstrap over
  tasks (the unit that was drawn from a population), never over samples of one task, with a fixed
  seed so that reports are reproducible.
* A paired difference (adapter minus base on the same tasks) gets the paired bootstrap. When every
  pair agrees (every task's difference is the same value d) the bootstrap sees no variation and would
  report [d, d]. For 0/1 outcomes the honest statement is then exact: no discordant pair of the other
  kind was seen in n, so its rate is at most the one-sided 97.5% Clopper-Pearson bound
  ``u = 1 - 0.025 ** (1 / n)``, and the difference lies in ``[d - u, d + u]`` clipped to [-1, 1].
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: ``1 - C(n-c, k) / C(n, k)``."""
    _check(n, c, k)
    if n - c < k:
        return 1.0  # every draw of k samples contains a success
    # The product form avoids the huge binomials: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i).
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k for one task: the chance that ``k`` samples drawn without replacement all succeed."""
    _check(n, c, k)
    if c < k:
        return 0.0
    out = 1.0
    for i in range(k):
        out *= (c - i) / (n - i)
    return out


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k} with n={n} samples")


def bootstrap_ci(
    values: Sequence[float],
    *,
    statistic: Callable[[Sequence[float]], float] = statistics.fmean,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (one value per task)."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    stats = sorted(statistic(rng.choices(values, k=len(values))) for _ in range(resamples))
    alpha = (1.0 - level) / 2
    return stats[int(alpha * (resamples - 1))], stats[int((1.0 - alpha) * (resamples - 1))]


def wilson_interval(successes: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95% by default); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


def mean_with_ci(values: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95_low", "ci95_high", "n", "ci_method"}`` of per-task values: Wilson for 0/1 values,
    else the bootstrap over tasks."""
    if values and _binary(values):
        lo, hi = wilson_interval(sum(values), len(values))
        method = "wilson"
    else:
        lo, hi = bootstrap_ci(values, seed=seed)
        method = "bootstrap"
    mean = statistics.fmean(values) if values else 0.0
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi, "n": len(values), "ci_method": method}


def paired_difference(
    before: Mapping[str, float], after: Mapping[str, float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``after - before`` over the tasks both evaluated, with a paired bootstrap 95% CI.

    Pairing by task removes the between-task variance, so the interval is much tighter than the
    one of two independent success rates. When every pair agrees, see the module docstring.
    """
    common = sorted(set(before) & set(after))
    if not common:
        return {"difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "n": 0, "ci_method": "none"}
    diffs = [after[k] - before[k] for k in common]
    n, mean = len(diffs), statistics.fmean(diffs)
    if len(set(diffs)) == 1 and _binary([before[k] for k in common] + [after[k] for k in common]):
        u = 1.0 - 0.025 ** (1.0 / n)
        lo, hi, method = max(-1.0, mean - u), min(1.0, mean + u), "exact (every pair agrees)"
    else:
        lo, hi = bootstrap_ci(diffs, resamples=resamples, seed=seed)
        method = "paired bootstrap"
    return {"difference": mean, "ci95_low": lo, "ci95_high": hi, "n": n, "ci_method": method}
