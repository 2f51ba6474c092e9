"""Trusted grading of model-written code.

The rule: expected answers and hidden tests never enter the sandbox. The candidate runs in the
sandbox; everything that decides pass or fail runs here, in the trusted process, on plain values.

* :func:`grade_io` runs a program once per case with the case's stdin and compares its stdout here.
* :func:`grade_function` calls the candidate's function on each case's arguments in a sandbox
  session (:meth:`Session.call`, on every backend); the return value crosses back through a strict
  codec (plain JSON-like types only, checked with ``type(x) is T``) and is compared here with
  :func:`strict_equal`.
* :func:`grade_asserts` runs assert-style tests (HumanEval's ``check(candidate)``, MBPP assert lists)
  *here*, with ``candidate`` bound to a proxy that forwards each call to the sandbox and returns
  decoded plain values. The asserts, and the literals they compare against, never leave this
  process. Each executed ``assert`` is counted; a pass needs every one to pass and none to fail.

Why this defeats the known hacks: an object whose ``__eq__`` always returns True cannot be encoded;
``sys.exit``/``os._exit``, ``SkipTest``, a ``conftest.py`` or a printed "PASSED" only change what the
candidate's own process does, and that process holds nothing to compare against; walking stack
frames finds no grader; the answers are not on any path the sandbox can read.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.tools.sandbox.base import Sandbox, Session
from agentrl.tools.sandbox.plain import NotPlain, decode, encode, strict_equal


@dataclass
class GradeResult:
    """Outcome of grading one candidate."""

    passed: int
    """Tests (cases or executed asserts) that passed."""
    total: int
    """Tests that had to pass."""
    failures: list[str] = field(default_factory=list)
    """One line per failure, for logs and feedback."""
    infra_error: str | None = None
    """The sandbox failed; the candidate's quality is unknown and the episode must not be scored."""

    @property
    def success(self) -> bool:
        return self.infra_error is None and self.total > 0 and self.passed == self.total and not self.failures

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0


class CandidateFailed(Exception):
    """The candidate's call raised, timed out, crashed or returned a non-plain value."""


class SandboxUnavailable(Exception):
    """The sandbox itself failed during grading."""


def normalise_output(text: str) -> list[str]:
    """Compare program output by whitespace-separated tokens, as most judges do."""
    return text.split()


def grade_io(sandbox: Sandbox, program: str, cases: Sequence[tuple[str, str]], *, timeout: float = 5.0) -> GradeResult:
    """Run ``program`` once per ``(stdin, expected_stdout)`` case; stdout must match token for token."""
    result = GradeResult(0, len(cases))
    for i, (stdin, expected) in enumerate(cases):
        res = sandbox.run(program, stdin=stdin, timeout=timeout)
        if res.infra_error:
            result.infra_error = res.infra_error
            return result
        if res.timed_out:
            result.failures.append(f"case {i}: timed out after {timeout:g} s")
        elif res.exit_code != 0 or res.error:
            result.failures.append(
                f"case {i}: exited with {res.exit_code}" + (f" ({res.error.name})" if res.error else "")
            )
        elif normalise_output(res.stdout) != normalise_output(expected):
            result.failures.append(f"case {i}: wrong output")
        else:
            result.passed += 1
    return result


class SandboxFunction:
    """Stands for the candidate's function in trusted test code; each call runs in the sandbox."""

    def __init__(self, session: Any, name: str, timeout: float):
        call = getattr(type(session), "call", None)
        if not callable(call) or call is Session.call:
            raise TypeError(f"{type(session).__name__} cannot call functions in the sandbox (it has no Session.call)")
        self.session, self.name, self.timeout = session, name, timeout
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        try:
            payload = encode(list(args))
        except NotPlain as exc:
            raise TypeError(f"test arguments must be plain values to cross into the sandbox: {exc}") from None
        resp = self.session.call(self.name, payload, timeout=self.timeout)
        if resp.get("infra_error"):
            raise SandboxUnavailable(resp["infra_error"])
        if resp.get("timed_out"):
            raise CandidateFailed(f"{self.name} timed out after {self.timeout:g} s")
        if resp.get("state_lost") or resp.get("error"):
            err = resp.get("error") or {}
            raise CandidateFailed(f"{self.name} raised {err.get('name')}: {str(err.get('value'))[:200]}")
        try:
            return decode(resp.get("value"))
        except ValueError as exc:
            raise CandidateFailed(f"{self.name} returned undecodable data: {exc}") from None


def _define(session: Any, code: str, timeout: float) -> str | None:
    """Run the candidate's code in the session; return why it failed, or None."""
    res = session.run(code, timeout=timeout)
    if res.infra_error:
        raise SandboxUnavailable(res.infra_error)
    if res.timed_out:
        return f"defining the solution timed out after {timeout:g} s"
    if res.error or res.state_lost or res.exit_code != 0:
        name = res.error.name if res.error else f"exit code {res.exit_code}"
        return f"defining the solution failed: {name}"
    return None


def grade_function(
    sandbox: Sandbox,
    code: str,
    entry_point: str,
    cases: Sequence[tuple[Sequence[Any], Any]],
    *,
    timeout: float = 5.0,
) -> GradeResult:
    """Call ``entry_point(*args)`` for each ``(args, expected)`` case; compare with :func:`strict_equal` here."""
    result = GradeResult(0, len(cases))
    with sandbox.session() as session:
        try:
            why = _define(session, code, timeout)
            if why:
                result.failures.append(why)
                return result
            fn = SandboxFunction(session, entry_point, timeout)
            for i, (args, expected) in enumerate(cases):
                try:
                    got = fn(*args)
                except CandidateFailed as exc:
                    result.failures.append(f"case {i}: {exc}")
                    continue
                if strict_equal(expected, got):
                    result.passed += 1
                else:
                    result.failures.append(f"case {i}: wrong value")
        except SandboxUnavailable as exc:
            result.infra_error = str(exc)
    return result


class _CountAsserts(ast.NodeTransformer):
    """Rewrite ``assert test, msg`` into a call that counts it before checking it."""

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        call = ast.Call(
            func=ast.Name("__agentrl_assert__", ast.Load()),
            args=[node.test, node.msg or ast.Constant(None)],
            keywords=[],
        )
        return ast.copy_location(ast.Expr(call), node)


class _AssertCounter:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def __call__(self, ok: Any, msg: Any = None) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            raise AssertionError(msg if msg is not None else "assertion failed")


def grade_asserts(
    sandbox: Sandbox,
    code: str,
    tests: str | Sequence[str],
    entry_point: str,
    *,
    style: str = "humaneval",
    timeout: float = 5.0,
) -> GradeResult:
    """Grade assert-style tests in this process against the candidate running in the sandbox.

    ``style="humaneval"``: ``tests`` is source defining ``check(candidate)``.
    ``style="mbpp"``: ``tests`` is a list of assert statements calling ``entry_point`` by name.
    """
    if style == "humaneval":
        source = tests if isinstance(tests, str) else "\n".join(tests)
        statements = [source]
    elif style == "mbpp":
        statements = [tests] if isinstance(tests, str) else list(tests)
    else:
        raise ValueError(f"style must be 'humaneval' or 'mbpp', got {style!r}")
    counter = _AssertCounter()
    result = GradeResult(0, len(statements) if style == "mbpp" else 0)
    with sandbox.session() as session:
        try:
            why = _define(session, code, timeout)
            if why:
                result.failures.append(why)
                result.total = max(result.total, 1)
                return result
            fn = SandboxFunction(session, entry_point, timeout)
            for i, stmt in enumerate(statements):
                tree = ast.fix_missing_locations(_CountAsserts().visit(ast.parse(stmt)))
                ns: dict[str, Any] = {"__agentrl_assert__": counter, entry_point: fn, "__name__": "grader"}
                passed_before, failed_before = counter.passed, counter.failed
                try:
                    exec(compile(tree, f"<tests {i}>", "exec"), ns)
                    if style == "humaneval":
                        ns["check"](fn)
                except SandboxUnavailable:
                    raise
                except Exception as exc:
                    if isinstance(exc, CandidateFailed):
                        result.failures.append(f"test {i}: {exc}")
                    else:
                        result.failures.append(f"test {i}: {type(exc).__name__} {str(exc)[:200]}".rstrip())
                    if counter.failed == failed_before:
                        counter.failed += 1  # the assert being evaluated did not complete: it failed
                else:
                    if style == "mbpp" and counter.passed > passed_before:
                        result.passed += 1
        except SandboxUnavailable as exc:
            result.infra_error = str(exc)
            return result
    if style == "humaneval":
        # Every executed assert is a test: all must pass, and check() must run to its end.
        result.passed, result.total = counter.passed, counter.passed + counter.failed
        if result.total == 0:
            result.failures.append("the tests executed no assert")
    return result
