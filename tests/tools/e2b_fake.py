"""An in-process fake of the E2B service, for contract tests of ``E2BSandbox``.

Only the bottom of the SDK is replaced: the factories that hand the sync SDK its transports return an
``httpx.MockTransport`` whose handler is :class:`FakeE2B`. Everything above the transport runs for real:
request building, the ``X-API-KEY`` / ``X-Access-Token`` headers, the SDK's own retries of 429/5xx,
JSON parsing, the code interpreter's JSON-lines stream parser and its exception mapping.

What is patched (every module that imported the factory by name, found by identity in ``sys.modules``):

* ``get_transport`` (``e2b.api.client_sync``, ``e2b_code_interpreter.code_interpreter_sync``): the control
  plane (``get_api_client``: create, kill, set_timeout), envd's HTTP API (``get_envd_api``: files.write,
  /health) and the Jupyter endpoint (``Sandbox._client``: ``run_code`` -> ``POST /execute``);
* ``get_httpx_transport`` (``e2b.api.client_sync``, ``e2b.volume.client_sync``): same mock, for safety;
* ``get_pyqwest_transport`` (``e2b.api.client_sync``, ``e2b.envd.client_sync``): the envd Connect-RPC
  clients built at sandbox construction get a transport that refuses every call, so nothing can reach
  the network.

The service it fakes:

* control plane (``https://api.<domain>``): ``POST /v2/sandboxes`` (201, the real ``Sandbox`` JSON),
  ``DELETE /sandboxes/{id}`` (204/404), ``POST /sandboxes/{id}/timeout`` (204/404); wrong API key -> 401;
  optional plan limits (``concurrency_limit``, ``min_create_interval``) answered with 429 like E2B does;
* envd (port 49983, routed by the ``E2b-Sandbox-Id``/``E2b-Sandbox-Port`` headers or the host name):
  ``POST /files`` (multipart or octet-stream) and ``GET /health``; a killed sandbox answers 502
  "... was not found", like the edge proxy;
* the code interpreter (port 49999): ``POST /execute`` streams the same JSON lines as the real server
  (``number_of_executions``, ``stdout``/``stderr``, ``result`` with ``is_main_result``, ``error``).

Code runs in this process, in one persistent namespace per fake sandbox, on a worker thread, with
stdout/stderr captured through ``contextlib.redirect_stdout``/``redirect_stderr`` (installed once while
any cell runs and dispatched per thread). Like an IPython kernel: the last expression's repr is the main
``text/plain`` result (the server strips surrounding single quotes, so ``'ab'`` comes back as ``ab``);
``input()`` raises ``StdinNotImplementedError`` (the server sends ``allow_stdin: false``); ``sys.exit(n)``
is reported as an error ``SystemExit``/``n`` plus a ``UserWarning`` on stderr. Files live in a private
temporary directory per sandbox: inside the cell, ``open``, ``os`` (getcwd, chdir, makedirs, listdir, ...),
``os.path`` and ``sys.stdin`` are views of that directory, with a sandbox-like ``os.environ``.

Timeouts. The SDK raises ``TimeoutException("Execution timed out ...")`` on ``httpx.ReadTimeout``. The fake
raises ``httpx.ReadTimeout`` from the response stream when the cell has not finished by the request's
read deadline (``request.extensions["timeout"]["read"]``, which ``run_code`` sets to its ``timeout``),
taken as a whole-request deadline like the SDK's pyqwest transport. A cell misses it when:

* it contains the marker ``# hang`` (it then blocks until the sandbox is killed), or
* it sleeps (``time.sleep``, really, but interruptibly) or loops past the remaining time, or
* ``FakeE2B.exec_delay`` seconds of artificial latency push it past.

As in Jupyter, the kernel keeps running after the client gave up: later cells of that sandbox queue
behind it until the sandbox is killed (which interrupts sleeps, busy loops and hangs).

Failure injection: :meth:`FakeE2B.fail` answers an operation (``create``, ``kill``, ``set_timeout``,
``files``, ``execute``, ``health``) with an HTTP status or raises a transport exception such as
``httpx.ConnectError``; :meth:`FakeE2B.expire` makes a sandbox vanish as if its lifetime ran out.
"""

from __future__ import annotations

import builtins
import contextlib
import email.parser
import email.policy
import io
import json
import os
import posixpath
import queue
import re
import secrets
import shutil
import string
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

API_KEY = "e2b_" + "5eed" * 10
DOMAIN = "e2b.app"
ENVD_PORT = 49983
JUPYTER_PORT = 49999
ENVD_VERSION = "0.6.7"
HOME = "/home/user"

_END = object()
_KILLED = object()
_ID_CHARS = string.ascii_lowercase + string.digits


# ----- records -----------------------------------------------------------------------------------
@dataclass
class Request:
    """One request the SDK sent, as the fake received it."""

    op: str
    """create / kill / set_timeout / files / health / execute / other"""
    method: str
    url: str
    headers: dict[str, str]
    """Lower-case names."""
    content: bytes
    json: Any
    """The parsed JSON body, or None."""
    time: float
    """``time.monotonic()`` when it arrived."""
    sandbox_id: str | None = None
    timeout: dict[str, float | None] | None = None
    """httpx's per-request timeout extension."""


@dataclass
class Failure:
    op: str
    status: int | None = None
    exc: type[BaseException] | BaseException | None = None
    message: str | None = None
    times: int | None = 1
    """How many matching requests fail; None: all of them."""
    match: str | None = None
    """Only requests whose body contains this text."""
    hits: int = 0


@dataclass
class FakeSandbox:
    sandbox_id: str
    template: str
    timeout: int | None
    allow_internet_access: bool | None
    envd_access_token: str
    body: dict[str, Any]
    created_at: float
    kernel: FakeKernel
    killed_at: float | None = None
    kill_reason: str | None = None

    @property
    def alive(self) -> bool:
        return self.killed_at is None


class StdinNotImplementedError(NotImplementedError):
    """What ipykernel raises from ``input()`` when the frontend sent ``allow_stdin: false``."""


class _Killed(BaseException):
    """Unwinds a cell whose sandbox was killed."""


# ----- output capture ----------------------------------------------------------------------------
class _Dispatch(io.TextIOBase):
    """Installed as sys.stdout / sys.stderr while cells run; each worker thread writes to its own sink."""

    def __init__(self, name: str, capture: _Capture):
        self.name = name
        self.capture = capture

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        sink = getattr(self.capture.local, "sink", None)
        if sink is None:
            original = self.capture.originals.get(self.name)
            return original.write(text) if original is not None else len(text)
        sink(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass


class _Capture:
    """Reference-counted ``redirect_stdout``/``redirect_stderr``: on while any cell runs, in any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.users = 0
        self.stack: contextlib.ExitStack | None = None
        self.originals: dict[str, Any] = {}
        self.out = _Dispatch("stdout", self)
        self.err = _Dispatch("stderr", self)

    @contextlib.contextmanager
    def __call__(self, sink: Callable[[str, str], None]) -> Iterator[None]:
        with self.lock:
            if self.users == 0:
                self.originals = {"stdout": sys.stdout, "stderr": sys.stderr}
                self.stack = contextlib.ExitStack()
                self.stack.enter_context(contextlib.redirect_stdout(self.out))
                self.stack.enter_context(contextlib.redirect_stderr(self.err))
            self.users += 1
        self.local.sink = sink
        try:
            yield
        finally:
            self.local.sink = None
            with self.lock:
                self.users -= 1
                if self.users == 0 and self.stack is not None:
                    self.stack.close()
                    self.stack = None


_capture = _Capture()


# ----- the kernel: a persistent namespace over a private directory ----------------------------------
class _ModuleView(types.ModuleType):
    """A module whose listed attributes are overridden; the rest come from the real module."""

    def __init__(self, name: str, real: types.ModuleType, **overrides: Any):
        super().__init__(name)
        self.__dict__["_real"] = real
        self.__dict__.update(overrides)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.__dict__["_real"], item)


class FakeKernel:
    """A Python 'kernel' in one fake sandbox: its namespace, working directory, files and stdin."""

    def __init__(self, fake: FakeE2B, sandbox_id: str):
        self.fake = fake
        self.sandbox_id = sandbox_id
        self.root = tempfile.mkdtemp(prefix=f"fake-e2b-{sandbox_id}-")
        self.cwd = HOME
        os.makedirs(self.host(HOME), exist_ok=True)
        self.lock = threading.Lock()
        self.killed = threading.Event()
        self.execution_count = 0
        self.workers: list[threading.Thread] = []
        self.local_flush = threading.local()
        self.environ = {"HOME": HOME, "USER": "user", "PATH": "/usr/local/bin:/usr/bin:/bin", "E2B_SANDBOX": "true"}
        self.sys = _ModuleView("sys", sys, stdin=io.StringIO(""))
        self.os = self._os_view()
        self.time = _ModuleView("time", time, sleep=self.sleep)
        names = dict(vars(builtins))
        names.update(open=self.open, input=self.input, __import__=self.import_)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": names}

    # -- paths --
    def path(self, path: Any) -> str:
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = path.decode()
        return posixpath.normpath(posixpath.join(self.cwd, path))

    def host(self, path: Any) -> str:
        return os.path.join(self.root, self.path(path).lstrip("/"))

    def open(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        return open(file if isinstance(file, int) else self.host(file), *args, **kwargs)

    def _os_view(self) -> _ModuleView:
        def chdir(path: Any) -> None:
            if not os.path.isdir(self.host(path)):
                raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
            self.cwd = self.path(path)

        def listdir(path: Any = ".") -> list[str]:
            return os.listdir(self.host(path))

        ospath = _ModuleView(
            "posixpath",
            posixpath,
            exists=lambda p: os.path.exists(self.host(p)),
            isfile=lambda p: os.path.isfile(self.host(p)),
            isdir=lambda p: os.path.isdir(self.host(p)),
            getsize=lambda p: os.path.getsize(self.host(p)),
            abspath=self.path,
        )
        return _ModuleView(
            "os",
            os,
            path=ospath,
            environ=self.environ,
            getenv=lambda key, default=None: self.environ.get(key, default),
            getcwd=lambda: self.cwd,
            chdir=chdir,
            listdir=listdir,
            makedirs=lambda p, mode=0o777, exist_ok=False: os.makedirs(self.host(p), mode, exist_ok),
            mkdir=lambda p, mode=0o777: os.mkdir(self.host(p), mode),
            remove=lambda p: os.remove(self.host(p)),
            unlink=lambda p: os.unlink(self.host(p)),
            rename=lambda a, b: os.rename(self.host(a), self.host(b)),
        )

    def import_(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        views = {"os": self.os, "sys": self.sys, "time": self.time}
        top = name.partition(".")[0]
        if level == 0 and top in views:
            if name == "os.path" and fromlist:
                return self.os.path
            return views[top]
        return builtins.__import__(name, globals, locals, fromlist, level)

    def input(self, prompt: str = "") -> str:
        raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")

    def sleep(self, seconds: float) -> None:
        flush = getattr(self.local_flush, "fn", None)
        if flush is not None:
            flush()
        if self.killed.wait(max(0.0, seconds)):
            raise _Killed

    def write_file(self, path: str, data: bytes) -> None:
        target = os.path.join(self.root, posixpath.normpath(path).lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)

    def read_file(self, path: str) -> bytes:
        with open(os.path.join(self.root, posixpath.normpath(path).lstrip("/")), "rb") as f:
            return f.read()

    # -- execution --
    def execute(self, code: str, env_vars: dict[str, str] | None) -> queue.Queue:
        """Start running ``code``; its JSON-line messages arrive on the returned queue, then _END or _KILLED."""
        out: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._worker, args=(code, env_vars or {}, out), daemon=True)
        self.workers.append(worker)
        worker.start()
        return out

    def _worker(self, code: str, env_vars: dict[str, str], out: queue.Queue) -> None:
        while not self.lock.acquire(timeout=0.02):  # a stuck cell blocks the kernel, as in Jupyter
            if self.killed.is_set():
                out.put(_KILLED)
                return
        try:
            self._run_cell(code, env_vars, out)
        except Exception as exc:  # a bug in the fake: say so instead of hanging the client
            out.put({"type": "error", **_error(exc, exc.__traceback__)})
            out.put(_END)
        finally:
            self.lock.release()

    def _run_cell(self, code: str, env_vars: dict[str, str], out: queue.Queue) -> None:
        self.execution_count += 1
        out.put({"type": "number_of_executions", "execution_count": self.execution_count})
        pending: list[list[str]] = []

        def sink(stream: str, text: str) -> None:
            if pending and pending[-1][0] == stream:
                pending[-1][1] += text
            else:
                pending.append([stream, text])

        def flush() -> None:
            for stream, text in pending:
                out.put({"type": stream, "text": text, "timestamp": _now()})
            pending.clear()

        self.local_flush.fn = flush
        self.environ.update(env_vars)
        killed = False
        result = error = None
        try:
            if self.fake.exec_delay:
                self.sleep(self.fake.exec_delay)
            if "# hang" in code:
                self.killed.wait()
                raise _Killed
            with _capture(sink):
                result, error = self._exec(code)
        except _Killed:
            killed = True
        finally:
            self.local_flush.fn = None
        flush()
        if killed or self.killed.is_set():
            out.put(_KILLED)
            return
        if result is not None:
            out.put({"type": "result", "text": result, "is_main_result": True, "extra": {}})
        if error is not None:
            out.put({"type": "error", **error})
        out.put(_END)

    def _exec(self, code: str) -> tuple[str | None, dict[str, str] | None]:
        """Run one cell like IPython: (main result text, error message)."""
        import ast

        filename = f"<cell-{self.sandbox_id}-{self.execution_count}>"
        try:
            tree = ast.parse(code, filename, "exec")
        except SyntaxError as exc:
            return None, _error(exc, None)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            if self.killed.is_set():
                raise _Killed
            return tracer if frame.f_code.co_filename == filename else None

        sys.settrace(tracer)
        try:
            exec(compile(tree, filename, "exec"), self.namespace)
            value = eval(compile(last, filename, "eval"), self.namespace) if last is not None else None
        except _Killed:
            raise
        except SystemExit as exc:
            sys.stderr.write(
                "/usr/local/lib/python3.12/site-packages/IPython/core/interactiveshell.py:3585: UserWarning: To exit:"
                " use 'exit', 'quit', or Ctrl-D.\n  warn(\"To exit: use 'exit', 'quit', or Ctrl-D.\", stacklevel=1)\n"
            )
            value_text = "" if exc.code is None else str(exc.code)
            tb = f"An exception has occurred, use %tb to see the full traceback.\n\nSystemExit: {value_text}\n"
            return None, {"name": "SystemExit", "value": value_text, "traceback": tb}
        except BaseException as exc:
            return None, _error(exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        finally:
            sys.settrace(None)
        if value is None:
            return None, None
        self.namespace["_"] = value
        text = repr(value)
        if text.startswith("'") and text.endswith("'"):  # what the code-interpreter server does to text/plain
            text = text[1:-1]
        return text, None

    def kill(self) -> None:
        self.killed.set()

    def cleanup(self, join: float = 2.0) -> None:
        self.killed.set()
        for worker in self.workers:
            worker.join(join)
        shutil.rmtree(self.root, ignore_errors=True)


def _error(exc: BaseException, tb: Any) -> dict[str, str]:
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {"name": type(exc).__name__, "value": str(exc), "traceback": text}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _ExecuteStream(httpx.SyncByteStream):
    """The body of ``POST /execute``: JSON lines as the cell produces them, cut off at the read deadline."""

    def __init__(self, request: httpx.Request, messages: queue.Queue, deadline: float | None):
        self.request = request
        self.messages = messages
        self.deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        while True:
            remaining = None if self.deadline is None else self.deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                item = self.messages.get(timeout=remaining)
            except queue.Empty:
                raise httpx.ReadTimeout("The read operation timed out", request=self.request) from None
            if item is _END:
                return
            if item is _KILLED:
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body (incomplete chunked read)",
                    request=self.request,
                )
            yield (json.dumps(item) + "\n").encode()


class _RefusingPyqwestTransport:
    """For the envd Connect-RPC clients: the code under test never needs them, and nothing may reach the net."""

    def __init__(self, fake: FakeE2B):
        self.fake = fake

    def execute_sync(self, request: Any) -> Any:
        self.fake.rpc_calls.append(getattr(request, "url", "?"))
        raise ConnectionError("fake E2B: envd RPC is not implemented")


# ----- the service ---------------------------------------------------------------------------------
class FakeE2B:
    """The E2B control plane, envd and the code-interpreter server, behind one ``httpx.MockTransport``."""

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        domain: str = DOMAIN,
        concurrency_limit: int | None = None,
        min_create_interval: float | None = None,
    ):
        self.api_key = api_key
        self.domain = domain
        self.concurrency_limit = concurrency_limit
        self.min_create_interval = min_create_interval
        self.exec_delay = 0.0
        self.requests: list[Request] = []
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.events: list[tuple[float, str, str]] = []
        """(monotonic time, "create" | "kill" | "expire", sandbox id)"""
        self.failures: list[Failure] = []
        self.rpc_calls: list[Any] = []
        self.patched: list[str] = []
        self.lock = threading.Lock()
        self.transport = httpx.MockTransport(self.handle)
        self._last_create: float | None = None

    # -- test-facing helpers --
    def fail(
        self,
        op: str,
        *,
        status: int | None = None,
        exc: type[BaseException] | BaseException | None = None,
        message: str | None = None,
        times: int | None = 1,
        match: str | None = None,
    ) -> Failure:
        """Make the next ``times`` (None: every) ``op`` requests answer ``status`` or raise ``exc``."""
        if (status is None) == (exc is None):
            raise ValueError("give exactly one of status= or exc=")
        failure = Failure(op, status, exc, message, times, match)
        with self.lock:
            self.failures.append(failure)
        return failure

    def expire(self, sandbox_id: str) -> None:
        """The sandbox vanishes as if its lifetime ran out (no request involved)."""
        self._kill(sandbox_id, "expired")

    def of(self, op: str) -> list[Request]:
        return [r for r in self.requests if r.op == op]

    @property
    def alive(self) -> list[FakeSandbox]:
        return [s for s in self.sandboxes.values() if s.alive]

    def max_alive(self) -> int:
        """The most sandboxes alive at the same time."""
        peak = alive = 0
        for _, kind, _ in sorted(self.events, key=lambda e: e[0]):
            alive += 1 if kind == "create" else -1
            peak = max(peak, alive)
        return peak

    def shutdown(self) -> None:
        """Stop every kernel (interrupting hung cells) and remove their files."""
        for sb in list(self.sandboxes.values()):
            sb.kernel.cleanup()

    # -- transport --
    def handle(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        try:
            body = json.loads(content) if content and "json" in request.headers.get("content-type", "") else None
        except ValueError:
            body = None
        host = request.url.host
        sandbox_id, port = None, None
        if not host.startswith("api."):
            sandbox_id, port = self._route(request)
        elif m := re.fullmatch(r"/sandboxes/([^/]+)(/timeout)?", request.url.path):
            sandbox_id = m.group(1)
        op = self._op(request, port)
        record = Request(
            op=op,
            method=request.method,
            url=str(request.url),
            headers={k.lower(): v for k, v in request.headers.items()},
            content=content,
            json=body,
            time=time.monotonic(),
            sandbox_id=sandbox_id,
            timeout=request.extensions.get("timeout"),
        )
        with self.lock:
            self.requests.append(record)
        injected = self._injected(op, content, request)
        if injected is not None:
            return injected
        if host.startswith("api."):
            return self._control_plane(request, record)
        return self._sandbox(request, record, port)

    def _route(self, request: httpx.Request) -> tuple[str | None, int | None]:
        sandbox_id = request.headers.get("e2b-sandbox-id")
        port = request.headers.get("e2b-sandbox-port")
        m = re.fullmatch(r"(\d+)-([^.]+)\..+", request.url.host)
        if m:  # <port>-<id>.<domain>, the direct form
            port, sandbox_id = port or m.group(1), sandbox_id or m.group(2)
        return sandbox_id, int(port) if port else None

    @staticmethod
    def _op(request: httpx.Request, port: int | None) -> str:
        path, method = request.url.path, request.method
        if port is None:
            if method == "POST" and path == "/v2/sandboxes":
                return "create"
            if method == "DELETE" and re.fullmatch(r"/sandboxes/[^/]+", path):
                return "kill"
            if method == "POST" and re.fullmatch(r"/sandboxes/[^/]+/timeout", path):
                return "set_timeout"
        elif port == JUPYTER_PORT and method == "POST" and path == "/execute":
            return "execute"
        elif port == ENVD_PORT and path == "/files" and method == "POST":
            return "files"
        elif port == ENVD_PORT and path == "/health":
            return "health"
        return "other"

    def _injected(self, op: str, content: bytes, request: httpx.Request) -> httpx.Response | None:
        with self.lock:
            for failure in self.failures:
                if failure.op != op or (failure.times is not None and failure.hits >= failure.times):
                    continue
                if failure.match is not None and failure.match.encode() not in content:
                    continue
                failure.hits += 1
                break
            else:
                return None
        if failure.exc is not None:
            exc = failure.exc
            if isinstance(exc, type):
                exc = exc(failure.message or "fake E2B: injected failure", request=request)  # type: ignore[call-arg]
            raise exc
        status = failure.status or 500
        message = failure.message or {401: "Invalid API key", 429: "Rate limit exceeded"}.get(status, "Internal error")
        if op == "execute":  # the code-interpreter server answers in plain text
            return httpx.Response(status, text=message)
        return httpx.Response(status, json={"code": status, "message": message})

    # -- control plane --
    def _control_plane(self, request: httpx.Request, record: Request) -> httpx.Response:
        if record.headers.get("x-api-key") != self.api_key:
            return httpx.Response(401, json={"code": 401, "message": "Invalid API key, it must start with 'e2b_'"})
        if record.op == "create":
            return self._create(record)
        if record.op == "kill":
            if not self._kill(record.sandbox_id or "", "killed"):
                return httpx.Response(404, json={"code": 404, "message": f"sandbox '{record.sandbox_id}' not found"})
            return httpx.Response(204)
        if record.op == "set_timeout":
            sb = self.sandboxes.get(record.sandbox_id or "")
            if sb is None or not sb.alive:
                return httpx.Response(404, json={"code": 404, "message": f"sandbox '{record.sandbox_id}' not found"})
            sb.timeout = int((record.json or {})["timeout"])
            return httpx.Response(204)
        return httpx.Response(
            404, json={"code": 404, "message": f"fake E2B: no route {request.method} {request.url.path}"}
        )

    def _create(self, record: Request) -> httpx.Response:
        body = record.json or {}
        now = record.time
        with self.lock:
            if self.concurrency_limit is not None and len(self.alive) >= self.concurrency_limit:
                message = (
                    f"You have reached the maximum number of concurrent E2B sandboxes ({self.concurrency_limit})."
                    " If you need more, please contact us at 'https://e2b.dev/docs/getting-help'"
                )
                return httpx.Response(429, json={"code": 429, "message": message})
            if (
                self.min_create_interval is not None
                and self._last_create is not None
                and now - self._last_create < self.min_create_interval
            ):
                return httpx.Response(
                    429, json={"code": 429, "message": "Rate limit exceeded, please try again later."}
                )
            self._last_create = now
            sandbox_id = "i" + "".join(secrets.choice(_ID_CHARS) for _ in range(19))
            sb = FakeSandbox(
                sandbox_id=sandbox_id,
                template=body.get("templateID", ""),
                timeout=body.get("timeout"),
                allow_internet_access=body.get("allow_internet_access"),
                envd_access_token=secrets.token_hex(16),
                body=body,
                created_at=now,
                kernel=FakeKernel(self, sandbox_id),
            )
            self.sandboxes[sandbox_id] = sb
            self.events.append((now, "create", sandbox_id))
            record.sandbox_id = sandbox_id
        return httpx.Response(
            201,
            json={
                "templateID": "nlhz8vlwyupq845jsdg9",
                "alias": sb.template,
                "sandboxID": sandbox_id,
                "clientID": "6532622b",
                "envdVersion": ENVD_VERSION,
                "envdAccessToken": sb.envd_access_token,
                "trafficAccessToken": None,
                "domain": self.domain,
            },
        )

    def _kill(self, sandbox_id: str, reason: str) -> bool:
        with self.lock:
            sb = self.sandboxes.get(sandbox_id)
            if sb is None or not sb.alive:
                return False
            sb.killed_at = time.monotonic()
            sb.kill_reason = reason
            self.events.append((sb.killed_at, "kill", sandbox_id))
        sb.kernel.kill()
        return True

    # -- inside a sandbox --
    def _sandbox(self, request: httpx.Request, record: Request, port: int | None) -> httpx.Response:
        sb = self.sandboxes.get(record.sandbox_id or "")
        if sb is None or not sb.alive:
            message = f"The sandbox {record.sandbox_id} was not found"
            return httpx.Response(502, json={"message": message, "code": 502, "sandboxId": record.sandbox_id})
        if record.headers.get("x-access-token") != sb.envd_access_token:
            return httpx.Response(
                401, json={"code": 401, "message": "unauthorized access, please provide a valid token"}
            )
        if record.op == "health":
            return httpx.Response(204)
        if record.op == "files":
            return self._files(request, record, sb)
        if record.op == "execute":
            body = record.json or {}
            if body.get("context_id") or body.get("language") not in (None, "python"):
                return httpx.Response(404, text=f"fake E2B: only the default python context ({body!r})")
            messages = sb.kernel.execute(body["code"], body.get("env_vars"))
            read = (record.timeout or {}).get("read")
            deadline = None if read is None else record.time + read
            return httpx.Response(
                200,
                headers={"content-type": "application/x-ndjson"},
                stream=_ExecuteStream(request, messages, deadline),
            )
        return httpx.Response(404, text=f"fake E2B: no route {request.method} {request.url.path} on port {port}")

    def _files(self, request: httpx.Request, record: Request, sb: FakeSandbox) -> httpx.Response:
        params = urllib.parse.parse_qs(request.url.query.decode())
        content_type = record.headers.get("content-type", "")
        written: list[tuple[str, bytes]] = []
        if content_type.startswith("application/octet-stream"):
            written.append((params["path"][0], record.content))
        elif content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + record.content
            )
            for part in message.iter_parts():
                name = params["path"][0] if "path" in params else part.get_filename()
                written.append((name, part.get_payload(decode=True) or b""))
        else:
            return httpx.Response(400, json={"code": 400, "message": f"unsupported content type {content_type!r}"})
        infos = []
        for path, data in written:
            path = path if path.startswith("/") else posixpath.join(HOME, path)
            sb.kernel.write_file(path, data)
            infos.append({"name": posixpath.basename(path), "type": "file", "path": path})
        return httpx.Response(200, json=infos)


# ----- installation --------------------------------------------------------------------------------
def install(monkeypatch: Any, **kwargs: Any) -> FakeE2B:
    """Route the sync E2B SDK to a new :class:`FakeE2B` for the rest of the test (undone by ``monkeypatch``).

    Sets ``E2B_API_KEY`` to the fake's key and clears the variables that would point the SDK elsewhere.
    Call :meth:`FakeE2B.shutdown` at teardown to stop hung cells.
    """
    import e2b.api.client_sync as client_sync
    import e2b.envd.client_sync
    import e2b.volume.client_sync  # noqa: F401  (loaded so that its imported factory is patched)
    import e2b_code_interpreter.code_interpreter_sync  # noqa: F401  (imported so that it is patched too)

    fake = FakeE2B(**kwargs)
    for var in ("E2B_DEBUG", "E2B_DOMAIN", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_HTTP_VERSION", "E2B_ACCESS_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E2B_API_KEY", fake.api_key)

    def get_transport(config: Any, **_: Any) -> httpx.BaseTransport:
        return fake.transport

    def get_httpx_transport(proxy: Any, read_timeout: Any = None, **_: Any) -> httpx.BaseTransport:
        return fake.transport

    def get_pyqwest_transport(proxy: Any, read_timeout: Any = None, **_: Any) -> Any:
        return _RefusingPyqwestTransport(fake)

    replacements = {
        client_sync.get_transport: get_transport,
        client_sync.get_httpx_transport: get_httpx_transport,
        client_sync.get_pyqwest_transport: get_pyqwest_transport,
    }
    for module_name, module in sorted(sys.modules.items()):
        if module is None or not module_name.startswith(("e2b.", "e2b_code_interpreter")):
            continue
        for attr, value in list(vars(module).items()):
            replacement = replacements.get(value) if callable(value) else None
            if replacement is not None:
                monkeypatch.setattr(module, attr, replacement)
                fake.patched.append(f"{module_name}.{attr}")
    needed = {
        "e2b.api.client_sync.get_transport",
        "e2b_code_interpreter.code_interpreter_sync.get_transport",
        "e2b.envd.client_sync.get_pyqwest_transport",
    }
    missing = needed - set(fake.patched)
    assert not missing, f"the SDK no longer imports these factories by name: {sorted(missing)}"
    return fake


__all__ = ["API_KEY", "FakeE2B", "FakeSandbox", "Request", "StdinNotImplementedError", "install"]
