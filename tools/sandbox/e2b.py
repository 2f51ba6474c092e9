"""``E2BSandbox``: the sandbox interface on E2B's remote microVMs, through ``e2b-code-interpreter``.

Each run or session gets its own remote sandbox, created with ``allow_internet_access=False`` and a
lifetime of at least the episode deadline. Creation is pooled and rate-limited to the plan's limits
(Hobby: 20 concurrent, 1 creation/s; Pro: 100 concurrent, 5/s), so a large rollout batch queues
instead of being refused.

Failures of E2B itself (authentication, rate limiting, network, a sandbox that vanished) come back
as ``infra_error``; only the code's own timeout is ``timed_out``. There is no silent fallback to
another backend: a missing package or API key is an error at construction.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from agentrl.tools.sandbox.base import (
    ExecError,
    ExecResult,
    FileMap,
    Isolation,
    Sandbox,
    SandboxError,
    Session,
    check_files,
)


@dataclass(frozen=True)
class Plan:
    max_concurrent: int
    creations_per_second: float


PLANS = {"hobby": Plan(20, 1.0), "pro": Plan(100, 5.0)}
WORKDIR = "/home/user/work"
STDIN_PATH = "/tmp/.agentrl-stdin"
SETUP_TIMEOUT = 10.0


def _import_e2b():
    try:
        import e2b
        import e2b_code_interpreter
    except ImportError:
        raise SandboxError("E2BSandbox needs the e2b-code-interpreter package: pip install 'agentrl[e2b]'") from None
    return e2b, e2b_code_interpreter


class _RateLimiter:
    """At most ``rate`` acquisitions per second, spaced evenly; thread-safe."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


class E2BSandbox(Sandbox):
    """Run code in E2B microVMs (isolation: strong). Needs ``E2B_API_KEY`` or ``api_key=``."""

    backend = "e2b"
    isolation = Isolation.STRONG

    def __init__(
        self,
        *,
        api_key: str | None = None,
        template: str | None = None,
        plan: str = "hobby",
        max_concurrent: int | None = None,
        creations_per_second: float | None = None,
        timeout: float = 10.0,
        episode_deadline: float = 600.0,
        max_output_bytes: int = 64 * 1024,
        request_timeout: float = 30.0,
    ):
        self._e2b, self._ci = _import_e2b()
        self.api_key = api_key or os.environ.get("E2B_API_KEY")
        if not self.api_key:
            raise SandboxError(
                "E2B_API_KEY is not set; export it or pass api_key= (E2BSandbox never falls back to another backend)"
            )
        if plan not in PLANS:
            raise ValueError(f"plan must be one of {sorted(PLANS)}, got {plan!r}")
        limits = PLANS[plan]
        self.template = template
        self.timeout = timeout
        # The remote VM must outlive the longest episode that may use it, plus setup slack.
        self.lifetime = int(max(episode_deadline, timeout) + 60)
        self.max_output_bytes = max_output_bytes
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_concurrent or limits.max_concurrent)
        self._rate = _RateLimiter(creations_per_second or limits.creations_per_second)
        self._live: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False

    # ----- remote sandbox lifecycle ----------------------------------------------------------
    def _create(self) -> Any:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        self._slots.acquire()
        try:
            self._rate.acquire()
            remote = self._ci.Sandbox.create(
                template=self.template,
                timeout=self.lifetime,
                api_key=self.api_key,
                allow_internet_access=False,
                request_timeout=self.request_timeout,
            )
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._live.add(remote)
        return remote

    def _destroy(self, remote: Any) -> None:
        with self._lock:
            if remote not in self._live:
                return
            self._live.discard(remote)
        try:
            remote.kill()
        except Exception:
            pass  # it expires on its own at the end of its lifetime
        finally:
            self._slots.release()

    # ----- execution -------------------------------------------------------------------------
    def _execute(
        self,
        remote: Any,
        code: str,
        timeout: float,
        files: FileMap | None,
        stdin: str | bytes | None,
        context: Any = None,
        session: bool = False,
    ) -> ExecResult:
        start = time.monotonic()
        checked = check_files(files)
        for rel, content in checked.items():
            remote.files.write(f"{WORKDIR}/{rel}", content)
        prelude = f"import os as __os\n__os.makedirs({WORKDIR!r}, exist_ok=True)\n__os.chdir({WORKDIR!r})\n"
        if stdin:
            remote.files.write(STDIN_PATH, stdin.encode() if isinstance(stdin, str) else bytes(stdin))
            # The kernel's input() ignores sys.stdin (the frontend refuses input requests): rebind both.
            prelude += (
                f"import sys as __sys, builtins as __b\n__sys.stdin = open({STDIN_PATH!r})\n"
                "def __input(prompt=''):\n"
                "    line = __sys.stdin.readline()\n"
                "    if not line:\n"
                "        raise EOFError('EOF when reading a line')\n"
                "    return line.rstrip('\\n')\n"
                "__b.input = __input\n"
            )
        setup_timeout = min(timeout, SETUP_TIMEOUT)  # the setup cell must not double the code's time budget
        remote.run_code(prelude, context=context, timeout=setup_timeout, request_timeout=self.request_timeout)
        try:
            execution = remote.run_code(code, context=context, timeout=timeout, request_timeout=self.request_timeout)
        except self._e2b.TimeoutException as exc:
            if "Execution timed out" in str(exc):
                return ExecResult(timed_out=True, exit_code=None, duration_ms=_ms(start), backend=self.backend)
            raise
        return self._convert(execution, start, want_result=context is not None or session)

    def _convert(self, execution: Any, start: float, want_result: bool) -> ExecResult:
        cap = self.max_output_bytes
        err = execution.error
        exit_code = 1 if err else 0
        if err is not None and err.name == "SystemExit":
            # The kernel reports sys.exit() as an error; give it the exit status a process would have.
            value = (err.value or "").strip()
            exit_code = 0 if value in ("", "None", "0") else int(value) if value.lstrip("-").isdigit() else 1
            err = None
        main = next((r for r in execution.results if getattr(r, "is_main_result", False)), None)
        return ExecResult(
            stdout=_cap("".join(execution.logs.stdout), cap),
            stderr=_cap("".join(execution.logs.stderr), cap),
            exit_code=exit_code,
            error=ExecError(err.name, err.value, err.traceback) if err else None,
            duration_ms=_ms(start),
            backend=self.backend,
            result=getattr(main, "text", None) if want_result and main is not None else None,
        )

    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        remote = None
        try:
            remote = self._create()
            return self._execute(remote, code, timeout, files, stdin)
        except (SandboxError, ValueError):
            raise
        except Exception as exc:  # E2B's own failures: the code's outcome is unknown
            return ExecResult(
                infra_error=f"e2b: {type(exc).__name__}: {exc}",
                exit_code=None,
                duration_ms=_ms(start),
                backend=self.backend,
            )
        finally:
            if remote is not None:
                self._destroy(remote)

    def session(self) -> E2BSession:
        return E2BSession(self)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            live = list(self._live)
        for remote in live:
            self._destroy(remote)


class E2BSession(Session):
    """A stateful Jupyter kernel in one remote sandbox. A timed-out cell kills the sandbox: state is lost."""

    def __init__(self, owner: E2BSandbox):
        self.owner = owner
        self.remote: Any = None
        self.closed = False

    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        if self.closed:
            raise SandboxError("the session is closed")
        timeout = self.owner.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            if self.remote is None:
                self.remote = self.owner._create()
            res = self.owner._execute(self.remote, code, timeout, files, stdin, session=True)
        except SandboxError:
            raise
        except Exception as exc:
            self._drop()
            return ExecResult(
                infra_error=f"e2b: {type(exc).__name__}: {exc}",
                state_lost=True,
                exit_code=None,
                duration_ms=_ms(start),
                backend="e2b",
            )
        if res.timed_out:
            self._drop()
            res.state_lost = True
        return res

    def _drop(self) -> None:
        remote, self.remote = self.remote, None
        if remote is not None:
            self.owner._destroy(remote)

    def close(self) -> None:
        self.closed = True
        self._drop()


def _cap(text: str, cap: int) -> str:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= cap:
        return text
    return data[:cap].decode("utf-8", errors="ignore") + f"\n...[truncated {len(data) - cap} bytes]"


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000
