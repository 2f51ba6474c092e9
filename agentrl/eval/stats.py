"""Statistics of an evaluation: pass@k, pass^k and bootstrap confidence intervals.

With ``n`` samples of a task of which ``c`` succeeded:

* ``pass@k`` is the chance that at least one of ``k`` samples drawn without replacement succeeds,
  ``1 - C(n-c, k) / C(n, k)``. Averaged over tasks it is the unbiased estimator of the Codex paper;
  the naive ``1 - (1 - c/n)**k`` is biased low.
* ``pass^k`` is the chance that all ``k`` succeed, ``C(c, k) / C(n, k)``: how *reliably* a model
  solves a task, which matters for agents that run many times.

Intervals (95%):

* A rate of 0/1 outcomes (one greedy episode per task succeeds or not) gets the Wilson score
  interval. Unlike the percentile bootstrap it does not collapse at 0/n or n/n: 200 successes out
  of 200 is reported as [98.1%, 100%], not [100%, 100%].
* Per-task values in [0, 1] that are all equal (every task solved in every sample, say) get the
  Wilson interval of their sum too: no variable on [0, 1] has more variance than a 0/1 one with the
  same mean, so it is the honest, conservative end where the bootstrap would show none.
* Anything else (per-task means over several samples, rewards) gets the percentile bootstrap over
  tasks (the unit that was drawn from a population), never over samples of one task, with a fixed
  seed so that reports are reproducible.
* A paired difference (adapter minus base on the same tasks) of 0/1 outcomes gets Newcombe's
  hybrid score interval for paired proportions (his method 10, 1998). The paired bootstrap cannot
  see a kind of discordant pair it never observed: 1 task of 50 improving and none regressing gives
  a bootstrap interval of [0, +6] points, as if a regression were impossible, and 200 of 200 pairs
  agreeing gives [0, 0]. Other paired values keep the paired bootstrap.
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
    """``{"mean", "ci95_low", "ci95_high", "n", "ci_method"}`` of per-task values (see the module doc)."""
    if values and (_binary(values) or (len(set(values)) == 1 and 0.0 <= values[0] <= 1.0)):
        lo, hi = wilson_interval(sum(values), len(values))
        method = "wilson"
    else:
        lo, hi = bootstrap_ci(values, seed=seed)
        method = "bootstrap"
    mean = statistics.fmean(values) if values else 0.0
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi, "n": len(values), "ci_method": method}


def newcombe_paired_interval(both: int, after_only: int, before_only: int, neither: int) -> tuple[float, float]:
    """95% interval of ``p_after - p_before`` from a paired 2x2 table: Newcombe's method 10 (1998).

    The Wilson intervals of the two marginal rates are combined with the correlation of the pairs,
    which Newcombe shrinks by n/2 when it is positive (as in his published examples).
    """
    a, b, c, d = both, after_only, before_only, neither
    n = a + b + c + d
    if n == 0:
        return (-1.0, 1.0)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n)
    l2, u2 = wilson_interval(a + c, n)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if denominator:
        association = a * d - b * c
        if association > 0:
            association = max(association - n / 2, 0.0)
        phi = association / math.sqrt(denominator)
    low = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, p1 - p2 - low), min(1.0, p1 - p2 + high)


def paired_difference(
    before: Mapping[str, float], after: Mapping[str, float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``after - before`` over the tasks both evaluated, with a 95% interval.

    Pairing by task removes the between-task variance, so the interval is much tighter than the
    one of two independent success rates. 0/1 outcomes get Newcombe's paired score interval, other
    values the paired bootstrap (see the module docstring).
    """
    common = sorted(set(before) & set(after))
    if not common:
        return {"difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "n": 0, "ci_method": "none"}
    diffs = [after[k] - before[k] for k in common]
    if _binary([before[k] for k in common] + [after[k] for k in common]):
        cells = [sum(1 for k in common if (before[k], after[k]) == cell) for cell in ((1, 1), (0, 1), (1, 0), (0, 0))]
        lo, hi = newcombe_paired_interval(*cells)
        method = "newcombe paired score"
    else:
        lo, hi = bootstrap_ci(diffs, resamples=resamples, seed=seed)
        method = "paired bootstrap" + (" (every pair agrees: no spread to resample)" if len(set(diffs)) == 1 else "")
    return {
        "difference": statistics.fmean(diffs),
        "ci95_low": lo,
        "ci95_high": hi,
        "n": len(diffs),
        "ci_method": method,
    }
