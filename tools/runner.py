"""The tool runner: validates and executes one turn's parsed tool calls, always returning messages.

Every call ends as a ``tool`` message: a result, or an error the model can read (unknown tool,
arguments that fail the JSON schema, an exception, a timeout). A tool that raises
:class:`~agentrl.tools.tool.InfraError` (or an exception type the environment declared as the
infrastructure's, such as ``ConnectionError`` for a remote API) marks the episode as a failure of the
infrastructure, which the trainer leaves out of its statistics instead of scoring it as the model's.
Any other exception is the model's: its arguments or its code made the tool fail, and it reads why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl import faults
from agentrl.chat.parsing import ToolCall
from agentrl.tools.tool import (
    DEFAULT_MAX_OUTPUT_CHARS,
    InfraError,
    Tool,
    ToolTimeout,
    as_tool,
    format_result,
    safe_str,
    truncate,
)


@dataclass
class ToolOutcome:
    """What happened to one call: the message for the model plus bookkeeping for metrics."""

    message: dict[str, Any]
    ok: bool
    error_kind: str | None = None  # "unknown_tool" | "invalid_arguments" | "timeout" | "exception" | "infra"
    seconds: float = 0.0


class ToolRunner:
    """Validates and executes parsed tool calls concurrently, always returning messages."""

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        infra_exceptions: tuple[type[BaseException], ...] = (),
    ):
        """``infra_exceptions``: exception types that mean a tool's backing service failed (say
        ``ConnectionError`` for a tool that calls a remote API). They count as :class:`InfraError`."""
        self.infra_exceptions = (InfraError, *infra_exceptions)
        self.tools: dict[str, Tool] = {}
        self.add(tools)
        self.max_output_chars = max_output_chars

    def add(self, tools: Sequence[Tool | Callable[..., Any]]) -> None:
        """Add tools; a name already taken is an error (two servers' tools can be told apart with a prefix)."""
        for t in map(as_tool, tools):
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t

    @property
    def specs(self) -> list[dict[str, Any]]:
        return [t.spec for t in self.tools.values()]

    def _error(self, call: ToolCall, kind: str, text: str) -> ToolOutcome:
        return ToolOutcome(
            message={"role": "tool", "name": call.name, "content": f"Error: {truncate(text, self.max_output_chars)}"},
            ok=False,
            error_kind=kind,
        )

    async def run_one(self, call: ToolCall) -> ToolOutcome:
        loop = asyncio.get_running_loop()
        start = loop.time()
        t = self.tools.get(call.name)
        if t is None:
            known = ", ".join(sorted(self.tools)) or "(none)"
            return self._error(call, "unknown_tool", f"unknown tool {call.name[:100]!r}. Available tools: {known}.")
        try:
            problems = t.validation_errors(call.arguments)
        except Exception as exc:  # a schema that cannot be applied (a $ref to nowhere) is the tool's fault
            text = f"the {call.name!r} tool's schema cannot be checked ({safe_str(exc)[:300]}); this is not your fault."
            return self._error(call, "infra", text)
        if problems:
            detail = "; ".join(truncate(p, 300) for p in problems[:5])
            return self._error(call, "invalid_arguments", f"invalid arguments for {call.name!r}: {detail}")
        try:
            await faults.afire("tool.call", name=call.name, arguments=call.arguments)
            result = await t.acall(call.arguments)
            content = format_result(result, self.max_output_chars)
        except self.infra_exceptions as exc:
            out = self._error(
                call, "infra", f"the {call.name!r} tool is unavailable ({safe_str(exc)}); this is not your fault."
            )
        except ToolTimeout:
            # The harness gave up. For tools that enforce their own limit (a sandbox), that means
            # the infrastructure hung, not the model's code.
            kind = "infra" if t.timeout_is_infra else "timeout"
            out = self._error(call, kind, f"tool {call.name!r} timed out after {t.timeout:g} s.")
        except (
            Exception,
            SystemExit,
            asyncio.CancelledError,
        ) as exc:  # the tool's own failure is information for the model
            out = self._error(call, "exception", f"{call.name!r} raised {type(exc).__name__}: {safe_str(exc)}")
        else:
            out = ToolOutcome(message={"role": "tool", "name": call.name, "content": content}, ok=True)
        out.seconds = loop.time() - start
        return out

    async def run(self, calls: Sequence[ToolCall]) -> list[ToolOutcome]:
        """Run all calls of one turn concurrently; results keep the order of the calls."""
        return list(await asyncio.gather(*(self.run_one(c) for c in calls)))

    def reset(self) -> None:
        """Let stateful tools drop per-episode state."""
        for t in self.tools.values():
            if t.on_reset is not None:
                t.on_reset()

    def close(self) -> None:
        for t in self.tools.values():
            if t.on_close is not None:
                t.on_close()
