"""Tools for agentrl environments (installed as ``agentrl.tools``).

- :mod:`~agentrl.tools.tool`: the ``@tool`` decorator, ``Tool`` and ``InfraError``;
- :mod:`~agentrl.tools.runner`: ``ToolRunner``, which validates and runs one turn's calls;
- :mod:`~agentrl.tools.sandbox`: ``LocalSandbox`` and ``E2BSandbox``, one interface;
- :mod:`~agentrl.tools.python`: the sandboxed ``python`` tool; :mod:`~agentrl.tools.calculator_tool`;
- :mod:`~agentrl.tools.grading`: grading code in the trusted process;
- :mod:`~agentrl.tools.mcp_tools`: ``from_mcp``, the tools of an MCP server (stdio or streamable HTTP).

Importing starts no process: a sandbox server starts when a sandbox is first created.
"""

from agentrl.lazy import lazy_exports
from agentrl.tools.tool import InfraError, Tool, tool

# Imported on first use: building the calculator's schema imports transformers, and `import agentrl`
# (which needs the tool decorator above) must stay light.
_EXPORTS = {
    "calculator": "agentrl.tools.calculator_tool",
    "evaluate_expression": "agentrl.tools.calculator_tool",
    "default_sandbox": "agentrl.tools.python",
    "python_tool": "agentrl.tools.python",
    "ExecError": "agentrl.tools.sandbox.base",
    "ExecResult": "agentrl.tools.sandbox.base",
    "Isolation": "agentrl.tools.sandbox.base",
    "Sandbox": "agentrl.tools.sandbox.base",
    "SandboxError": "agentrl.tools.sandbox.base",
    "Session": "agentrl.tools.sandbox.base",
    "LocalSandbox": "agentrl.tools.sandbox.local",
    "LocalSession": "agentrl.tools.sandbox.local",
    "probe": "agentrl.tools.sandbox.local",
    "E2BSandbox": "agentrl.tools.sandbox.e2b",  # the e2b package is an optional extra
    "ToolRunner": "agentrl.tools.runner",
    "from_mcp": "agentrl.tools.mcp_tools",  # the mcp SDK is an optional extra
    "close_servers": "agentrl.tools.mcp_tools",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "InfraError",
    "Tool",
    "tool",
    *sorted(_EXPORTS),
]
