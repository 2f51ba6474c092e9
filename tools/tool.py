"""Typed tools: ``@agentrl.tool`` turns a documented Python function into a callable the policy can use.

The JSON schema comes from the function's type hints and Google-style docstring through
``transformers.utils.get_json_schema``, the same generator chat templates expect, so what the model
sees in its prompt is exactly what the validator enforces.

Calling a tool never raises into the environment: :class:`~agentrl.tools.runner.ToolRunner` turns
bad arguments, unknown names, exceptions inside the tool and timeouts into an error ``tool`` message
the model can read and react to.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing

DEFAULT_TOOL_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT_CHARS = 8192


def _in_daemon_thread(fn: Callable[[], Any]) -> asyncio.Future:
    """Run ``fn`` in its own daemon thread and return a future for its result.

    Not ``asyncio.to_thread``: ``asyncio.run`` and interpreter exit both wait for executor threads,
    so one hung sync tool would block every later step and the process's exit. A daemon thread is
    simply abandoned after a timeout and keeps running until the function returns.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():  # cancelled by a timeout
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            outcome = (fn(), None)
        except BaseException as exc:
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop closed while the tool was still running
            pass

    threading.Thread(target=target, name="agentrl-tool", daemon=True).start()
    return fut


class ToolDefinitionError(TypeError):
    """The function cannot be turned into a tool (missing docstring, untyped argument, ...)."""


class InfraError(RuntimeError):
    """Raised by a tool when *its infrastructure* failed (a sandbox crashed, a backend is down).

    The model gets an error message as usual, but the episode is marked: its reward says nothing
    about the policy and the trainer leaves it out.
    """


@dataclass
class Tool:
    """A function the policy may call, with its JSON schema and a per-call timeout."""

    fn: Callable[..., Any]
    """The Python function (sync or ``async``) that does the work."""
    name: str
    """Name the model uses in ``<tool_call>``."""
    description: str
    """One-paragraph description shown to the model."""
    parameters: dict[str, Any]
    """JSON Schema of the keyword arguments; calls are validated against it before running."""
    timeout: float | None = DEFAULT_TOOL_TIMEOUT
    """Seconds one call may take before the model gets a timeout error; ``None`` for no limit."""
    timeout_is_infra: bool = False
    """The tool enforces its own limit (a sandbox); ``timeout`` is only a backstop whose expiry is an infra failure."""
    on_reset: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    """Called when an episode starts or ends, for tools with per-episode state (a sandbox session)."""
    on_close: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    """Called when the environment closes."""
    _validator: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # JSON Schema 2020-12 unless the schema names its draft ("$schema"), as schemas from MCP servers may.
        cls = jsonschema.validators.validator_for(self.parameters, default=jsonschema.Draft202012Validator)
        cls.check_schema(self.parameters)
        # An empty registry: a "$ref" to a URL is never fetched (jsonschema's default would, with no timeout,
        # in the middle of a step); it fails to resolve instead, which the runner reports.
        self._validator = cls(self.parameters, registry=referencing.Registry())

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def spec(self) -> dict[str, Any]:
        """The OpenAI/transformers tool spec that chat templates render."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly, as plain Python (no validation)."""
        return self.fn(*args, **kwargs)

    def validation_errors(self, arguments: Any) -> list[str]:
        """Human-readable schema violations of ``arguments``; empty when they are valid."""
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        out = []
        for err in errors:
            where = "/".join(str(p) for p in err.absolute_path)
            out.append(f"{where}: {err.message}" if where else err.message)
        return out

    async def acall(self, arguments: dict[str, Any]) -> Any:
        """Run the tool with validated keyword arguments; raises :class:`ToolTimeout` past ``timeout``.

        Sync functions run in a daemon thread so they cannot block other trajectories. A thread
        cannot be killed: after a timeout it finishes in the background and its result is dropped.
        An async tool that blocks the event loop cannot be interrupted at all; keep async tools
        truly async, or make them sync.
        """
        if self.is_async:
            task: asyncio.Future = asyncio.ensure_future(_no_exit(self.fn(**arguments)))
        else:
            task = _in_daemon_thread(functools.partial(self.fn, **arguments))
        # asyncio.wait, not wait_for: a TimeoutError raised *by the tool* must not look like ours.
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            # The step was given up (the harness's step timeout): stop an async tool, and let a thread's late
            # result or error be dropped instead of logged as "Future exception was never retrieved".
            task.cancel()
            raise
        if not done:
            task.cancel()
            raise ToolTimeout(self.timeout)
        return task.result()


async def _no_exit(coro: Any) -> Any:
    """asyncio re-raises SystemExit from a task into the event loop; make it an ordinary error instead."""
    try:
        return await coro
    except SystemExit as exc:
        raise RuntimeError(f"the tool called sys.exit({exc.code!r})") from None


class ToolTimeout(Exception):
    """The harness stopped waiting for a tool."""

    def __init__(self, seconds: float | None):
        super().__init__(f"no result within {seconds} s")
        self.seconds = seconds


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TOOL_TIMEOUT,
) -> Any:
    """Decorator: turn a typed, Google-docstringed function into a :class:`Tool`.

    Use as ``@tool`` or ``@tool(timeout=5)``. Every argument needs a type hint and an ``Args:``
    entry in the docstring; the docstring's first paragraph becomes the description.
    """

    def build(f: Callable[..., Any]) -> Tool:
        from transformers.utils import get_json_schema

        try:
            schema = get_json_schema(f)["function"]
        except Exception as exc:  # transformers raises several types; re-raise one with context
            label = getattr(f, "__qualname__", None) or repr(f)
            raise ToolDefinitionError(f"cannot build a tool from {label}: {exc}") from exc
        params = _openapi_to_json_schema(dict(schema.get("parameters") or {"type": "object", "properties": {}}))
        # Unknown keyword arguments would make the call fail anyway; reject them up front with a clear message.
        params.setdefault("additionalProperties", False)
        params.setdefault("properties", {})
        return Tool(
            fn=f,
            name=name or schema["name"],
            description=description if description is not None else schema.get("description", ""),
            parameters=params,
            timeout=timeout,
        )

    if fn is not None:
        return build(fn)
    return build


def _openapi_to_json_schema(node: Any) -> Any:
    """transformers marks ``Optional[T]`` with OpenAPI's ``nullable: true``; JSON Schema says ``type: [T, "null"]``."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"] if "null" not in types else types
    return out


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """Accept either a :class:`Tool` or a plain documented function."""
    return obj if isinstance(obj, Tool) else tool(obj)


def format_result(result: Any, max_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> str:
    """Render a tool's return value as message text: strings as-is, other values as JSON. Never raises."""
    if isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(result, ensure_ascii=False, default=safe_str)
        except (TypeError, ValueError, RecursionError):
            text = safe_str(result)
    # Lone surrogates cannot be encoded for the tokenizer; replace them rather than fail later.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    return truncate(text, max_chars)


def safe_str(x: Any) -> str:
    """str() that survives hostile ``__str__``/``__repr__`` and huge ints."""
    try:
        return str(x)
    except Exception:
        try:
            return object.__repr__(x)
        except Exception:
            return f"<unprintable {type(x).__name__}>"


def truncate(text: str, max_chars: int) -> str:
    """Cap ``text`` at ``max_chars``, keeping head and tail and saying how much was cut."""
    if len(text) <= max_chars:
        return text
    keep = max(max_chars - 60, 0)
    head, tail = text[: keep // 2], text[len(text) - keep // 2 :]
    return f"{head}\n...[truncated {len(text) - 2 * (keep // 2)} characters]...\n{tail}"
