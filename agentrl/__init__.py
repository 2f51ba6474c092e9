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


def _from_a_checkout() -> None:
    """Make ``agentrl.tools`` and ``agentrl.environments`` importable from a source checkout that is not installed.

    They live at the top of the repository (``tools/``, ``environments/``) and are mapped into the package when
    it is installed. A checkout on a machine where nothing can be installed (the GPU device check puts it on
    ``PYTHONPATH``) would otherwise fail on its first import. Installed, they are found and nothing is added.
    """
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    if importlib.util.find_spec("agentrl.tools") is not None:
        return
    root = Path(__file__).resolve().parent.parent

    class Checkout(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):  # type: ignore[override]
            if fullname not in ("agentrl.tools", "agentrl.environments"):
                return None
            init = root / fullname.removeprefix("agentrl.") / "__init__.py"
            if not init.is_file():
                return None
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])

    sys.meta_path.append(Checkout())


_from_a_checkout()

from agentrl.envs import (  # noqa: E402
    AgentEnv,
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
    "AgentEnv",
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
