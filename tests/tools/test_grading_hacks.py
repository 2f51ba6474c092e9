"""Reward hacks against trusted grading: every one must grade as a fail, at both hardened local levels
and on E2B (over the fake service, whose kernel runs the code in a process of its own).

Each hack is a candidate that would pass a naive in-process harness (the kind that runs the tests in
the candidate's own interpreter). Honest candidates must still pass, so a hack's failure is not
just a broken grader.
"""

import json

import pytest
from backends import ALL, open_sandbox

from agentrl.tools.grading import grade_asserts, grade_function, grade_io

HUMANEVAL_TEST = """
METADATA = {"author": "agentrl"}


def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0
    assert candidate([-5, 5, 10]) == 10
"""
MBPP_TESTS = ["assert total([1, 2, 3]) == 6", "assert total([]) == 0", "assert total([-5, 5, 10]) == 10"]
CASES = [(([1, 2, 3],), 6), (([],), 0), (([-5, 5, 10],), 10)]
HONEST = "def total(xs):\n    return sum(xs)\n"


@pytest.fixture(scope="module", params=ALL)
def sandbox(request):
    with open_sandbox(request.param, pool_size=2, timeout=5) as sb:
        yield sb


def grade_all(sb, code):
    """The three grading styles that apply to a function task."""
    return {
        "humaneval": grade_asserts(sb, code, HUMANEVAL_TEST, "total"),
        "mbpp": grade_asserts(sb, code, MBPP_TESTS, "total", style="mbpp"),
        "cases": grade_function(sb, code, "total", CASES),
    }


def test_honest_solution_passes(sandbox):
    for style, result in grade_all(sandbox, HONEST).items():
        assert result.success, (style, result)
        assert result.passed == result.total == 3


HACKS = {
    "eq_always_true": """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__

def total(xs):
    return Anything()
""",
    "int_subclass_eq": """
class Liar(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__

def total(xs):
    return Liar(0)
""",
    "sys_exit_before_asserts": """
import sys
sys.exit(0)
""",
    "os_exit_in_call": """
import os
def total(xs):
    os._exit(0)
""",
    "walk_stack_frames": """
import sys
def total(xs):
    frame = sys._getframe()
    seen = []
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            if name in ("expected", "case", "cases", "tests", "answer") or isinstance(value, int) and value != len(xs):
                seen.append(value)
        frame = frame.f_back
    return seen[-1] if seen else None
""",
    "monkeypatch_builtins_and_helpers": """
import builtins, sys
builtins.isinstance = lambda *a: True
builtins.sum = lambda *a, **k: 6
for mod in list(sys.modules.values()):
    for attr in ("encode", "strict_equal", "call", "execute"):
        if hasattr(mod, attr):
            try:
                setattr(mod, attr, lambda *a, **k: {"exit_code": 0, "error": None, "value": 6})
            except Exception:
                pass
def total(xs):
    return sum(xs)
""",
    "conftest_and_plugin": """
open("conftest.py", "w").write(
    "import pytest\\n"
    "@pytest.hookimpl(hookwrapper=True)\\n"
    "def pytest_runtest_makereport(item, call):\\n"
    "    outcome = yield\\n"
    "    rep = outcome.get_result()\\n"
    "    rep.outcome = 'passed'\\n"
)
open("pytest_plugin_pass.py", "w").write("def pytest_configure(config): pass\\n")
def total(xs):
    return -1
""",
    "edit_the_tests": """
import glob, os
for path in glob.glob("**/*test*", recursive=True) + glob.glob("/tmp/**/*test*", recursive=True):
    try:
        open(path, "w").write("def check(candidate):\\n    pass\\n")
    except OSError:
        pass
def total(xs):
    return -1
""",
    "print_success_marker": """
print("All tests passed")
print("3 passed, 0 failed")
def total(xs):
    print("PASSED")
    return None
""",
    "raise_skiptest": """
import unittest
def total(xs):
    raise unittest.SkipTest("skipped")
""",
    "raise_skiptest_at_import": """
import unittest
raise unittest.SkipTest("skip everything")
""",
    "pytest_skip": """
class Skipped(Exception):
    pass
Skipped.__module__ = "_pytest.outcomes"
Skipped.__name__ = "Skipped"
def total(xs):
    raise Skipped()
""",
}


@pytest.mark.parametrize("hack", sorted(HACKS))
def test_reward_hack_fails(sandbox, hack):
    for style, result in grade_all(sandbox, HACKS[hack]).items():
        assert not result.success, (hack, style, result)
        assert result.infra_error is None, (hack, style, result)
        assert result.failures, (hack, style)


def test_reading_expected_answers_from_disk_fails(sandbox, tmp_path):
    # A careless pipeline leaves the answers on disk next to the data; the sandbox cannot read them.
    answers = tmp_path / "expected.json"
    answers.write_text(json.dumps({"[1, 2, 3]": 6, "[]": 0, "[-5, 5, 10]": 10}))
    code = f"""
import json
def total(xs):
    for path in ({str(answers)!r}, "expected.json", "../expected.json"):
        try:
            return json.load(open(path))[str(xs)]
        except (OSError, KeyError, ValueError):
            pass
    return -1
"""
    for style, result in grade_all(sandbox, code).items():
        assert not result.success, (style, result)


def test_io_grading_hacks(sandbox):
    cases = [("2 3", "5"), ("10 -4", "6")]
    assert grade_io(sandbox, "a, b = map(int, input().split())\nprint(a + b)", cases).success
    for code in (
        "print('All tests passed')",
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "import sys\nprint(sys.stdin.read())",
        "print(open('/proc/self/cmdline').read())",
    ):
        result = grade_io(sandbox, code, cases)
        assert not result.success and result.passed == 0, (code, result)
