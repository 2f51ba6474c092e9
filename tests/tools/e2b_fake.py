"""A fake of the E2B service, served in this process,, for contract tests of ``E2BSandbox``.

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

Code runs in a process tree of its own per fake sandbox (``e2b_kernel.py``: a supervisor that acts as
the VM's init and the code-interpreter server, and a kernel below it), so hostile code (``os._exit``,
patched builtins, forks, floods) hurts only that tree. Like an IPython kernel: the last expression's repr
is the main ``text/plain`` result (the server strips surrounding single quotes, so ``'ab'`` comes back as
``ab``); ``input()`` raises ``StdinNotImplementedError`` (the server sends ``allow_stdin: false``);
``sys.exit(n)`` is reported as an error ``SystemExit``/``n`` plus a ``UserWarning`` on stderr; output
streams as it is printed; a kernel that dies mid-cell is restarted and the cell answered with the error
``ContextRestarting``, as E2B's server does. Files live in a private temporary directory per sandbox,
which ``open``, ``os``, ``os.path`` and ``sys.stdin`` map the VM's paths into; the environment is a
VM's, never this process's.

Timeouts. The SDK raises ``TimeoutException("Execution timed out ...")`` on ``httpx.ReadTimeout``. The fake
raises ``httpx.ReadTimeout`` from the response stream when the cell has not finished by the request's
read deadline (``request.extensions["timeout"]["read"]``, which ``run_code`` sets to its ``timeout``),
taken as a whole-request deadline like the SDK's pyqwest transport. A cell misses it when:

* it contains the marker ``# hang`` (it then blocks until the sandbox is killed), or
* it sleeps or loops past the remaining time, or
* ``FakeE2B.exec_delay`` seconds of artificial latency push it past.

As in Jupyter, the kernel keeps running after the client gave up: later cells of that sandbox queue
behind it until the sandbox is killed, which kills the sandbox's whole process tree (children that
called ``setsid`` or ignore SIGTERM included), as killing the VM does.

Failure injection: :meth:`FakeE2B.fail` answers an operation (``create``, ``kill``, ``set_timeout``,
``files``, ``execute``, ``health``) with an HTTP status or raises a transport exception such as
``httpx.ConnectError``; :meth:`FakeE2B.expire` makes a sandbox vanish as if its lifetime ran out.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import os
import posixpath
import queue
import re
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
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


# ----- the kernel: a process tree per sandbox (see e2b_kernel.py) ------------------------------------
KERNEL_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2b_kernel.py")
VM_ENV = {"HOME": HOME, "USER": "user", "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
          "E2B_SANDBOX": "true"}  # fmt: skip


class FakeKernel:
    """One sandbox's kernel, run by ``e2b_kernel.py`` in its own process tree over the sandbox's private
    directory: starts on the first cell, restarts after the code kills it, dies with the sandbox."""

    def __init__(self, fake: FakeE2B, sandbox_id: str):
        self.fake = fake
        self.sandbox_id = sandbox_id
        self.root = tempfile.mkdtemp(prefix=f"fake-e2b-{sandbox_id}-")
        os.makedirs(os.path.join(self.root, HOME.lstrip("/")), exist_ok=True)
        self.lock = threading.Lock()
        self.killed = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.seq = itertools.count(1)
        self.pending: dict[int, queue.Queue] = {}
        """Requests sent to the kernel and not finished, by sequence number (they run in that order)."""
        self.inbox: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []

    def write_file(self, path: str, data: bytes) -> None:
        target = os.path.join(self.root, posixpath.normpath(path).lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)

    def read_file(self, path: str) -> bytes:
        with open(os.path.join(self.root, posixpath.normpath(path).lstrip("/")), "rb") as f:
            return f.read()

    def execute(self, code: str, env_vars: dict[str, str] | None) -> queue.Queue:
        """Queue ``code``; its JSON-line messages arrive on the returned queue, then _END or _KILLED."""
        out: queue.Queue = queue.Queue()
        with self.lock:
            if self.killed.is_set():
                out.put(_KILLED)
                return out
            if self.proc is None:
                self._start()
            seq = next(self.seq)
            self.pending[seq] = out
        self.inbox.put(json.dumps({"seq": seq, "code": code, "env_vars": env_vars or {}}) + "\n")
        return out

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", KERNEL_SCRIPT, self.root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=VM_ENV,
            close_fds=True,
        )
        for target in (self._writer, self._reader):
            thread = threading.Thread(target=target, args=(self.proc,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _writer(self, proc: subprocess.Popen) -> None:
        # Its own thread: a request written behind a hung cell must not block the HTTP handler.
        while (line := self.inbox.get()) is not None:
            if self.fake.exec_delay:
                time.sleep(self.fake.exec_delay)
            try:
                proc.stdin.write(line.encode())
                proc.stdin.flush()
            except (OSError, ValueError):
                return

    def _reader(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
                kind, seq = msg["type"], msg["seq"]
            except (ValueError, KeyError, TypeError):
                continue  # the code wrote garbage to the pipe: it can only confuse itself
            with self.lock:
                if kind == "restarting":  # the kernel died in the cell that was running
                    seq = min(self.pending, default=None)
                out = self.pending.get(seq)
                if kind in ("end", "restarting"):
                    self.pending.pop(seq, None)
            if out is None:
                continue
            if kind == "start":
                out.put({"type": "number_of_executions", "execution_count": msg.get("execution_count")})
            elif kind in ("stdout", "stderr"):
                out.put({"type": kind, "text": msg.get("text"), "timestamp": _now()})
            elif kind == "result":
                text = str(msg.get("text"))
                if text.startswith("'") and text.endswith("'"):  # what the code-interpreter server does to text/plain
                    text = text[1:-1]
                out.put({"type": "result", "text": text, "is_main_result": True, "extra": {}})
            elif kind == "error":
                out.put({"type": "error", **{k: str(msg.get(k)) for k in ("name", "value", "traceback")}})
            elif kind == "restarting":  # what E2B's server answers then
                out.put(
                    {"type": "error", "name": "ContextRestarting", "value": "Context was restarted", "traceback": ""}
                )
            if kind in ("end", "restarting"):
                out.put(_END)
        self._fail_pending()  # the whole tree is gone

    def _fail_pending(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        for out in pending.values():
            out.put(_KILLED)

    def kill(self) -> None:
        """Kill the kernel's whole process tree, as killing the VM would."""
        with self.lock:
            self.killed.set()
            proc = self.proc
        self.inbox.put(None)
        if proc is not None:
            proc.terminate()  # the supervisor kills everything below it, then itself
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._fail_pending()

    def cleanup(self, join: float = 2.0) -> None:
        self.kill()
        for thread in self.threads:
            thread.join(join)
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


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


__all__ = ["API_KEY", "FakeE2B", "FakeSandbox", "Request", "install"]
