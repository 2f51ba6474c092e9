"""``E2BSandbox``: the sandbox interface on E2B's remote microVMs, through ``e2b-code-interpreter``.

Each run or session gets its own remote sandbox, created with ``allow_internet_access=False`` and a
lifetime of at least the episode deadline. Creation is pooled and rate-limited to the plan's limits
(Hobby: 20 concurrent, 1 creation/s; Pro: 100 concurrent, 5/s), so a large rollout batch queues
instead of being refused.

Failures of E2B itself (authentication, rate limiting, network, a sandbox that vanished) come back
as ``infra_error``; only the code's own timeout is ``timed_out``. There is no silent fallback to
another backend: a missing package or API key is an error at construction.

What the code can do to the client is bounded here, as in :class:`LocalSandbox`: its output is kept
up to ``max_output_bytes`` and the sandbox is killed once it has printed 16 times that (so a print
loop cannot fill the trainer's memory), and output printed before a timeout still comes back. A
kernel that dies (``os._exit``, the VM's out-of-memory killer) is reported by E2B as
``ContextRestarting``: that is the code's failure with its state lost, not an infrastructure one.

:meth:`E2BSession.call` runs a function the session defined on strictly encoded arguments, for
trusted grading: arguments go in as base64 of JSON, the answer comes back the same way as the
cell's result text, and the trusted side only ever parses it with ``base64`` and ``json``.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from agentrl.tools.sandbox import plain
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
from agentrl.tools.sandbox.plain import decode, encode


@dataclass(frozen=True)
class Plan:
    max_concurrent: int
    creations_per_second: float


PLANS = {"hobby": Plan(20, 1.0), "pro": Plan(100, 5.0)}
WORKDIR = "/home/user/work"
STDIN_PATH = "/tmp/.agentrl-stdin"
SETUP_TIMEOUT = 10.0
HARD_OUTPUT_FACTOR = 16  # kill a sandbox whose output exceeds this many times the cap, as the local server does
MAX_CALL_RECORD = 1 << 20  # the largest answer a call may send back, as for a local worker's result record
KERNEL_RESTARTED = "ContextRestarting"  # E2B's error when the kernel died during a cell


# The kernel answers input() with StdinNotImplementedError (the frontend refuses input requests), and
# ipykernel puts its own input back into builtins before every cell, so rebinding builtins.input in the
# setup cell would not last: a global named ``input`` in the user namespace does, and name lookup finds
# it before the builtin. It reads sys.stdin and echoes the prompt to stdout, as CPython's does off a tty.
_STDIN_INPUT = """def input(prompt=''):
    import sys
    if prompt:
        sys.stdout.write(str(prompt))
    line = sys.stdin.readline()
    if not line:
        raise EOFError('EOF when reading a line')
    return line[:-1] if line.endswith('\\n') else line
input.agentrl_stdin = True
"""
_NO_STDIN = """if getattr(globals().get('input'), 'agentrl_stdin', False):
    import io as __io, sys as __sys
    __sys.stdin = __io.StringIO('')
"""


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


class _OutputFlood(Exception):
    """Raised from the SDK's output callback to stop reading a cell that prints without end."""


class _Output:
    """The first ``cap`` bytes of a stream, a count of the rest, and a hard limit on the total."""

    def __init__(self, cap: int):
        self.cap, self.data, self.total = cap, bytearray(), 0

    def feed(self, text: str) -> None:
        # surrogatepass: a lone surrogate from the kernel becomes bytes that decode to U+FFFD, so the
        # text handed on is always valid Unicode (as the local server's decoding of raw bytes makes it).
        chunk = text.encode("utf-8", "surrogatepass")
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if self.total > self.cap * HARD_OUTPUT_FACTOR:
            raise _OutputFlood(f"output exceeded {self.cap * HARD_OUTPUT_FACTOR} bytes; the sandbox was stopped")

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        dropped = self.total - len(self.data)
        return out + (f"\n...[truncated {dropped} bytes]" if dropped else "")


@dataclass
class _Cell:
    """What one cell produced, before it is turned into an ExecResult or a call response."""

    out: _Output
    err: _Output
    start: float
    execution: Any = None
    timed_out: bool = False
    flood: str | None = None

    @property
    def error(self) -> Any:
        return None if self.execution is None else self.execution.error

    @property
    def restarted(self) -> bool:
        return self.error is not None and self.error.name == KERNEL_RESTARTED


def _remote_call(ns: dict, name: str, args_b64: str, limit: int) -> str:
    """Runs *inside* the remote kernel (shipped as source, next to :mod:`plain`'s).

    Calls ``ns[name]`` on the decoded arguments and returns the record as base64 of JSON, which is
    what the cell's result text carries back; a record over ``limit`` bytes becomes an error, as a
    local worker's does. Like a local worker's record, it only ever describes
    what the code did; the code can forge it, and forging it is no better than returning the value.
    """
    import base64
    import json
    import traceback

    ns.pop("__agentrl_call__", None)
    record: dict = {"exit_code": 0, "error": None, "value": None}

    def text(x: object) -> str:
        try:
            return str(x)
        except BaseException:  # a hostile __str__ must not break reporting
            return f"<unprintable {type(x).__name__}>"

    try:
        args = decode(json.loads(base64.b64decode(args_b64)))
        record["value"] = encode(ns[name](*args))
    except SystemExit as exc:
        code = exc.code
        record["exit_code"] = 0 if code is None else code & 0xFF if type(code) is int else 1
        record["error"] = {"name": "SystemExit", "value": text(code), "traceback": ""}
    except BaseException as exc:
        try:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))[-8000:]
        except BaseException:
            tb = ""
        record["exit_code"] = 1
        record["error"] = {"name": type(exc).__name__, "value": text(exc), "traceback": tb}
    try:
        data = json.dumps(record, allow_nan=False)
    except (TypeError, ValueError):
        data = json.dumps({"exit_code": 1, "error": {"name": "ReportError", "value": "unserialisable"}})
    if len(data) > limit:
        data = json.dumps({"exit_code": 1, "error": {"name": "ReportError", "value": "the value is too large"}})
    return base64.b64encode(data.encode()).decode()


# The call helper's source: the strict codec, then the function above, run in a module of their own.
_CALL_HELPER = base64.b64encode(
    (inspect.getsource(plain) + "\n\n" + inspect.getsource(_remote_call) + "\ncall = _remote_call\n").encode()
).decode()


def _call_cell(name: str, args: Any) -> str:
    """The cell that calls ``name(*args)``: the helper and the arguments go in as base64 literals, and the
    name must be an identifier, so nothing in the cell needs quoting."""
    if not name.isidentifier():
        raise ValueError(f"function name {name!r} is not an identifier")
    args_b64 = base64.b64encode(json.dumps(args, allow_nan=False).encode()).decode()
    return (
        "import base64 as __agentrl_b64, types as __agentrl_types\n"
        "__agentrl_call__ = __agentrl_types.ModuleType('agentrl_call')\n"
        f"exec(__agentrl_b64.b64decode('{_CALL_HELPER}').decode(), __agentrl_call__.__dict__)\n"
        "del __agentrl_b64, __agentrl_types\n"
        f"__agentrl_call__.call(globals(), '{name}', '{args_b64}', {MAX_CALL_RECORD})\n"
    )


def _parse_record(text: Any) -> dict[str, Any]:
    """The call record from the cell's result text: base64, then JSON, then a shape check. Nothing is
    evaluated; anything else is a malformed answer (the code's failure)."""
    if type(text) is not str or len(text) > MAX_CALL_RECORD * 4 // 3 + 4:
        raise ValueError("no call record, or one that is too large")
    try:
        record = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise ValueError("the call record is not base64 of JSON") from None
    if type(record) is not dict:
        raise ValueError("the call record is not an object")
    err = record.get("error")
    if err is not None and not (type(err) is dict and all(type(err.get(k, "")) is str for k in ("name", "value"))):
        raise ValueError("the call record's error is malformed")
    return record


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
    def _cell(self, remote: Any, code: str, timeout: float) -> _Cell:
        """Run one cell. The code's timeout and an output flood are recorded; E2B's failures raise."""
        cell = _Cell(_Output(self.max_output_bytes), _Output(self.max_output_bytes), time.monotonic())
        try:
            cell.execution = remote.run_code(
                code,
                timeout=timeout,
                request_timeout=self.request_timeout,
                on_stdout=lambda m: cell.out.feed(m.line),
                on_stderr=lambda m: cell.err.feed(m.line),
            )
        except self._e2b.TimeoutException as exc:
            if "Execution timed out" not in str(exc):
                raise
            cell.timed_out = True
        except _OutputFlood as exc:
            cell.flood = str(exc)
        return cell

    def _execute(
        self,
        remote: Any,
        code: str,
        timeout: float,
        files: FileMap | None,
        stdin: str | bytes | None,
        session: bool = False,
        ran_code: bool = False,
    ) -> tuple[ExecResult, _Cell]:
        """Set up the working directory and stdin, then run ``code``. ``ran_code``: this kernel has run
        the code's cells before, so whatever state it is in is the code's doing."""
        checked = check_files(files)
        for rel, content in checked.items():
            remote.files.write(f"{WORKDIR}/{rel}", content)
        prelude = f"import os as __os\n__os.makedirs({WORKDIR!r}, exist_ok=True)\n__os.chdir({WORKDIR!r})\n"
        if stdin:
            remote.files.write(STDIN_PATH, stdin.encode() if isinstance(stdin, str) else bytes(stdin))
            prelude += f"import sys as __sys\n__sys.stdin = open({STDIN_PATH!r})\n" + _STDIN_INPUT
        else:  # after a cell that had stdin, a cell without it reads an empty one, as a local worker does
            prelude += _NO_STDIN
        # The setup cell has its own budget: a cold kernel's first answer is E2B's latency, not the code's.
        setup = self._cell(remote, prelude, SETUP_TIMEOUT)
        if setup.timed_out:
            if not ran_code:
                raise TimeoutError(f"the sandbox's setup cell took longer than {SETUP_TIMEOUT:g} s")
            # Earlier cells of this session can stall the kernel (a patched import, a busy thread):
            # that is the code's doing, so it counts as the code's timeout.
            return self._convert(setup, want_result=False), setup
        if setup.restarted:  # the kernel died between cells (a thread of the code's): its state is gone
            return self._convert(setup, want_result=False), setup
        cell = self._cell(remote, code, timeout)
        return self._convert(cell, want_result=session), cell

    def _convert(self, cell: _Cell, want_result: bool) -> ExecResult:
        res = ExecResult(stdout=cell.out.text(), stderr=cell.err.text(), duration_ms=_ms(cell.start))
        res.backend = self.backend
        if cell.timed_out:
            res.timed_out, res.exit_code = True, None
            return res
        if cell.flood:
            res.error, res.exit_code = ExecError("OutputLimitExceeded", cell.flood, ""), None
            return res
        execution = cell.execution
        err = execution.error
        res.exit_code = 1 if err else 0
        if err is not None and err.name == "SystemExit":
            # The kernel reports sys.exit() as an error; give it the exit status a process would have.
            value = (err.value or "").strip()
            res.exit_code = 0 if value in ("", "None", "0") else int(value) if value.lstrip("-").isdigit() else 1
            err = None
        if err is not None:
            res.error = ExecError(err.name, err.value, err.traceback)
        res.state_lost = cell.restarted
        main = next((r for r in execution.results if getattr(r, "is_main_result", False)), None)
        if want_result and main is not None:
            res.result = getattr(main, "text", None)
        return res

    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        remote = None
        try:
            remote = self._create()
            res, _ = self._execute(remote, code, timeout, files, stdin)
            res.state_lost = False  # a one-shot run has no state to lose
            return res
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
        self.ran_code = False  # the current remote kernel has run the code's cells
        self.closed = False
        self._lock = threading.Lock()  # cells of one session run one after another

    def _remote(self) -> Any:
        if self.closed:
            raise SandboxError("the session is closed")
        if self.remote is None:
            self.remote = self.owner._create()
        return self.remote

    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        timeout = self.owner.timeout if timeout is None else timeout
        start = time.monotonic()
        with self._lock:
            try:
                remote = self._remote()
                ran_code, self.ran_code = self.ran_code, True
                res, cell = self.owner._execute(remote, code, timeout, files, stdin, session=True, ran_code=ran_code)
            except (SandboxError, ValueError):
                raise
            except Exception as exc:
                self._drop()
                return ExecResult(
                    infra_error=f"e2b: {type(exc).__name__}: {exc}",
                    state_lost=True,
                    exit_code=None,
                    duration_ms=_ms(start),
                    backend=self.owner.backend,
                )
            if cell.timed_out or cell.flood:
                self._drop()  # the kernel may still be running it: only killing the VM stops it
                res.state_lost = True
            elif cell.restarted:
                self.ran_code = False  # a fresh kernel
            return res

    def call(self, name: str, args: Any, *, timeout: float | None = None) -> dict[str, Any]:
        """Call ``name(*args)`` in the kernel; the response has the keys that :meth:`Session.call` lists."""
        timeout = self.owner.timeout if timeout is None else timeout
        code = _call_cell(name, args)
        start = time.monotonic()
        with self._lock:
            try:
                remote = self._remote()
                self.ran_code = True
                cell = self.owner._cell(remote, code, timeout)
            except SandboxError:
                raise
            except Exception as exc:
                self._drop()
                return {"infra_error": f"e2b: {type(exc).__name__}: {exc}", "state_lost": True, "exit_code": None,
                        "duration_ms": _ms(start)}  # fmt: skip
            resp: dict[str, Any] = {
                "stdout": cell.out.text(),
                "stderr": cell.err.text(),
                "timed_out": cell.timed_out,
                "duration_ms": _ms(start),
                "exit_code": None,
                "error": None,
                "result": None,
                "value": None,
                "state_lost": False,
            }
            if cell.timed_out or cell.flood:
                self._drop()
                resp["state_lost"] = True
                if cell.flood:
                    resp["error"] = {"name": "OutputLimitExceeded", "value": cell.flood, "traceback": ""}
                return resp
            err = cell.error
            if err is not None:  # the cell failed around the call: a restarted kernel, a clobbered helper
                resp["exit_code"] = 1
                resp["error"] = {"name": err.name, "value": err.value, "traceback": err.traceback}
                resp["state_lost"] = cell.restarted
                self.ran_code = self.ran_code and not cell.restarted
                return resp
            main = next((r for r in cell.execution.results if getattr(r, "is_main_result", False)), None)
            try:
                record = _parse_record(getattr(main, "text", None))
            except ValueError as exc:
                resp["exit_code"] = 1
                resp["error"] = {"name": "BadCallRecord", "value": str(exc), "traceback": ""}
                return resp
            # Only what the code is allowed to report is taken from its record; timed_out, state_lost
            # and infra_error are this side's facts, so a forged record cannot claim an outage.
            resp["exit_code"] = record.get("exit_code") if type(record.get("exit_code")) is int else 1
            resp["error"] = record.get("error")
            resp["value"] = record.get("value")
            return resp

    def _drop(self) -> None:
        remote, self.remote = self.remote, None
        self.ran_code = False
        if remote is not None:
            self.owner._destroy(remote)

    def close(self) -> None:
        self.closed = True
        self._drop()


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000
