"""What a sandbox child does after the server forks it: lock itself down, run the code, report.

Hardening happens in the child, in this order, so that each step still has the rights it needs:
new session, default signal handlers, private working directory, resource limits, unprivileged
user, Landlock, seccomp, then every inherited descriptor but the few it needs is closed and the
environment is replaced. After that the code runs with nothing to escalate from.

The result goes back as one JSON line on a dedicated pipe. The code can write to that pipe too;
it only ever lies about itself, and grading never trusts it (see ``agentrl.tools.grading``).

This module is stdlib-only: it runs inside the sandbox server, which imports nothing of agentrl.
"""

from __future__ import annotations

import ast
import ctypes
import io
import json
import os
import random
import resource
import signal
import sys
import traceback
import types
from typing import Any

import landlock
import plain
import seccomp

MAX_REPR = 4000
PR_SET_PDEATHSIG = 1
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


def prepare(cfg: dict[str, Any], workdir: str) -> None:
    """The job-independent part of hardening, done while the child waits as a spare."""
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing
    os.chdir(workdir)
    uid = cfg.get("uid")
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(uid)
    elif cfg.get("drop_caps") and os.getuid() == 0:
        drop_capabilities()
    # Die with the server. Set after the uid change, which clears it; check the server did not go first.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["server_pid"]:
        os._exit(0)
    if cfg.get("landlock_abi"):
        workdir_fd = os.open(workdir, os.O_PATH)
        landlock.restrict_self(cfg["landlock_abi"], cfg["_read_fds"], [(workdir_fd, True), *cfg["_write_fds"]])
        os.close(workdir_fd)


def lockdown(cfg: dict[str, Any], keep_fds: list[int], limits: dict[str, int]) -> None:
    """The last steps, once the job is known: limits, seccomp, descriptors, environment."""
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    if cfg.get("_seccomp_prog"):
        seccomp.load_program(cfg["_seccomp_prog"], os.getpid())
    _close_all_but(keep_fds)
    os.environ.clear()
    os.environ.update(CHILD_ENV, HOME=os.getcwd(), TMPDIR=os.getcwd())
    sys.path[:] = [os.getcwd(), *[p for p in sys.path if p and p != "."]]
    sys.argv = ["<sandbox>"]
    random.seed()  # children of one server would otherwise share the server's random state


def spare_main(cfg: dict[str, Any], workdir: str, cmd_fd: int, res_fd: int) -> None:
    """Body of a pre-forked child: harden, wait for its job, run it. Never returns."""
    status = 125
    try:
        # Everything, seccomp included, happens before the job arrives: a job only pays for itself.
        prepare(cfg, workdir)
        lockdown(cfg, [res_fd, cmd_fd], cfg["limits"])
        commands = os.fdopen(cmd_fd, "rb", buffering=0)
        first = commands.readline()
        if not first:
            os._exit(0)  # the server retired this spare
        msg = json.loads(first)
        status = 1
        if msg["kind"] == "session":
            session_loop(commands, res_fd, workdir)
        commands.close()
        run_once(msg, res_fd, workdir)
    except BaseException as exc:  # hardening failed: never run the code unconfined
        try:
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(status)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets (root without root powers)."""
    libc = _libc
    pr_capbset_drop, pr_cap_ambient, pr_cap_ambient_clear_all = 24, 47, 4
    for cap in range(64):
        libc.prctl(pr_capbset_drop, cap, 0, 0, 0)  # EINVAL past the last capability: ignored
    libc.prctl(pr_cap_ambient, pr_cap_ambient_clear_all, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _close_all_but(keep: list[int]) -> None:
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 65536)


def set_stdin(data: bytes | None, workdir: str) -> None:
    """Make ``data`` the process's standard input (an unlinked file), or /dev/null."""
    if data:
        path = os.path.join(workdir, ".stdin")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(path)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    # Line buffering: what was printed before a timeout or a crash still reaches the model.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)


def write_files(files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        parent = os.path.dirname(rel)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(rel, "wb") as f:
            f.write(content)


def _safe_str(x: Any) -> str:
    try:
        return str(x)
    except BaseException:  # a hostile __str__ must not break reporting
        return f"<unprintable {type(x).__name__}>"


def _error(exc: BaseException) -> dict[str, str]:
    tb = exc.__traceback__
    # Drop the harness frames; keep what the code itself did.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        text = f"{type(exc).__name__}: {_safe_str(exc)}\n"
    return {"name": type(exc).__name__, "value": _safe_str(exc), "traceback": text[-8000:]}


def new_namespace() -> dict[str, Any]:
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    return module.__dict__


def execute(code: str, ns: dict[str, Any], want_result: bool) -> dict[str, Any]:
    """Run one cell; the record says how it ended. The last expression's repr is kept if asked."""
    record: dict[str, Any] = {"exit_code": 0, "error": None, "result": None}
    try:
        last = None
        if want_result:
            tree = ast.parse(code, "<cell>", "exec")
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, "<cell>", "exec"), ns)
        else:
            exec(compile(code, "<cell>", "exec"), ns)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), ns)
            if value is not None:
                record["result"] = _safe_repr(value)
    except SystemExit as exc:
        record["exit_code"] = _exit_status(exc.code)
    except BaseException as exc:
        record["error"] = _error(exc)
        record["exit_code"] = 1
        try:
            sys.stderr.write(record["error"]["traceback"])
        except BaseException:
            pass
    return record


def call(name: str, args: Any, ns: dict[str, Any]) -> dict[str, Any]:
    """Call ``ns[name](*args)`` on plain arguments and return its value strictly encoded."""
    record: dict[str, Any] = {"exit_code": 0, "error": None, "value": None}
    try:
        fn = ns[name]
        value = fn(*plain.decode(args))
        record["value"] = plain.encode(value)
    except SystemExit as exc:
        record["exit_code"] = _exit_status(exc.code)
        record["error"] = {"name": "SystemExit", "value": _safe_str(exc.code), "traceback": ""}
    except BaseException as exc:
        record["error"] = _error(exc)
        record["exit_code"] = 1
    return record


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except BaseException as exc:
        return f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + f"... [{len(text) - MAX_REPR} more characters]"


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if type(code) is int:
        return code & 0xFF
    try:
        sys.stderr.write(_safe_str(code) + "\n")
    except BaseException:
        pass
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _send(res_fd: int, record: dict[str, Any]) -> None:
    try:
        data = json.dumps(record).encode() + b"\n"
    except (TypeError, ValueError):
        data = (
            json.dumps(
                {"exit_code": 1, "error": {"name": "ReportError", "value": "unserialisable", "traceback": ""}}
            ).encode()
            + b"\n"
        )
    view = memoryview(data)
    while view:
        n = os.write(res_fd, view)
        view = view[n:]


def run_once(job: dict[str, Any], res_fd: int, workdir: str) -> None:
    """Run one program, report, exit. Never returns."""
    status = 1
    try:
        write_files({k: bytes.fromhex(v) for k, v in job.get("files", {}).items()})
        set_stdin(bytes.fromhex(job["stdin"]) if job.get("stdin") else None, workdir)
        record = execute(job["code"], new_namespace(), want_result=False)
        _flush()
        status = record["exit_code"]
        _send(res_fd, record)
    finally:
        os._exit(status)


def session_loop(commands: Any, res_fd: int, workdir: str) -> None:
    """Body of a session worker: one cell per command line, one record per cell. Never returns."""
    ns = new_namespace()
    try:
        for line in iter(commands.readline, b""):
            msg = json.loads(line)
            write_files({k: bytes.fromhex(v) for k, v in msg.get("files", {}).items()})
            set_stdin(bytes.fromhex(msg["stdin"]) if msg.get("stdin") else None, workdir)
            if msg.get("call"):
                record = call(msg["call"], msg["args"], ns)
            else:
                record = execute(msg["code"], ns, want_result=True)
            _flush()
            _send(res_fd, record)
    finally:
        os._exit(0)
