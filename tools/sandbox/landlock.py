"""Landlock file-system confinement for sandbox children, through raw syscalls.

Landlock (Linux 5.13+) lets an unprivileged process restrict *itself*: after
``restrict_self``, it can only read beneath the allowed read paths and only write beneath the
allowed write paths, whatever the file permissions say. This confines the file system even where
bubblewrap is not available, and narrows it further where it is: the child sees the Python standard
library and an allowlist of packages, not the rest of site-packages (where a data set's answers may
live), not /proc, not home directories.

The server opens the allowed paths once (``O_PATH``) and each child builds its own ruleset from
those descriptors, which takes a few dozen cheap syscalls.
"""

from __future__ import annotations

import ctypes
import os

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # same numbers on every architecture
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ_ONLY = EXECUTE | READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 if Landlock is unavailable or disabled."""
    try:
        v = _libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    except (AttributeError, OSError):
        return 0
    return max(int(v), 0)


def handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def open_paths(paths: list[str]) -> list[tuple[int, bool]]:
    """Open existing paths with O_PATH; returns (fd, is_dir) pairs for the children to use."""
    out = []
    for p in dict.fromkeys(paths):
        try:
            fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        out.append((fd, os.path.isdir(p)))
    return out


def restrict_self(abi: int, read: list[tuple[int, bool]], write: list[tuple[int, bool]]) -> None:
    """Allow reading beneath ``read`` and everything beneath ``write``; deny the rest. Irreversible."""
    fs = handled_fs(abi)
    attr = _RulesetAttr(handled_access_fs=fs)
    size = ctypes.sizeof(ctypes.c_uint64)
    if abi >= 6:  # also refuse signals and abstract unix sockets outside the sandbox's own domain
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = ctypes.sizeof(_RulesetAttr)
    ruleset = _libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for rights, entries in ((READ_ONLY, read), (fs, write)):
            for fd, is_dir in entries:
                allowed = rights & fs if is_dir else rights & fs & FILE_RIGHTS
                rule = _PathBeneath(allowed_access=allowed, parent_fd=fd)
                if (
                    _libc.syscall(
                        SYS_ADD_RULE,
                        ctypes.c_int(ruleset),
                        ctypes.c_int(RULE_PATH_BENEATH),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    )
                    < 0
                ):
                    raise OSError(ctypes.get_errno(), "landlock_add_rule failed")
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        if _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
