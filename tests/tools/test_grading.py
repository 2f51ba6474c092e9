"""Grading semantics: counting, strictness, infra errors, on every backend. Hacks are in test_grading_hacks.py."""

import pytest
from backends import open_sandbox

from agentrl.tools.grading import GradeResult, grade_asserts, grade_function, grade_io
from agentrl.tools.sandbox.base import ExecResult


@pytest.fixture(scope="module", params=["local", "e2b"])
def sb(request):
    """The same grading, through the local sandbox and through E2B (over the fake service)."""
    with open_sandbox("auto" if request.param == "local" else "e2b", pool_size=1) as s:
        yield s


def test_humaneval_counts_every_executed_assert(sb):
    test = "def check(candidate):\n    for i in range(4):\n        assert candidate(i) == i * 2\n    assert True\n"
    ok = grade_asserts(sb, "def f(x):\n    return 2 * x\n", test, "f")
    assert (ok.passed, ok.total, ok.success) == (5, 5, True)
    half = grade_asserts(sb, "def f(x):\n    return 2 * x if x < 2 else 0\n", test, "f")
    assert not half.success and half.passed == 2 and half.total == 3  # stops at the first failure
    assert grade_asserts(sb, "def f(x):\n    return x\n", "def check(candidate):\n    pass\n", "f").failures == [
        "the tests executed no assert"
    ]


def test_humaneval_tests_with_helpers_and_tolerances(sb):
    test = (
        "import math\n"
        "def check(candidate):\n"
        "    assert abs(candidate(2) - math.sqrt(2)) < 1e-6\n"
        "    assert math.isclose(candidate(9), 3.0)\n"
    )
    assert grade_asserts(sb, "def r(x):\n    return x ** 0.5\n", test, "r").success


def test_mbpp_needs_every_statement(sb):
    tests = ["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(-1) == 1"]
    assert grade_asserts(sb, "def sq(x):\n    return x * x\n", tests, "sq", style="mbpp").success
    bad = grade_asserts(sb, "def sq(x):\n    return x * x if x > 0 else 0\n", tests, "sq", style="mbpp")
    assert (bad.passed, bad.total, bad.success) == (2, 3, False)


def test_function_cases_are_type_strict(sb):
    code = "def f(x):\n    return [x, x]\n"
    assert grade_function(sb, code, "f", [((1,), [1, 1])]).success
    assert not grade_function(sb, code, "f", [((1,), (1, 1))]).success  # a list is not a tuple
    assert not grade_function(sb, "def f(x):\n    return True\n", "f", [((1,), 1)]).success


def test_candidate_timeouts_fail(sb):
    code = "def f(x):\n    while True:\n        pass\n"
    res = grade_function(sb, code, "f", [((1,), 1)], timeout=0.5)
    assert not res.success and "timed out" in res.failures[0]


def test_syntax_error_fails_cleanly(sb):
    for style_tests in (("humaneval", "def check(c):\n    assert c(1) == 1\n"), ("mbpp", ["assert f(1) == 1"])):
        res = grade_asserts(sb, "def f(x) return x", style_tests[1], "f", style=style_tests[0])
        assert not res.success and "SyntaxError" in res.failures[0]


def test_io_compares_tokens(sb):
    assert grade_io(sb, "print(' 1  2 ')", [("", "1 2\n")]).success
    res = grade_io(sb, "import sys\nsys.exit(4)", [("", "")])
    assert not res.success and "exited with 4" in res.failures[0]


def test_sandbox_failure_is_infra_not_a_fail():
    class Down:
        def run(self, *a, **k):
            return ExecResult(infra_error="backend down", exit_code=None)

        def session(self):
            return DownSession()

    class DownSession:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def run(self, *a, **k):
            return ExecResult(infra_error="backend down", exit_code=None)

    for res in (
        grade_io(Down(), "print(1)", [("", "1")]),
        grade_function(Down(), "def f(): pass", "f", [((), None)]),
        grade_asserts(Down(), "def f(): pass", "def check(c):\n    assert c() is None\n", "f"),
    ):
        assert res.infra_error == "backend down" and not res.success


def test_grade_result_score():
    assert GradeResult(3, 4).score == 0.75 and not GradeResult(3, 4).success
    assert GradeResult(0, 0).score == 0.0 and not GradeResult(0, 0).success
