"""pass@k, pass^k and bootstrap intervals against values computed by hand and by brute force."""

import itertools
import math
import random

import pytest

from agentrl.eval.stats import (
    bootstrap_ci,
    mean_with_ci,
    paired_difference,
    pass_at_k,
    pass_hat_k,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 1, 1.0),
        (10, 3, 1, 0.3),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (20, 5, 5, 1 - 3003 / 15504),  # 1 - C(15,5)/C(20,5)
        (10, 1, 10, 1.0),  # every draw of all 10 contains the one success
        (4, 3, 2, 1.0),  # n - c < k
        (200, 1, 100, 0.5),
    ],
)
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_combinatorial_definition_and_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                by_comb = 1 - math.comb(n - c, k) / math.comb(n, k)
                draws = list(itertools.combinations([1] * c + [0] * (n - c), k))
                by_enum = sum(any(d) for d in draws) / len(draws)
                assert pass_at_k(n, c, k) == pytest.approx(by_comb, abs=1e-12) == pytest.approx(by_enum, abs=1e-12)


def test_pass_at_k_is_not_the_biased_plug_in_estimate():
    # With n=5, c=2, k=2 the plug-in 1 - (1 - 2/5)^2 = 0.64 is below the unbiased 0.7.
    assert pass_at_k(5, 2, 2) > 1 - (1 - 2 / 5) ** 2


def test_pass_hat_k_known_values():
    assert pass_hat_k(5, 2, 2) == pytest.approx(0.1)  # C(2,2)/C(5,2)
    assert pass_hat_k(10, 7, 1) == pytest.approx(0.7)
    assert pass_hat_k(10, 10, 10) == 1.0
    assert pass_hat_k(10, 2, 3) == 0.0
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_hat_k(n, c, k) == pytest.approx(math.comb(c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_bad_arguments_are_refused(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError):
        pass_hat_k(n, c, k)


def test_bootstrap_interval_is_reproducible_and_covers_the_mean():
    rng = random.Random(1)
    values = [float(rng.random() < 0.3) for _ in range(400)]
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    mean = sum(values) / len(values)
    assert lo < mean < hi
    # The normal-approximation half-width for a proportion is 1.96 * sqrt(p(1-p)/n).
    half = 1.96 * math.sqrt(mean * (1 - mean) / len(values))
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
    narrow = bootstrap_ci(values * 4, seed=3)
    assert narrow[1] - narrow[0] < (hi - lo) * 0.7
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    assert mean_with_ci([]) == {"mean": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "n": 0, "ci_method": "bootstrap"}


def test_binary_rates_get_wilson_intervals_that_never_collapse():
    # Known values of the 95% Wilson score interval.
    assert wilson_interval(200, 200) == pytest.approx((0.98116, 1.0), abs=1e-5)
    assert wilson_interval(0, 200) == pytest.approx((0.0, 0.01884), abs=1e-5)
    assert wilson_interval(23, 200) == pytest.approx((0.07786, 0.16665), abs=1e-5)  # roots of (p̂-p)² = z²p(1-p)/n
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # mean_with_ci uses it for 0/1 values (one episode per task), the bootstrap otherwise.
    full = mean_with_ci([1.0] * 200)
    assert full["ci_method"] == "wilson" and full["ci95_low"] == pytest.approx(0.98116, abs=1e-5)
    assert full["ci95_high"] == 1.0 and full["mean"] == 1.0
    assert mean_with_ci([0.5, 0.25, 1.0])["ci_method"] == "bootstrap"


@pytest.mark.parametrize(
    ("before", "after", "difference"),
    [(0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (1.0, 0.0, -1.0)],
)
def test_paired_difference_when_every_pair_agrees_reports_exact_ends(before, after, difference):
    n = 200
    d = paired_difference({f"t{i}": before for i in range(n)}, {f"t{i}": after for i in range(n)})
    u = 1 - 0.025 ** (1 / n)  # one-sided 97.5% Clopper-Pearson bound for 0 events in n
    assert d["difference"] == difference and d["ci_method"].startswith("exact")
    assert d["ci95_low"] == pytest.approx(max(-1.0, difference - u))
    assert d["ci95_high"] == pytest.approx(min(1.0, difference + u))
    assert d["ci95_low"] < d["ci95_high"]  # never the degenerate [d, d]
    # The bound shrinks as evidence grows.
    wide = paired_difference({"a": before, "b": before}, {"a": after, "b": after})
    assert wide["ci95_high"] - wide["ci95_low"] > d["ci95_high"] - d["ci95_low"]


def test_paired_difference_interval():
    before = {f"t{i}": float(i % 2 == 0) for i in range(100)}
    after = {k: 1.0 if v else float(int(k[1:]) % 4 == 1) for k, v in before.items()}  # +25 points
    d = paired_difference(before, after)
    assert d["difference"] == pytest.approx(0.25) and d["n"] == 100
    assert 0.1 < d["ci95_low"] < 0.25 < d["ci95_high"] < 0.4
