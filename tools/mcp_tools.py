"""MCP tool sources: ``from_mcp(...)`` turns the tools of a Model Context Protocol server into agentrl tools.

A server is started over stdio from a command (``from_mcp(["mcp-server-time"])``) or reached over streamable
HTTP at a URL (``from_mcp(url="http://127.0.0.1:8000/mcp")``), through the official ``mcp`` SDK. Each of its
tools becomes a :class:`~agentrl.tools.tool.Tool` with the server's name, description and input schema, so
arguments are validated with jsonschema before a call goes out, like every agentrl tool.

Why the design looks the way it does:

* Every connection lives on one event loop in a daemon thread (:mod:`agentrl.tools.mcp_connection`, which
  says why). An SDK session is bound to the loop that opened it, while environments step from whatever loop
  (or none) their caller runs.
* ``shared`` servers (the default) are started once per process and serve every episode: a stateless
  server (a read-only database, a clock) costs one start per run. ``per_episode=True`` gives each episode a
  fresh process, started at the episode's first call and stopped when the episode ends, for servers
  that keep state.
* A server that crashes, drops the connection or hangs past the timeout is the infrastructure's failure,
  never the model's: the call raises :class:`~agentrl.tools.tool.InfraError`, the episode is left out of
  training, and the broken connection is replaced on its next use. An error the server *reports* (a result
  marked ``isError``, a JSON-RPC error reply) goes back to the model like any tool's error.
* A server's stderr goes to an unlinked temporary file, not the terminal; its last lines are quoted when it
  fails.
* No server outlives its run: :func:`close_servers` (the trainer and ``agentrl eval`` call it, and it runs at
  exit) stops them all, and a stdio server dies with its parent process even when that is killed.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.errors import UserError
from agentrl.tools.mcp_connection import LOOP, Handle, ToolCallError, close_all, connect, release, shared
from agentrl.tools.tool import DEFAULT_TOOL_TIMEOUT, InfraError, Tool, ToolDefinitionError

log = logging.getLogger(__name__)

__all__ = ["InfraError", "MCPServer", "ToolCallError", "close_servers", "from_mcp", "result_text", "server_from",
           "tools_of"]  # fmt: skip

DEFAULT_STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class MCPServer:
    """Where an MCP server is and how agentrl uses it; the keyword arguments of :func:`from_mcp`."""

    command: tuple[str, ...] = ()
    """The command that starts a stdio server, split into words (``("mcp-server-time",)``)."""
    url: str | None = None
    """The endpoint of a streamable-HTTP server (``http://host:port/mcp``); instead of a command."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables of a stdio server, over a minimal default (HOME, PATH, ...). The SDK passes no
    other variable of this process, so a server's settings (``DB_URL``, an API key) go here."""
    cwd: str | None = None
    """Working directory of a stdio server."""
    headers: tuple[tuple[str, str], ...] = ()
    """HTTP headers sent to a URL server (an ``Authorization`` header, say)."""
    per_episode: bool = False
    """A fresh server process (or HTTP session) for each episode, for servers that keep state; otherwise one
    is shared by every episode of the run."""
    tools: tuple[str, ...] | None = None
    """Only these of the server's tools (all when None); a name the server lacks is an error."""
    exclude: tuple[str, ...] = ()
    """Tools of the server to leave out."""
    prefix: str = ""
    """Put before every tool name, so two servers' tools cannot clash (``"db_"``)."""
    timeout: float = DEFAULT_TOOL_TIMEOUT
    """Seconds one call may take; a server that has not answered by then is an infrastructure failure."""
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    """Seconds a server may take to start and answer its first request."""

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise UserError("an MCP server needs exactly one of a command (stdio) or a url (streamable HTTP)")
        if self.timeout <= 0 or self.startup_timeout <= 0:
            raise UserError("an MCP server's timeout and startup_timeout must be positive")

    @property
    def label(self) -> str:
        """Short, for messages: the URL, or the program's name and its arguments."""
        if self.url:
            return self.url
        text = shlex.join([os.path.basename(self.command[0]), *self.command[1:]])
        return text if len(text) <= 80 else text[:77] + "..."

    @property
    def key(self) -> tuple:
        """What identifies one server process (or endpoint); filters and timeouts are not part of it."""
        return (self.command, self.url, self.env, self.cwd, self.headers)


def server_from(spec: Mapping[str, Any] | MCPServer) -> MCPServer:
    """An :class:`MCPServer` from a recipe's mapping (``command`` as a string or a list, ``env`` as a mapping)."""
    if isinstance(spec, MCPServer):
        return spec
    if not isinstance(spec, Mapping):
        raise UserError(f"an MCP server is a mapping with a command or a url, got {spec!r}")
    known = set(MCPServer.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UserError(f"unknown MCP server key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    data = dict(spec)
    command = data.get("command") or ()
    data["command"] = tuple(shlex.split(command) if isinstance(command, str) else (str(w) for w in command))
    for key in ("env", "headers"):
        data[key] = tuple(sorted((str(k), str(v)) for k, v in (data.get(key) or {}).items()))
    for key in ("tools", "exclude"):
        if data.get(key) is not None:
            names = [data[key]] if isinstance(data[key], str) else data[key]
            data[key] = tuple(str(n) for n in names)
    data.setdefault("exclude", ())
    return MCPServer(**data)


def from_mcp(
    command: str | Sequence[str] | None = None,
    *,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    headers: Mapping[str, str] | None = None,
    per_episode: bool = False,
    tools: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    prefix: str = "",
    timeout: float = DEFAULT_TOOL_TIMEOUT,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
) -> list[Tool]:
    """The tools of an MCP server as agentrl :class:`~agentrl.tools.tool.Tool` objects.

    Call it where the environment is built (its ``__init__``), once per environment: with
    ``per_episode=True`` the returned tools hold that environment's server. The server's tool list is read
    once per process and remembered, so building an environment per episode starts no extra process.
    See :class:`MCPServer` for the arguments.
    """
    server = server_from(
        {
            "command": command or (),
            "url": url,
            "env": env,
            "cwd": cwd,
            "headers": headers,
            "per_episode": per_episode,
            "tools": tools,
            "exclude": exclude,
            "prefix": prefix,
            "timeout": timeout,
            "startup_timeout": startup_timeout,
        }
    )
    return tools_of(server)


def tools_of(server: MCPServer) -> list[Tool]:
    """The tools of ``server`` that its filters keep (what :func:`from_mcp` returns)."""
    listed = _listing(server)
    names = [t.name for t in listed]
    wanted = names if server.tools is None else list(server.tools)
    missing = [n for n in [*wanted, *server.exclude] if n not in names]
    if missing:
        raise UserError(f"the MCP server {server.label!r} has no tool {missing[0]!r}; it has: {', '.join(names)}")
    handle = Handle(server)
    out = []
    for spec in listed:
        if spec.name not in wanted or spec.name in server.exclude:
            continue
        try:
            out.append(_as_tool(spec, handle, server))
        except ToolDefinitionError as exc:
            if server.tools is not None:  # asked for by name: say so
                raise
            log.warning("%s; it is left out", exc)
    return out


_LISTED: dict[tuple, list[Any]] = {}
"""Each server's tool list, read once per process."""


def _listing(server: MCPServer) -> list[Any]:
    if server.key not in _LISTED:

        async def read() -> list[Any]:
            if not server.per_episode:
                return (await shared(server)).tools
            conn = await connect(server)  # read, then stopped: each episode starts its own
            try:
                return conn.tools
            finally:
                await release(conn)

        _LISTED[server.key] = LOOP.run(read())
    return _LISTED[server.key]


def close_servers() -> None:
    """Stop every MCP server this process started and wait for their processes to be reaped.

    The trainer and ``agentrl eval`` call it when a run ends; it also runs at exit."""
    close_all()


atexit.register(close_servers)


# ----- a server's tools as agentrl tools ---------------------------------------------------------------------------
def _as_tool(spec: Any, handle: Handle, server: MCPServer) -> Tool:
    async def call(**arguments: Any) -> str:
        async def on_loop() -> Any:
            conn = await handle.connection()
            return await conn.call(spec.name, arguments, server.timeout)  # this from_mcp's own timeout

        return result_text(await LOOP.arun(on_loop()))

    schema = dict(spec.input_schema or {"type": "object", "properties": {}})
    try:
        tool = Tool(
            fn=call,
            name=server.prefix + spec.name,
            description=(spec.description or spec.title or "").strip(),
            parameters=schema,
            # The call is bounded on the MCP loop by `timeout` (after a start bounded by startup_timeout);
            # this outer limit is only a backstop, and its expiry too is the infrastructure's failure.
            timeout=server.timeout + server.startup_timeout + 5,
            timeout_is_infra=True,
        )
    except Exception as exc:
        raise ToolDefinitionError(f"the MCP server {server.label!r} gave {spec.name!r} a bad schema: {exc}") from exc
    if server.per_episode:
        tool.on_reset = tool.on_close = handle.end_episode
    return tool


def result_text(result: Any) -> str:
    """A ``CallToolResult`` as the text the model reads; raises :class:`ToolCallError` when the server marks an error.

    Text blocks are joined; structured content is shown as JSON when no text block carries it; images, audio
    and binary resources are described (type and size), not dropped, since the model cannot read them.
    """
    parts = [_block_text(b) for b in result.content or ()]
    text = "\n".join(p for p in parts if p)
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False, default=str)
    if result.is_error:
        raise ToolCallError(text or "the tool reported an error")
    return text


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return block.text
    if kind in ("image", "audio"):
        return f"[{kind} content: {block.mime_type}, {_decoded_size(block.data)} bytes, not shown]"
    if kind == "resource_link":
        about = f" ({block.description})" if block.description else ""
        return f"[resource link: {block.name} at {block.uri}{about}]"
    if kind == "resource":
        res = block.resource
        if getattr(res, "text", None) is not None:
            return f"[resource {res.uri}]\n{res.text}"
        return f"[binary resource {res.uri}: {res.mime_type or 'unknown type'}, {_decoded_size(res.blob)} bytes]"
    return f"[{kind or type(block).__name__} content, not shown]"


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except (ValueError, TypeError):
        return len(data or "")
