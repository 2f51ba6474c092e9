"""A seccomp filter for sandbox children, built with libseccomp through ctypes.

ctypes rather than the ``seccomp`` Python bindings: those ship with the system's Python only, not
on PyPI, and a virtual environment cannot see them. libseccomp itself (``libseccomp.so.2``) is on
nearly every Linux distribution.

The filter allows everything except what lets code leave its process or reach the outside:

* new processes: ``fork``/``vfork``, and ``clone`` without ``CLONE_THREAD`` (threads stay allowed);
  ``clone3`` answers ENOSYS so that libc falls back to ``clone``, whose flags we can inspect;
* sockets (``socketpair`` stays: it cannot reach anything, and asyncio needs it);
* signals to any process but itself; pidfds;
* SIGKILL, even to itself, by any route that lets the code choose the signal: ``kill``/``tgkill``/
  ``rt_sigqueueinfo``/``rt_tgsigqueueinfo`` with SIGKILL, ``fcntl(F_SETSIG)``, ``timer_create`` and
  ``mq_notify`` (their signal number sits in a struct that a filter cannot read). A worker that dies of
  SIGKILL was then killed by the server (which knows it did), by the kernel's CPU limit (which the
  server recognises from the CPU time used), or from outside: the host's OOM killer or an operator,
  which is the infrastructure's failure. Without this the code could kill itself and have its failed
  episode excluded from training as an infrastructure failure;
* ptrace and cross-process memory access;
* mounts, namespaces, chroot; io_uring (it can bypass this filter); bpf, perf, keyrings, modules;
* raising resource limits.

Blocked calls fail with EPERM rather than killing the process, so the policy's code sees a normal
Python error it can learn from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_NNP = 3
SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7
CLONE_THREAD = 0x00010000
SIGKILL = 9
F_SETSIG = 10
LOW_32 = 0xFFFFFFFF  # the kernel reads int arguments from the low half of the register


def SCMP_ACT_ERRNO(code: int) -> int:
    return 0x00050000 | (code & 0x0000FFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


DENY_ALWAYS = [
    "fork",
    "vfork",
    "socket",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "tkill",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "setrlimit",
    "quotactl",
    "name_to_handle_at",
    "open_by_handle_at",
    # Both deliver a signal of the caller's choice, SIGKILL included, named inside a struct sigevent.
    "timer_create",
    "mq_notify",
]
# Signals: only to this very process (kill(getpid(), ...) and thread-directed tgkill).
DENY_UNLESS_SELF = ["kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"]
# ... and never SIGKILL, whose argument position differs per call.
SIGNAL_ARG = {"kill": 1, "tgkill": 2, "rt_sigqueueinfo": 1, "rt_tgsigqueueinfo": 2}

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib = lib
    return _lib


def available() -> bool:
    """True if libseccomp can be loaded (the kernel side is checked when a filter is installed)."""
    try:
        _libseccomp()
    except OSError:
        return False
    return True


_PID_PLACEHOLDER = 0x5EC0FFEE  # stands for "the child's own pid" in the exported program
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _build(lib: ctypes.CDLL, pid: int) -> int:
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1)
    eperm = SCMP_ACT_ERRNO(errno.EPERM)

    def add(action: int, name: str, *cmps: _ArgCmp) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not on this architecture
            return
        arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc < 0:
            lib.seccomp_release(ctx)
            raise OSError(-rc, f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")

    for name in DENY_ALWAYS:
        add(eperm, name)
    add(eperm, "clone", _ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0))
    add(SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")
    for name in DENY_UNLESS_SELF:
        add(eperm, name, _ArgCmp(0, SCMP_CMP_NE, pid, 0))
        # Compare only the low 32 bits: a raw syscall with junk in the upper half still means SIGKILL.
        add(eperm, name, _ArgCmp(SIGNAL_ARG[name], SCMP_CMP_MASKED_EQ, LOW_32, SIGKILL))
    for name in ("fcntl", "fcntl64"):  # F_SETSIG picks the signal that O_ASYNC I/O sends to the owner
        add(eperm, name, _ArgCmp(1, SCMP_CMP_MASKED_EQ, LOW_32, F_SETSIG))
    add(eperm, "prlimit64", _ArgCmp(2, SCMP_CMP_NE, 0, 0))  # setting a limit; reading stays allowed
    return ctx


def compile_program() -> bytes:
    """The filter as classic BPF, with a placeholder where the child's pid goes.

    libseccomp needs about a millisecond to build and compile the filter. The server does it once;
    each child only patches in its pid and loads the program, which takes microseconds.
    """
    lib = _libseccomp()
    ctx = _build(lib, _PID_PLACEHOLDER)
    r, w = os.pipe()
    try:
        rc = lib.seccomp_export_bpf(ctx, w)
        os.close(w)
        if rc < 0:
            raise OSError(-rc, "seccomp_export_bpf failed")
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
        lib.seccomp_release(ctx)
    prog = b"".join(chunks)
    if not prog or len(prog) % 8 or _PID_PLACEHOLDER.to_bytes(4, "little") not in prog:
        raise OSError("seccomp_export_bpf produced an unexpected program")
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def load_program(prog: bytes, pid: int | None = None) -> None:
    """Install a program from :func:`compile_program` on the calling process (irreversible)."""
    pid = os.getpid() if pid is None else pid
    # Each instruction is (u16 code, u8 jt, u8 jf, u32 k); patch k wherever it holds the placeholder.
    buf = bytearray(prog)
    placeholder = _PID_PLACEHOLDER.to_bytes(4, "little")
    for off in range(4, len(buf), 8):
        if buf[off : off + 4] == placeholder:
            buf[off : off + 4] = pid.to_bytes(4, "little")
    data = bytes(buf)
    fprog = _SockFprog(len(data) // 8, data)
    libc = _libc
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "loading the seccomp filter failed")


def install(pid: int | None = None) -> None:
    """Build and install the filter in one go (slower; for one-off use)."""
    load_program(compile_program(), pid)
