"""The inside of a fake E2B sandbox: a Python kernel in a process tree of its own.

``e2b_fake`` starts one per fake sandbox, on its first cell, as ``python -I e2b_kernel.py ROOT``, where
ROOT is the sandbox's private directory (the VM's ``/`` as the code sees it). Running the code in its own
process, not in the test process, is what lets the E2B backend face the same hostile code as the local
one: ``os._exit``, monkeypatched builtins, forked children and output floods hurt only this tree.

Two processes, as in the real VM:

* the *supervisor* (E2B's code-interpreter server, and the VM's init) is a child subreaper, so every
  process the code leaves behind, ``setsid`` and double forks included, stays below it. It forks the
  kernel; when the kernel dies in the middle of a cell it kills what is left of the kernel's tree, says
  ``restarting`` (E2B answers that cell with ``ContextRestarting``) and forks a fresh kernel. SIGTERM
  stops the whole tree, processes that ignore SIGTERM included: that is what killing the VM does.
* the *kernel* runs cells one after another in one namespace, like IPython: the last expression's repr
  is the result, ``sys.exit`` is an error, ``input()`` raises (the frontend refuses input requests).

Protocol: requests on stdin, one JSON line each, ``{"seq", "code", "env_vars"}``; messages on stdout,
one JSON line each, tagged with the request's ``seq``: ``start`` (with the execution count), ``stdout``,
``stderr``, ``result`` (the repr), ``error``, ``end``; and ``{"type": "restarting"}`` from the supervisor.
The code can write to that pipe too; it can only lie about itself, as it could to the real server.

Files: paths are the VM's. ``open``, ``os`` (getcwd, chdir, listdir, makedirs, ...), ``os.path`` and
``sys.stdin`` map them into ROOT, and the process's real working directory follows the code's, so
relative paths through any module land in ROOT too. The environment is the VM's (given by the fake).

Stdlib only: it runs with ``-I``, outside the test process's imports.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import io
import json
import os
import posixpath
import signal
import sys
import time
import traceback
import types
from typing import Any

HOME = "/home/user"
EOF_STATUS = 0x7A  # the kernel's status when the fake closed its requests: the sandbox is being torn down
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


# ----- the protocol ----------------------------------------------------------------------------
class Channel:
    """JSON lines to the fake, on a descriptor the code's own prints never reach."""

    def __init__(self, fd: int):
        self.fd = fd
        self.seq: int | None = None  # the request being run

    def send(self, msg: dict[str, Any], seq: int | None = None) -> None:
        data = memoryview((json.dumps({**msg, "seq": self.seq if seq is None else seq}) + "\n").encode())
        while data:
            data = data[os.write(self.fd, data) :]


class Stream(io.TextIOBase):
    """sys.stdout / sys.stderr of the kernel: lines go to the fake as they are printed, like iopub."""

    def __init__(self, name: str, channel: Channel):
        self.name, self.channel, self.buf, self.size = name, channel, [], 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.buf.append(text)
        self.size += len(text)
        if "\n" in text or self.size > 8192:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self.buf and self.channel.seq is not None:  # output between cells (a thread) reaches nobody
            self.channel.send({"type": self.name, "text": "".join(self.buf)})
        self.buf, self.size = [], 0


# ----- the kernel --------------------------------------------------------------------------------
class StdinNotImplementedError(NotImplementedError):
    """What ipykernel raises from ``input()`` when the frontend sent ``allow_stdin: false``."""


class ModuleView(types.ModuleType):
    """A module whose listed attributes are overridden; the rest come from the real module."""

    def __init__(self, name: str, real: types.ModuleType, **overrides: Any):
        super().__init__(name)
        self.__dict__["_real"] = real
        self.__dict__.update(overrides)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.__dict__["_real"], item)


class Kernel:
    def __init__(self, root: str, channel: Channel):
        self.root, self.channel = root, channel
        self.cwd = HOME
        os.chdir(self.host(HOME))
        self.count = 0
        self.sys = ModuleView("sys", sys, stdin=io.StringIO(""))
        self.os = self._os_view()
        names = dict(vars(builtins))
        names.update(open=self.open, input=self.input, __import__=self.import_)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": names}

    def path(self, path: Any) -> str:
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = path.decode()
        return posixpath.normpath(posixpath.join(self.cwd, path))

    def host(self, path: Any) -> str:
        return os.path.join(self.root, self.path(path).lstrip("/"))

    def open(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        return open(file if isinstance(file, int) else self.host(file), *args, **kwargs)

    def _os_view(self) -> ModuleView:
        def chdir(path: Any) -> None:
            os.chdir(self.host(path))
            self.cwd = self.path(path)

        def mapped(fn: Any) -> Any:
            return lambda p=".", *a, **k: fn(self.host(p), *a, **k)

        ospath = ModuleView(
            "posixpath",
            posixpath,
            exists=mapped(os.path.exists),
            isfile=mapped(os.path.isfile),
            isdir=mapped(os.path.isdir),
            getsize=mapped(os.path.getsize),
            abspath=self.path,
        )
        return ModuleView(
            "os",
            os,
            path=ospath,
            getcwd=lambda: self.cwd,
            chdir=chdir,
            **{n: mapped(getattr(os, n)) for n in ("listdir", "makedirs", "mkdir", "remove", "unlink", "stat")},
            rename=lambda a, b: os.rename(self.host(a), self.host(b)),
        )

    def import_(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        views = {"os": self.os, "sys": self.sys}
        top = name.partition(".")[0]
        if level == 0 and top in views:
            if name == "os.path" and fromlist:
                return self.os.path
            return views[top]
        return builtins.__import__(name, globals, locals, fromlist, level)

    def input(self, prompt: str = "") -> str:
        raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")

    def cell(self, req: dict[str, Any]) -> None:
        channel = self.channel
        channel.seq = req["seq"]
        self.count += 1
        channel.send({"type": "start", "execution_count": self.count})
        os.environ.update(req.get("env_vars") or {})
        if "# hang" in req["code"]:  # the fake's marker for a cell that never finishes
            while True:
                time.sleep(3600)
        result, error = self.run(req["code"])
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        if result is not None:
            channel.send({"type": "result", "text": result})
        if error is not None:
            channel.send({"type": "error", **error})
        channel.send({"type": "end"})
        channel.seq = None

    def run(self, code: str) -> tuple[str | None, dict[str, str] | None]:
        """Run one cell like IPython: (repr of the last expression, error message)."""
        filename = f"<cell-{self.count}>"
        try:
            tree = ast.parse(code, filename, "exec")
        except SyntaxError as exc:
            return None, _error(exc, None)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        try:
            exec(compile(tree, filename, "exec"), self.namespace)
            value = eval(compile(last, filename, "eval"), self.namespace) if last is not None else None
            if value is None:
                return None, None
            self.namespace["_"] = value
            return repr(value), None
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


def _error(exc: BaseException, tb: Any) -> dict[str, str]:
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        value = str(exc)
    except BaseException:  # a hostile __str__ must not take the kernel down
        text = value = f"<unprintable {type(exc).__name__}>"
    return {"name": type(exc).__name__, "value": value, "traceback": text}


def kernel_main(root: str, requests: int, out: int) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    channel = Channel(out)
    sys.stdout, sys.stderr = Stream("stdout", channel), Stream("stderr", channel)
    kernel = Kernel(root, channel)
    reader = os.fdopen(requests, "rb", buffering=0)  # unbuffered: a request it never started stays queued
    while line := reader.readline():
        try:
            req = json.loads(line)
        except ValueError:
            continue
        kernel.cell(req)
    os._exit(EOF_STATUS)


# ----- the supervisor ------------------------------------------------------------------------------
def descendants(root: int) -> set[int]:
    """Every live process below ``root``, from /proc (parents are read once per call)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    found, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def kill_tree() -> None:
    """Kill every process below this one. Each is stopped first, so none can fork while the tree is
    read, and the tree is read again until it stops changing; then all die at once."""
    me = os.getpid()
    stopped: set[int] = set()
    while True:
        new = descendants(me) - stopped
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped |= new
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:  # reap them all, orphans included: this process is their subreaper
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def supervise(root: str) -> None:
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    requests, out = os.dup(0), os.dup(1)  # the protocol moves off 0 and 1, which become /dev/null
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    def stop(*_: Any) -> None:
        kill_tree()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    channel = Channel(out)
    while True:
        kernel = os.fork()
        if kernel == 0:
            try:
                kernel_main(root, requests, out)
            finally:
                os._exit(0)
        while True:  # wait for the kernel; reap what it orphaned meanwhile
            pid, status = os.wait()
            if pid == kernel:
                break
        kill_tree()
        if os.waitstatus_to_exitcode(status) == EOF_STATUS:
            os._exit(0)
        channel.send({"type": "restarting"}, seq=-1)


if __name__ == "__main__":
    supervise(sys.argv[1])
