"""agentrl: reinforcement learning for LLM agents that use tools.

Environments follow Gymnasium's API with chat messages as observations::

    import agentrl

    with agentrl.make("arithmetic") as env:
        messages, info = env.reset(seed=0)
        messages, reward, terminated, truncated, info = env.step("<tool_call>...</tool_call>")
"""

from agentrl.checker import EnvCheckError, check_env
from agentrl.env import Env, MaxTurns, ResetNeeded, Wrapper
from agentrl.registry import EnvSpec, make, register, registry, spec
from agentrl.tasks import Task
from agentrl.tool_env import ToolEnv
from agentrl.tooling import Tool, tool

__version__ = "0.1.0"

__all__ = [
    "Env",
    "EnvCheckError",
    "EnvSpec",
    "MaxTurns",
    "ResetNeeded",
    "Task",
    "Tool",
    "ToolEnv",
    "Wrapper",
    "check_env",
    "make",
    "register",
    "registry",
    "spec",
    "tool",
]
