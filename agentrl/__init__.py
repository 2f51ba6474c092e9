"""agentrl: reinforcement learning for LLM agents that use tools.

Environments follow Gymnasium's API with chat messages as observations::

    import agentrl

    with agentrl.make("arithmetic") as env:
        messages, info = env.reset(seed=0)
        messages, reward, terminated, truncated, info = env.step("<tool_call>...</tool_call>")

The package follows the loop: :mod:`agentrl.envs` (environments), :mod:`agentrl.tools` (tools,
sandbox, grading), :mod:`agentrl.chat` (templates, token-exact conversations, tool-call parsing),
:mod:`agentrl.rollout` (episodes and generation backends), :mod:`agentrl.train` (GRPO) and
:mod:`agentrl.eval` (held-out evaluation and reports). The names above are re-exported here, so user
code does not depend on where a module lives.
"""

import logging as _logging

# bitsandbytes' CPU backend warns on import that it could not fetch an optional faster kernel from the
# model hub (kernels-community). Offline that is expected and its fallback is exact, so the line is noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

from agentrl.envs import (  # noqa: E402
    Env,
    EnvCheckError,
    EnvSpec,
    MaxTurns,
    ResetNeeded,
    Task,
    ToolEnv,
    Wrapper,
    check_env,
    make,
    register,
    registry,
    spec,
)
from agentrl.errors import UserError  # noqa: E402
from agentrl.tools.tool import InfraError, Tool, tool  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Env",
    "EnvCheckError",
    "EnvSpec",
    "InfraError",
    "MaxTurns",
    "ResetNeeded",
    "Task",
    "Tool",
    "ToolEnv",
    "UserError",
    "Wrapper",
    "check_env",
    "make",
    "register",
    "registry",
    "spec",
    "tool",
]
