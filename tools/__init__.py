"""Ready-made tools and sandboxes for agentrl environments (installed as ``agentrl.tools``).

Importing starts no process: a sandbox server starts when a sandbox is first created.
"""

from agentrl.tools.calculator import calculator, evaluate_expression
from agentrl.tools.python import default_sandbox, python_tool
from agentrl.tools.sandbox.base import ExecError, ExecResult, Isolation, Sandbox, SandboxError, Session
from agentrl.tools.sandbox.local import LocalSandbox, LocalSession, probe


def __getattr__(name: str):
    if name == "E2BSandbox":  # imported on demand: the e2b package is an optional extra
        from agentrl.tools.sandbox.e2b import E2BSandbox

        return E2BSandbox
    raise AttributeError(f"module 'agentrl.tools' has no attribute {name!r}")


__all__ = [
    "E2BSandbox",
    "ExecError",
    "ExecResult",
    "Isolation",
    "LocalSandbox",
    "LocalSession",
    "Sandbox",
    "SandboxError",
    "Session",
    "calculator",
    "default_sandbox",
    "evaluate_expression",
    "probe",
    "python_tool",
]
