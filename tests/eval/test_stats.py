"""pass@k, pass^k and bootstrap intervals against values computed by hand and by brute force."""

import itertools
import math
import random

import pytest

from agentrl.eval.stats import (
    bootstrap_ci,
    mean_with_ci,
    newcombe_paired_interval,
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
    ("table", "expected"),
    [  # Newcombe (1998), paired method 10: (both, first only, second only, neither) -> 95% interval
        ((36, 12, 2, 0), (0.0569, 0.3404)),
        ((18, 12, 2, 18), (0.0562, 0.3290)),
        ((53, 0, 0, 1), (-0.0729, 0.0729)),
    ],
)
def test_newcombe_paired_interval_reproduces_the_published_values(table, expected):
    assert newcombe_paired_interval(*table) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("before", "after", "difference"),
    [(0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (1.0, 0.0, -1.0)],
)
def test_paired_difference_never_collapses_when_every_pair_agrees(before, after, difference):
    n = 200
    d = paired_difference({f"t{i}": before for i in range(n)}, {f"t{i}": after for i in range(n)})
    assert d["difference"] == difference and d["ci_method"] == "newcombe paired score"
    assert d["ci95_low"] <= difference <= d["ci95_high"] and d["ci95_low"] < d["ci95_high"]
    assert d["ci95_low"] >= -1.0 and d["ci95_high"] <= 1.0
    # The interval shrinks as evidence grows.
    few = paired_difference({"a": before, "b": before}, {"a": after, "b": after})
    assert few["ci95_high"] - few["ci95_low"] > d["ci95_high"] - d["ci95_low"]


def test_one_sided_discordance_does_not_rule_out_the_other_side():
    # 1 task of 50 improves, none regresses: a paired bootstrap says [0, +6] points, as if a
    # regression were impossible; the score interval leaves room for one it has not seen.
    before = {f"t{i}": 0.0 for i in range(50)}
    after = {**before, "t0": 1.0}
    d = paired_difference(before, after)
    assert d["difference"] == pytest.approx(0.02) and d["ci95_low"] < 0 < d["ci95_high"]
    assert bootstrap_ci([after[k] - before[k] for k in before])[0] == 0.0  # what the bootstrap would claim


def test_non_binary_values_keep_the_bootstrap():
    before = {f"t{i}": (i % 4) / 4 for i in range(40)}  # per-task success fractions of 4 samples
    after = {k: min(1.0, v + 0.25 * (int(k[1:]) % 2)) for k, v in before.items()}
    d = paired_difference(before, after)
    assert d["ci_method"] == "paired bootstrap" and d["ci95_low"] <= d["difference"] <= d["ci95_high"]
    assert mean_with_ci([0.5, 0.25, 1.0])["ci_method"] == "bootstrap"
    same = mean_with_ci([0.75] * 40)  # every task 3 of 4: the bootstrap would show no spread
    assert same["ci_method"] == "wilson" and same["ci95_low"] < 0.75 < same["ci95_high"]


def test_paired_difference_interval():
    before = {f"t{i}": float(i % 2 == 0) for i in range(100)}
    after = {k: 1.0 if v else float(int(k[1:]) % 4 == 1) for k, v in before.items()}  # +25 points
    d = paired_difference(before, after)
    assert d["difference"] == pytest.approx(0.25) and d["n"] == 100
    assert 0.1 < d["ci95_low"] < 0.25 < d["ci95_high"] < 0.4
