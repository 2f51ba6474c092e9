"""The sandbox server: a long-lived process that forks one hardened child per execution.

Started by :class:`LocalSandbox` (inside bubblewrap when available) with a near-empty environment,
it imports the common modules once, so a child starts with them already loaded: forking a warm
interpreter costs about a millisecond where a fresh ``python -c`` costs tens.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and a JSON object. The first frame
is the configuration; then each request carries an ``id`` and gets exactly one response with that
id. Requests are served concurrently: each child is watched through pipes and a pidfd in a single
``selectors`` loop, and the wall-clock timeout is enforced here with ``killpg``.

Stdlib-only and run as a script: the sandbox must not depend on agentrl being importable inside it.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import shutil
import signal
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import child
import landlock
import seccomp

IDLE_BEFORE_FORK = 0.002
HARD_OUTPUT_FACTOR = 16  # kill a child whose output exceeds this many times the cap
MAX_RECORD = 1 << 20
FILES_CHECK_INTERVAL = 0.05  # seconds between looks at the inodes that running code has created
# The kernel kills at the CPU limit on a clock tick; allow for ticks and rounding in the reported usage.
CPU_LIMIT_SLACK = 0.25
KILLED_FROM_OUTSIDE = "the sandbox worker was killed from outside (SIGKILL), e.g. by the host's out-of-memory killer"


class Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int):
        self.cap, self.data, self.total = cap, bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        dropped = self.total - len(self.data)
        return out + (f"\n...[truncated {dropped} bytes]" if dropped else "")


class Proc:
    """A forked child (one-shot) or session worker, with its pipes."""

    def __init__(self, pid: int, fds: dict[str, int], workdir: str):
        self.pid, self.fds, self.workdir = pid, fds, workdir
        self.pidfd = os.pidfd_open(pid)
        self.exited = False
        self.status: int | None = None
        self.cpu_seconds = 0.0

    def reap(self) -> int:
        if self.status is None:
            _, status, usage = os.wait4(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(status)
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
        return self.status


class Job:
    def __init__(self, rid: int, proc: Proc, timeout: float, cap: int, session: str | None = None):
        self.id, self.proc, self.session = rid, proc, session
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.out, self.err = Capture(cap), Capture(cap)
        self.record = bytearray()
        self.timed_out = False
        self.kill_reason: str | None = None
        self.kill_name = "OutputLimitExceeded"
        self.responded = False


class Server:
    def __init__(self, cfg: dict[str, Any], proto_in: int, proto_out: int):
        self.cfg, self.proto_in, self.proto_out = cfg, proto_in, proto_out
        self.sel = selectors.DefaultSelector()
        self.inbuf = bytearray()
        self.jobs: dict[int, Job] = {}  # by request id
        self.sessions: dict[str, Proc] = {}
        self.session_job: dict[str, Job] = {}
        self.spares: list[Proc] = []
        self.counter = 0
        self.files_used: int | None = None
        self.files_next = 0.0
        os.makedirs(cfg["workroot"], mode=0o711, exist_ok=True)
        os.set_blocking(proto_in, False)
        self.sel.register(proto_in, selectors.EVENT_READ, ("proto", None))

    # ----- plumbing ------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode()
        view = memoryview(struct.pack(">I", len(data)) + data)
        while view:
            view = view[os.write(self.proto_out, view) :]

    @staticmethod
    def limits(cfg: dict[str, Any]) -> dict[str, int]:
        """Per-process limits. CPU seconds are a backstop; the wall-clock timeout is enforced here with killpg."""
        return {
            "RLIMIT_AS": cfg["base_vm"] + cfg["memory_mb"] * 2**20,
            "RLIMIT_CPU": cfg["cpu_seconds"],
            "RLIMIT_FSIZE": cfg["file_size_mb"] * 2**20,
            "RLIMIT_CORE": 0,
            "RLIMIT_NOFILE": cfg["max_open_files"],
        }

    def new_workdir(self) -> str:
        self.counter += 1
        path = os.path.join(self.cfg["workroot"], f"w{os.getpid()}-{self.counter}")
        os.mkdir(path, 0o700)
        if self.cfg.get("uid") is not None and os.getuid() == 0:
            os.chown(path, self.cfg["uid"], self.cfg["gid"])
        return path

    def spawn_spare(self) -> Proc:
        """Fork a child that hardens itself and waits for a job; forking ahead keeps it off the request path."""
        workdir = self.new_workdir()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            child.spare_main(self.cfg, workdir, cmd_r, res_w)  # never returns
        for fd in (out_w, err_w, res_w, cmd_r):
            os.close(fd)
        for fd in (out_r, err_r, res_r):
            os.set_blocking(fd, False)
        proc = Proc(pid, {"out": out_r, "err": err_r, "res": res_r, "cmd": cmd_w}, workdir)
        self.sel.register(proc.pidfd, selectors.EVENT_READ, ("spare-exit", proc))
        return proc

    def take_spare(self) -> Proc:
        proc = self.spares.pop() if self.spares else self.spawn_spare()
        self.sel.unregister(proc.pidfd)
        return proc

    def top_up(self) -> None:
        while len(self.spares) < self.cfg["prefork"]:
            self.spares.append(self.spawn_spare())

    def assign(self, proc: Proc, msg: dict[str, Any]) -> None:
        try:
            os.write(proc.fds["cmd"], json.dumps(msg).encode() + b"\n")
        except OSError:
            pass  # the child is gone; its exit event finishes the job

    def watch(self, proc: Proc, owner: Any) -> None:
        for name in ("out", "err", "res"):
            self.sel.register(proc.fds[name], selectors.EVENT_READ, (name, owner))
        self.sel.register(proc.pidfd, selectors.EVENT_READ, ("exit", owner))

    def dispose(self, proc: Proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in [*proc.fds.values(), proc.pidfd]:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)
        proc.reap()
        shutil.rmtree(proc.workdir, ignore_errors=True)

    # ----- requests ------------------------------------------------------------------------
    def handle(self, req: dict[str, Any]) -> None:
        op, rid = req.get("op"), req.get("id")
        timeout = float(req.get("timeout") or self.cfg["default_timeout"])
        cap = int(req.get("max_output_bytes") or self.cfg["max_output_bytes"])
        if op == "run":
            proc = self.take_spare()
            job = Job(rid, proc, timeout, cap)
            self.jobs[rid] = job
            self.watch(proc, job)
            job_msg = {k: req[k] for k in ("code", "files", "stdin") if k in req}
            self.assign(proc, {"kind": "run", **job_msg})
            # Fork the replacement now, while the job runs on another core, rather than after it.
            self.top_up()
        elif op == "open":
            proc = self.take_spare()
            sid = f"s{rid}"
            self.sessions[sid] = proc
            self.watch(proc, sid)
            self.assign(proc, {"kind": "session"})
            self.send({"id": rid, "session": sid})
        elif op == "cell":
            sid = req["session"]
            proc = self.sessions.get(sid)
            if proc is None or proc.exited:
                msg = {"id": rid, "state_lost": True, "exit_code": None, "error": _lost("the session has ended")}
                if proc is not None:  # it died between cells: reap it now, or it stays a zombie until closed
                    del self.sessions[sid]
                    msg["exit_code"] = proc.reap()
                    msg["error"] = _lost(f"the worker exited with status {msg['exit_code']} between cells")
                    msg.update(self.unexplained_kill(proc, None) or {})
                    self.dispose(proc)
                self.send(msg)
                return
            if sid in self.session_job:
                self.send({"id": rid, "infra_error": "a cell of this session is already running"})
                return
            job = Job(rid, proc, timeout, cap, session=sid)
            self.jobs[rid] = job
            self.session_job[sid] = job
            msg = {k: req[k] for k in ("code", "call", "args", "files", "stdin") if k in req}
            try:
                os.write(proc.fds["cmd"], json.dumps(msg).encode() + b"\n")
            except OSError:
                pass  # the worker is gone; its exit event finishes the job
        elif op == "close":
            proc = self.sessions.pop(req["session"], None)
            if proc is not None:
                job = self.session_job.pop(req["session"], None)
                if job is not None:
                    self.jobs.pop(job.id, None)
                    self.send(self.response(job, lost=True))
                self.dispose(proc)
            self.send({"id": rid, "closed": True})
        elif op == "ping":
            self.send({"id": rid, "pong": True, "jobs": len(self.jobs), "sessions": len(self.sessions)})
        else:
            self.send({"id": rid, "infra_error": f"unknown op {op!r}"})

    # ----- completion ----------------------------------------------------------------------
    def response(self, job: Job, lost: bool = False) -> dict[str, Any]:
        record: dict[str, Any] = {}
        lines = bytes(job.record).splitlines()
        if lines:
            try:
                record = json.loads(lines[-1])
            except ValueError:
                record = {}
        if not isinstance(record, dict):
            record = {}
        msg = {
            "id": job.id,
            "stdout": job.out.text(),
            "stderr": job.err.text(),
            "timed_out": job.timed_out,
            "duration_ms": (time.monotonic() - job.start) * 1000,
            "exit_code": record.get("exit_code"),
            "error": record.get("error"),
            "result": record.get("result"),
            "value": record.get("value"),
            "state_lost": lost,
        }
        if job.kill_reason:
            msg["error"] = {"name": job.kill_name, "value": job.kill_reason, "traceback": ""}
        return msg

    def finish_run(self, job: Job) -> None:
        """Answer a one-shot job: on its result record, or on its exit if it died without one."""
        proc = job.proc
        self.drain(job, ("out", "err", "res"))
        job.responded = True
        msg = self.response(job)
        if proc.exited:
            status = proc.reap()
            if not job.record or job.timed_out or job.kill_reason:
                msg["exit_code"] = status
            if status == 125 and not job.record:
                msg["infra_error"] = "sandbox setup failed: " + job.err.text().strip()[-300:]
            if not job.record.endswith(b"\n"):
                msg.update(self.unexplained_kill(proc, job) or {})
            self.jobs.pop(job.id, None)
            self.dispose(proc)
        else:
            # The record is complete and stdout was flushed before it; the process is only exiting now.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.send(msg)

    def finish_cell(self, job: Job, lost: bool) -> None:
        self.drain(job, ("out", "err"))
        self.jobs.pop(job.id, None)
        self.session_job.pop(job.session, None)
        msg = self.response(job, lost=lost)
        if lost:
            status = job.proc.reap() if job.proc.exited else None
            if job.timed_out or job.kill_reason:
                msg["exit_code"] = None
            else:
                msg["exit_code"] = status
                if not job.record.endswith(b"\n"):
                    msg.update(self.unexplained_kill(job.proc, job) or {})
                if not msg["error"] and not msg.get("infra_error"):
                    msg["error"] = _lost(f"the worker exited with status {status}")
            proc = self.sessions.pop(job.session, None)
            if proc is not None:
                self.dispose(proc)
        self.send(msg)

    def unexplained_kill(self, proc: Proc, job: Job | None) -> dict[str, Any] | None:
        """What to report of a reaped worker that SIGKILL ended before it finished, when this server did
        not send it (its kills set ``timed_out`` or ``kill_reason`` on the job); None for any other end.

        Who else can send it decides whose failure it is. The kernel, at the CPU-time limit: the code's,
        recognised from the CPU time used. The code itself: not under the seccomp filter, which refuses
        SIGKILL by every route that lets the caller choose the signal, and any change to its limits (a
        lowered CPU limit would be a SIGKILL of its choosing). Anyone else (the host's out-of-memory
        killer, an operator): the infrastructure's, so the episode is left out instead of scored.
        Without the filter (isolation ``none``) the code could have sent it, so it stays the code's
        failure there, even when the kill really came from outside.
        """
        if proc.status != -signal.SIGKILL or (job is not None and (job.timed_out or job.kill_reason)):
            return None
        limit = self.cfg["limits"]["RLIMIT_CPU"]
        if proc.cpu_seconds >= limit - CPU_LIMIT_SLACK:
            why = f"the code used up its {limit} s of CPU time and was killed"
            return {"error": {"name": "CPUTimeLimitExceeded", "value": why, "traceback": ""}}
        if self.cfg.get("_seccomp_prog"):
            return {"infra_error": KILLED_FROM_OUTSIDE, "exit_code": None, "error": None}
        why = "the process was killed by SIGKILL, which the sandbox did not send (without seccomp the code can send it)"
        return {"error": {"name": "Killed", "value": why, "traceback": ""}}

    def drain(self, job: Job, names: tuple[str, ...]) -> None:
        for name in names:
            fd = job.proc.fds[name]
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                self.feed(job, name, chunk)

    def feed(self, job: Job, name: str, chunk: bytes) -> None:
        if name == "res":
            job.record += chunk
            if len(job.record) > MAX_RECORD:
                self.kill(job, "the result record is too large")
            return
        cap = job.out if name == "out" else job.err
        cap.feed(chunk)
        if cap.total > cap.cap * HARD_OUTPUT_FACTOR and not job.kill_reason:
            self.kill(job, f"output exceeded {cap.cap * HARD_OUTPUT_FACTOR} bytes; the process was stopped")

    def kill(self, job: Job, reason: str | None = None, name: str = "OutputLimitExceeded") -> None:
        if reason:
            job.kill_reason, job.kill_name = reason, name
        else:
            job.timed_out = True
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def read_chunk(self, fd: int) -> bytes | None:
        """What the pipe holds now; None if nothing, and the pipe leaves the loop at end of file."""
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return None
        if not chunk:
            self.sel.unregister(fd)
            return None
        return chunk

    def on_event(self, kind: str, owner: Any, fd: int) -> None:
        if isinstance(owner, str):  # a session's pipe or exit
            job = self.session_job.get(owner)
            proc = self.sessions.get(owner)
            if kind == "exit":
                if proc is not None:
                    proc.exited = True
                    self.sel.unregister(fd)
                if job is not None:
                    self.drain(job, ("res",))
                    self.finish_cell(job, lost=True)
                return
            chunk = self.read_chunk(fd)
            if chunk is None or job is None:
                return  # nothing to read, or output while idle (a background thread): nobody asked for it
            self.feed(job, kind, chunk)
            if kind == "res" and job.record.endswith(b"\n") and not job.kill_reason:
                self.finish_cell(job, lost=False)
            return
        if kind == "spare-exit":  # a spare died before getting work (e.g. setup failed)
            if owner in self.spares:
                self.spares.remove(owner)
            self.sel.unregister(fd)
            owner.exited = True
            self.dispose(owner)
            return
        job = owner
        if kind == "exit":
            job.proc.exited = True
            if job.responded:
                self.jobs.pop(job.id, None)
                self.dispose(job.proc)
            else:
                self.finish_run(job)
            return
        chunk = self.read_chunk(fd)
        if chunk is None or job.responded:
            return
        self.feed(job, kind, chunk)
        if kind == "res" and job.record.endswith(b"\n") and not job.kill_reason:
            self.finish_run(job)

    def read_requests(self) -> bool:
        try:
            chunk = os.read(self.proto_in, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False  # the client is gone
        self.inbuf += chunk
        while len(self.inbuf) >= 4:
            (n,) = struct.unpack(">I", self.inbuf[:4])
            if len(self.inbuf) < 4 + n:
                break
            req = json.loads(self.inbuf[4 : 4 + n])
            del self.inbuf[: 4 + n]
            try:
                self.handle(req)
            except Exception as exc:
                self.send({"id": req.get("id"), "infra_error": f"server error: {type(exc).__name__}: {exc}"})
        return True

    def serve(self) -> None:
        while True:
            now = time.monotonic()
            for job in list(self.jobs.values()):
                if not job.responded and not job.timed_out and not job.kill_reason and now >= job.deadline:
                    self.kill(job)
            deadlines = [j.deadline for j in self.jobs.values() if not (j.timed_out or j.responded)]
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            if deadlines and self.cfg.get("max_files"):
                self.check_files(now)
                wait = min(wait, FILES_CHECK_INTERVAL)
            if len(self.spares) < self.cfg["prefork"]:
                # Fork replacements only when nothing arrives for a moment: a fork costs about a
                # millisecond, and a request that arrives meanwhile would wait for it.
                wait = IDLE_BEFORE_FORK if wait is None else min(wait, IDLE_BEFORE_FORK)
            events = self.sel.select(wait)
            if not events and len(self.spares) < self.cfg["prefork"]:
                self.spares.append(self.spawn_spare())
            for key, _ in events:
                kind, owner = key.data
                if kind == "proto":
                    if not self.read_requests():
                        return
                # An earlier event of this batch may have closed this fd (and a new child may reuse its number).
                elif self.sel.get_map().get(key.fd) is key:
                    self.on_event(kind, owner, key.fd)

    def check_files(self, now: float) -> None:
        """Stop running code that creates more than ``max_files`` files and directories.

        No rlimit counts inodes, and empty files exhaust a tmpfs or a disk's inodes long before its
        bytes. ``statvfs`` says cheaply how many inodes the working directories' filesystem uses; only
        when that grew by more than the budget since the last look are the running jobs' directories
        counted. Growth from elsewhere on a shared filesystem only costs a count; a job stays within
        about twice the budget plus what it creates in one interval (a few thousand empty files on a fast
        machine). (A filesystem that reports no inode counts is not bounded this way.)
        """
        if now < self.files_next:
            return
        self.files_next = now + FILES_CHECK_INTERVAL
        limit = self.cfg["max_files"]
        st = os.statvfs(self.cfg["workroot"])
        used = st.f_files - st.f_ffree
        if self.files_used is None or used < self.files_used:
            self.files_used = used  # deletions lower the baseline
        if used - self.files_used <= limit:
            return
        self.files_used = used
        for job in list(self.jobs.values()):
            if job.responded or job.timed_out or job.kill_reason:
                continue
            if _count_entries(job.proc.workdir, limit) > limit:
                why = f"the code created more than {limit} files and directories; the process was stopped"
                self.kill(job, why, "FileLimitExceeded")

    def shutdown(self) -> None:
        for proc in [j.proc for j in self.jobs.values()] + list(self.sessions.values()) + self.spares:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _count_entries(path: str, stop: int) -> int:
    """Files and directories below ``path``; counting ends once past ``stop``."""
    count, stack = 0, [path]
    while stack and count <= stop:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if count > stop:
                        break
        except OSError:
            pass
    return count


def _lost(why: str) -> dict[str, str]:
    return {"name": "SessionLost", "value": f"{why}; all variables and files of the session are gone", "traceback": ""}


def _base_vm() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the client
    # The protocol moves to private descriptors; fds 0 and 1 become /dev/null so children cannot reach it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.set_inheritable(proto_in, False)
    os.set_inheritable(proto_out, False)
    header = os.read(proto_in, 4)
    (n,) = struct.unpack(">I", header)
    raw = b""
    while len(raw) < n:
        raw += os.read(proto_in, n - len(raw))
    cfg = json.loads(raw)
    for name in cfg.get("preimport", []):
        try:
            importlib.import_module(name)
        except Exception:
            pass
    cfg["server_pid"] = os.getpid()
    cfg["base_vm"] = _base_vm()
    cfg["limits"] = Server.limits(cfg)
    cfg["_seccomp_prog"] = seccomp.compile_program() if cfg.get("seccomp") else None
    abi = landlock.abi_version() if cfg.get("landlock") else 0
    cfg["landlock_abi"] = abi
    cfg["_read_fds"] = landlock.open_paths(cfg.get("read_paths", [])) if abi else []
    cfg["_write_fds"] = landlock.open_paths(["/dev/null"]) if abi else []
    server = Server(cfg, proto_in, proto_out)
    server.top_up()
    server.send(
        {"id": 0, "ready": True, "pid": os.getpid(), "landlock_abi": abi, "seccomp": bool(cfg["_seccomp_prog"])}
    )
    try:
        server.serve()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
