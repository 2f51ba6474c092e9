"""Environments: Gymnasium's ``reset``/``step`` contract with chat messages as observations.

- :mod:`~agentrl.envs.core`: ``Env`` and the message, action and step-result types;
- :mod:`~agentrl.envs.wrappers`: ``Wrapper`` and ``MaxTurns``;
- :mod:`~agentrl.envs.tool_env`: ``ToolEnv``, "the model calls tools until it answers";
- :mod:`~agentrl.envs.agent_env`: ``AgentEnv``, your own agent code, trained through a recording endpoint;
- :mod:`~agentrl.envs.tasks`: ``Task`` and held-out splits;
- :mod:`~agentrl.envs.registry`: ``register`` / ``make``;
- :mod:`~agentrl.envs.mix`: ``MixedEnv``, several environments behind one (a recipe's ``env.mix``);
- :mod:`~agentrl.envs.checker`: ``check_env``.
"""

from agentrl.envs.agent_env import AgentEnv
from agentrl.envs.checker import EnvCheckError, check_env
from agentrl.envs.core import Action, Env, Message, ResetNeeded, StepResult
from agentrl.envs.mix import MixedEnv
from agentrl.envs.registry import EnvSpec, make, register, registry, spec
from agentrl.envs.tasks import Task
from agentrl.envs.tool_env import ToolEnv
from agentrl.envs.wrappers import MaxTurns, Wrapper

__all__ = [
    "Action",
    "AgentEnv",
    "Env",
    "EnvCheckError",
    "EnvSpec",
    "MaxTurns",
    "Message",
    "MixedEnv",
    "ResetNeeded",
    "StepResult",
    "Task",
    "ToolEnv",
    "Wrapper",
    "check_env",
    "make",
    "register",
    "registry",
    "spec",
]
