"""Code sandboxes: run untrusted, model-written Python safely (``agentrl.tools.sandbox``)."""

from agentrl.tools.sandbox.base import ExecError, ExecResult, Isolation, Sandbox, SandboxError, Session
from agentrl.tools.sandbox.local import LocalSandbox, LocalSession, probe

__all__ = [
    "ExecError",
    "ExecResult",
    "Isolation",
    "LocalSandbox",
    "LocalSession",
    "Sandbox",
    "SandboxError",
    "Session",
    "probe",
]
