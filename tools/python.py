"""The ``python`` tool: a stateful, sandboxed Python session per episode.

Variables persist across the model's calls within one episode, as in a notebook. Each episode
(each ``reset``) starts a fresh session; a cell that times out or crashes ends the session, and the
model is told that its state is gone. A failure of the sandbox itself raises
:class:`~agentrl.tooling.InfraError`, so the episode is excluded from training instead of being
scored as the model's mistake.
"""

from __future__ import annotations

import atexit
import threading

from agentrl.tools.sandbox.base import ExecResult, Sandbox, Session
from agentrl.tools.sandbox.local import HARNESS_GRACE
from agentrl.tools.tool import InfraError, Tool, tool

_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """One shared :class:`LocalSandbox` per process, started on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            from agentrl.tools.sandbox.local import LocalSandbox

            _default = LocalSandbox()
            atexit.register(_default.close)
        return _default


def format_result(res: ExecResult, *, timeout: float, max_chars: int) -> str:
    """What the model reads: stdout, the tail of stderr, the error, the final expression's value."""
    parts = []
    if res.stdout:
        parts.append(_head(res.stdout, max_chars))
    if res.stderr and not res.error:
        parts.append("[stderr]\n" + _tail(res.stderr, max_chars // 2))
    if res.error:
        tb = res.error.traceback.strip() or f"{res.error.name}: {res.error.value}"
        parts.append("[error]\n" + _tail(tb, max_chars // 2))
    if res.result is not None:
        parts.append(res.result if not parts else "[result]\n" + res.result)
    if res.timed_out:
        parts.append(f"[timed out after {timeout:g} s; the session was restarted and all variables are gone]")
    elif res.state_lost:
        parts.append("[the session ended; all variables are gone, the next call starts a fresh one]")
    return "\n".join(p.rstrip("\n") for p in parts) if parts else "(no output)"


def _head(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f"\n...[{len(text) - n} more characters]"


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else f"...[{len(text) - n} characters before]\n" + text[-n:]


def python_tool(
    sandbox: Sandbox | None = None,
    *,
    timeout: float = 10.0,
    max_output_chars: int = 4000,
    name: str = "python",
) -> Tool:
    """A ``python(code)`` tool backed by one sandbox session per episode.

    Args:
        sandbox: Backend to run in; the process-wide :class:`LocalSandbox` by default.
        timeout: Seconds one call may run before it is killed.
        max_output_chars: Cap on the text returned to the model.
        name: Tool name shown to the model.
    """
    state: dict[str, Session | None] = {"session": None}
    lock = threading.Lock()

    def session() -> Session:
        with lock:
            if state["session"] is None:
                state["session"] = (sandbox or default_sandbox()).session()
            return state["session"]

    def end() -> None:
        with lock:
            current, state["session"] = state["session"], None
        if current is not None:
            current.close()

    def python(code: str) -> str:
        """Run Python code in a persistent sandbox. Variables survive between calls; print what you need to see.

        Args:
            code: Python source to execute. The value of a final expression is shown, as in a notebook.
        """
        res = session().run(code, timeout=timeout)
        if res.infra_error:
            end()
            raise InfraError(res.infra_error)
        return format_result(res, timeout=timeout, max_chars=max_output_chars)

    t = tool(python, name=name, timeout=timeout + HARNESS_GRACE + 5)
    t.timeout_is_infra = True  # the sandbox enforces `timeout`; the tool's own limit only catches a hung backend
    t.on_reset = end
    t.on_close = end
    return t
