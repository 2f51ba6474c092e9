"""Environment registry: ``register`` an id once, ``make`` it anywhere.

Entry points are ``"module:Name"`` strings resolved on ``make``, so registering costs nothing and
nothing is imported until an environment is actually built. Third-party environments need no
registration at all: ``make("my_pkg.envs:MyEnv")`` imports and builds the class directly.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.envs.core import Env
from agentrl.envs.wrappers import MaxTurns
from agentrl.errors import EnvNotFound


@dataclass
class EnvSpec:
    """Everything needed to build one registered environment."""

    id: str
    """Name passed to ``agentrl.make``."""
    entry_point: str | Callable[..., Env]
    """``"module:Attr"`` or a callable returning an Env."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Default constructor arguments; ``make(**kwargs)`` overrides them."""
    max_turns: int | None = None
    """Wrap in ``MaxTurns`` with this limit (truncates the episode); None for no limit."""
    description: str = ""
    """One line shown by ``agentrl envs``."""

    def load(self) -> Callable[..., Env]:
        return load_entry_point(self.entry_point)

    def make(self, **kwargs: Any) -> Env:
        max_turns = kwargs.pop("max_turns", self.max_turns)
        servers = kwargs.pop("mcp_servers", None) or ()
        env = self.load()(**{**self.kwargs, **kwargs})
        if not isinstance(env, Env):
            raise TypeError(f"entry point of {self.id!r} returned {type(env).__name__}, not an agentrl.Env")
        env.spec = self
        if servers:
            _add_mcp_tools(env, self.id, servers)
        return MaxTurns(env, max_turns) if max_turns is not None else env

    @property
    def summary(self) -> str:
        """The description, or the first docstring line of the entry point."""
        if self.description:
            return self.description
        doc = (self.load().__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def _add_mcp_tools(env: Env, env_id: str, servers: Any) -> None:
    """Give a tool environment the tools of MCP servers besides its own (a recipe's ``env.mcp``)."""
    from agentrl.envs.tool_env import ToolEnv
    from agentrl.errors import UserError
    from agentrl.tools.mcp_tools import server_from, tools_of

    if not isinstance(env, ToolEnv):
        raise UserError(f"MCP servers add tools to a ToolEnv; {env_id!r} is a {type(env).__name__}")
    if isinstance(servers, Mapping) or not isinstance(servers, Sequence) or isinstance(servers, str):
        raise UserError(f"mcp servers are a list of mappings with a command or a url, got {servers!r}")
    for spec in servers:
        try:
            env.add_tools(tools_of(server_from(spec)))
        except ValueError as exc:  # a name the environment's tools (or another server's) already use
            raise UserError(f"{exc} in {env_id!r}; give the MCP server a prefix (prefix: 'mcp_')") from None


def with_mcp(kwargs: Mapping[str, Any], servers: Sequence[Any] | None) -> dict[str, Any]:
    """An environment's kwargs for :func:`make` with a recipe's MCP servers (``env.mcp``) under ``mcp_servers``."""
    return {**kwargs, "mcp_servers": list(servers)} if servers else dict(kwargs)


_REGISTRY: dict[str, EnvSpec] = {}


def _from_file(path: str) -> Any:
    """A module loaded from a Python file (agent code that is not an installed package), once per file."""
    import hashlib
    import importlib.util
    import sys
    from pathlib import Path

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise EnvNotFound(f"no file {path!r} (relative paths are from the current directory, {Path.cwd()})")
    name = f"agentrl_user_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_entry_point(entry_point: str | Callable[..., Env]) -> Callable[..., Env]:
    if callable(entry_point):
        return entry_point
    module_name, sep, attr = entry_point.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry point must look like 'package.module:Name' or 'file.py:Name', got {entry_point!r}")
    try:
        module = _from_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the entry point's own module missing is a wrong name; an import failing inside it is its bug.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise EnvNotFound(f"cannot import {module_name!r} for environment entry point {entry_point!r}") from None
        raise
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise EnvNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TypeError(f"{entry_point!r} is not callable")
    return obj


def register(
    env_id: str,
    entry_point: str | Callable[..., Env],
    *,
    max_turns: int | None = None,
    description: str = "",
    **defaults: Any,
) -> EnvSpec:
    """Register an environment id. Re-registering an id replaces it (useful in notebooks)."""
    if not env_id or ":" in env_id:
        raise ValueError(f"invalid environment id {env_id!r} (':' is reserved for 'module:Name' entry points)")
    spec = EnvSpec(env_id, entry_point, dict(defaults), max_turns, description)
    _REGISTRY[env_id] = spec
    return spec


def spec(env_id: str) -> EnvSpec:
    """The spec of a registered id, or of a ``"module:Name"`` entry point."""
    if env_id in _REGISTRY:
        return _REGISTRY[env_id]
    if ":" in env_id:
        return EnvSpec(env_id, env_id)
    close = difflib.get_close_matches(env_id, list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise EnvNotFound(
        f"no environment named {env_id!r}.{hint} Run `agentrl envs` to list them, or pass 'package.module:ClassName'."
    )


def make(env_id: str, **kwargs: Any) -> Env:
    """Build an environment by id or ``"module:Name"``; ``max_turns=`` overrides the spec's limit.

    ``mcp_servers=[{"command": ...} or {"url": ...}, ...]`` adds the tools of MCP servers to a tool environment's
    own (see :func:`agentrl.tools.from_mcp` for the keys); the name is reserved by ``make``."""
    return spec(env_id).make(**kwargs)


def registry() -> dict[str, EnvSpec]:
    """A copy of all registered specs, by id."""
    return dict(_REGISTRY)


# Built-in environments. Strings only: nothing is imported until make() is called.
register(
    "arithmetic",
    "agentrl.environments.arithmetic:ArithmeticEnv",
    max_turns=4,
    description="Multi-digit arithmetic with a calculator tool; exact integer answers.",
)
register(
    "math-python",
    "agentrl.environments.math_python:MathPythonEnv",
    max_turns=6,
    description="Math word problems solved with a sandboxed Python tool; numeric answers, GSM8K JSONL loader.",
)
register(
    "code-tests",
    "agentrl.environments.code_tests:CodeTestsEnv",
    max_turns=6,
    description="Write a function that passes hidden unit tests; HumanEval/MBPP JSONL loader, trusted grading.",
)
register(
    "reasoning-gym",
    "agentrl.environments.reasoning_gym_env:ReasoningGymEnv",
    max_turns=4,
    description="Any reasoning_gym dataset as an environment, scored by its own score_answer.",
)
register(
    "codebreaker",
    "agentrl.environments.codebreaker:CodebreakerEnv",
    max_turns=12,
    description="Multi-turn code-breaking game: feedback every turn, shaped per-turn and terminal rewards.",
)
register(
    "function-calling",
    "agentrl.environments.function_calling:FunctionCallingEnv",
    max_turns=8,
    description="Call JSON-schema APIs on a simulated backend with the right arguments in the right order.",
)
register(
    "sandbox-puzzles",
    "agentrl.environments.sandbox_puzzles:SandboxPuzzlesEnv",
    max_turns=4,
    description="Letter counts, digit sums, distinct counts, date gaps: one line of sandboxed Python answers each.",
)
register(
    "sql-mcp",
    "agentrl.environments.sql_mcp:SqlMcpEnv",
    max_turns=3,
    description="Questions about a SQLite database, queried through a third-party MCP server (MCP Alchemy).",
)
