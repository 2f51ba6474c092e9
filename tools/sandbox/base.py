"""The sandbox interface shared by every backend.

``Sandbox.run`` executes one program in a fresh process; ``Sandbox.session()`` keeps a Python
namespace alive across cells, which is what a multi-turn episode uses. Both return an
:class:`ExecResult`. Two kinds of failure are kept apart on purpose:

* the *code's* failures (an exception, a non-zero exit, its own timeout) are facts about the
  policy's answer and go back to the model;
* the *infrastructure's* failures (a crashed server, a backend error, the harness's own deadline)
  set ``infra_error``. The rollout engine leaves such episodes out of the reward statistics, so an
  outage is never scored as the model's mistake.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

FileMap = dict[str, "str | bytes"]


class Isolation(enum.IntEnum):
    """How strongly a backend contains code. Higher is stronger; ``strict=True`` refuses to run below it."""

    NONE = 0
    """Resource limits and a private directory only. Do not run untrusted code."""
    STANDARD = 1
    """seccomp (no new processes, sockets, signals to others, ptrace, mounts) + Landlock file confinement +
    an unprivileged user + resource limits. No mount, PID or network namespaces."""
    STRONG = 2
    """STANDARD inside bubblewrap: read-only root, private /tmp, hidden home directories, no network
    namespace, its own PID namespace. A remote microVM (E2B) is also STRONG."""

    @classmethod
    def parse(cls, value: str | int | Isolation) -> Isolation:
        if isinstance(value, Isolation):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown isolation level {value!r}; use one of {[m.name.lower() for m in cls]}") from None


@dataclass
class ExecError:
    """An exception raised by the executed code."""

    name: str
    value: str
    traceback: str


@dataclass
class ExecResult:
    """What one execution produced."""

    stdout: str = ""
    """Standard output, capped; a marker says how much was cut."""
    stderr: str = ""
    """Standard error, capped the same way."""
    exit_code: int | None = 0
    """Process exit status (negative: killed by that signal); None if it never finished."""
    timed_out: bool = False
    """The code ran past its own timeout and was killed. A task failure, not an infrastructure one."""
    error: ExecError | None = None
    """The uncaught exception, if any."""
    duration_ms: float = 0.0
    """Wall time of the execution, as measured by the backend."""
    backend: str = ""
    """Which backend ran it ("local", "e2b")."""
    result: str | None = None
    """Sessions only: repr of the cell's final expression, as a notebook shows it."""
    state_lost: bool = False
    """Sessions only: the worker ended (timeout, crash, exit) and its variables and files are gone."""
    infra_error: str | None = None
    """Set when the sandbox itself failed; the code's outcome is then unknown."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Ran to completion without an exception, a timeout or an infrastructure failure."""
        return (
            self.infra_error is None
            and not self.timed_out
            and self.error is None
            and self.exit_code == 0
            and not self.state_lost
        )


class SandboxError(RuntimeError):
    """The sandbox cannot be used at all (missing dependency, bad configuration, too weak isolation)."""


class Session(abc.ABC):
    """A stateful Python worker: variables defined in one cell are visible in the next."""

    @abc.abstractmethod
    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        """Execute one cell."""

    def call(self, name: str, args: Any, *, timeout: float | None = None) -> dict[str, Any]:
        """Call ``name(*args)``, a function the session's cells defined, and return the raw response.

        This is how trusted grading (:mod:`agentrl.tools.grading`) runs a candidate without ever
        handing it the expected answers. ``args`` is a list already encoded by
        :func:`agentrl.tools.sandbox.plain.encode`; it crosses as JSON, and so does the answer. The
        response is a dict with these keys, the same for every backend:

        * ``value``: the return value, encoded by ``plain.encode`` *inside the sandbox*, so it is
          untrusted data: decode it with ``plain.decode`` and compare with ``plain.strict_equal``;
        * ``error``: None, or ``{"name", "value", "traceback"}`` when the call raised (``SystemExit``
          included) or the value was not plain;
        * ``exit_code``, ``stdout``, ``stderr``, ``duration_ms``;
        * ``timed_out``: the call ran past ``timeout`` (the code's failure); the worker was killed;
        * ``state_lost``: the worker ended (timeout, crash, exit) and the session's variables are gone;
        * ``infra_error``: set only by the backend, never from anything the code can write: the
          sandbox itself failed and the call's outcome is unknown.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot call functions in the sandbox")

    @abc.abstractmethod
    def close(self) -> None:
        """End the worker and delete its files."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sandbox(abc.ABC):
    """Runs untrusted Python code. Backends: :class:`LocalSandbox` (default) and :class:`E2BSandbox`."""

    backend: str = ""
    isolation: Isolation = Isolation.NONE

    @abc.abstractmethod
    def run(
        self, code: str, *, timeout: float | None = None, files: FileMap | None = None, stdin: str | bytes | None = None
    ) -> ExecResult:
        """Execute ``code`` as a fresh program in a private working directory holding ``files``."""

    @abc.abstractmethod
    def session(self) -> Session:
        """Open a stateful session."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every process or remote sandbox held."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_files(files: FileMap | None) -> dict[str, bytes]:
    """Validate relative paths (no absolute paths, no ``..``) and encode contents to bytes."""
    out: dict[str, bytes] = {}
    for path, content in (files or {}).items():
        parts = path.replace("\\", "/").split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"file path {path!r} must be relative, without '.' or '..' parts")
        out["/".join(parts)] = content.encode() if isinstance(content, str) else bytes(content)
    return out
