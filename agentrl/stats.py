"""Statistics of an evaluation: pass@k, pass^k and bootstrap confidence intervals.

With ``n`` samples of a task of which ``c`` succeeded:

* ``pass@k`` is the chance that at least one of ``k`` samples drawn without replacement succeeds,
  ``1 - C(n-c, k) / C(n, k)``. Averaged over tasks it is the unbiased estimator of the Codex paper;
  the naive ``1 - (1 - c/n)**k`` is biased low.
* ``pass^k`` is the chance that all ``k`` succeed, ``C(c, k) / C(n, k)``: how *reliably* a model
  solves a task, which matters for agents that run many times.

Confidence intervals resample tasks (the unit that was drawn from a population), never samples of
one task, and use the percentile bootstrap with a fixed seed so that reports are reproducible.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping, Sequence


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


def mean_with_ci(values: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """``{"mean", "ci95_low", "ci95_high", "n"}`` of per-task values."""
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": statistics.fmean(values) if values else 0.0, "ci95_low": lo, "ci95_high": hi, "n": len(values)}


def paired_difference(
    before: Mapping[str, float], after: Mapping[str, float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``after - before`` over the tasks both evaluated, with a paired bootstrap 95% CI.

    Pairing by task removes the between-task variance, so the interval is much tighter than the
    one of two independent success rates.
    """
    common = sorted(set(before) & set(after))
    if not common:
        return {"difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "n": 0}
    diffs = [after[k] - before[k] for k in common]
    lo, hi = bootstrap_ci(diffs, resamples=resamples, seed=seed)
    return {"difference": statistics.fmean(diffs), "ci95_low": lo, "ci95_high": hi, "n": len(common)}
