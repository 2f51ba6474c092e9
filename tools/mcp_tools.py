"""MCP tool sources: ``from_mcp(...)`` turns the tools of a Model Context Protocol server into agentrl tools.

A server is started over stdio from a command (``from_mcp(["mcp-server-time"])``) or reached over streamable
HTTP at a URL (``from_mcp(url="http://127.0.0.1:8000/mcp")``), through the official ``mcp`` SDK. Each of its
tools becomes a :class:`~agentrl.tools.tool.Tool` with the server's name, description and input schema, so
arguments are validated with jsonschema before a call goes out, like every agentrl tool.

Why the design looks the way it does:

* Every connection lives on one event loop in a daemon thread of its own. An SDK session is bound to the
  loop that opened it, while environments step from whatever loop (or none) their caller runs; handing
  calls across with ``run_coroutine_threadsafe`` makes a session usable from all of them.
* ``shared`` servers (the default) are started once per process and serve every episode: a stateless
  server (a read-only database, a clock) costs one start per run. ``per_episode=True`` gives each episode a
  fresh process, started at the episode's first call and stopped when the episode ends, for servers
  that keep state.
* A server that crashes, drops the connection or hangs past the timeout is the infrastructure's failure,
  never the model's: the call raises :class:`~agentrl.tools.tool.InfraError`, the episode is left out of
  training, and the broken connection is replaced on its next use.
* A server's stderr goes to a log file, not the terminal; its last lines are quoted when it fails.
* No server outlives the process: shared servers are stopped by :func:`close_servers` (the trainer and
  ``agentrl eval`` call it) or at exit, and a stdio server whose parent is killed reads end-of-file on its
  stdin and exits.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import json
import os
import shlex
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.errors import UserError
from agentrl.tools.tool import DEFAULT_TOOL_TIMEOUT, InfraError, Tool, ToolDefinitionError

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
    handle = _Handle(server)
    out = []
    for spec in listed:
        if spec.name in wanted and spec.name not in server.exclude:
            out.append(_as_tool(spec, handle))
    return out


# ----- one connection ---------------------------------------------------------------------------------------------
class _Connection:
    """One SDK session to one server, owned by a task on the MCP loop (anyio scopes must exit where they began)."""

    def __init__(self, server: MCPServer):
        self.server = server
        self.session: Any = None
        self.broken: str | None = None
        self.pid: int | None = None
        self._stop: asyncio.Event | None = None
        self._owner: asyncio.Task | None = None
        # Kept open for the server to write to; closed and removed by stop().
        self._log = tempfile.NamedTemporaryFile("w+", prefix="agentrl-mcp-", suffix=".log", delete=False)  # noqa: SIM115

    async def start(self) -> None:
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._owner = asyncio.create_task(self._run(ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.server.startup_timeout)
            return
        except asyncio.TimeoutError:
            why = f"did not start within {self.server.startup_timeout:g} s"
        except BaseException as exc:
            why = f"failed to start: {_describe(exc)}"
        why += self._stderr_tail()  # read before stop() removes the log
        await self.stop()
        raise InfraError(f"the MCP server {self.server.label!r} {why}")

    async def _run(self, ready: asyncio.Future) -> None:
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                self.session = await stack.enter_async_context(ClientSession(read, write))
                await self.session.initialize()
                if not ready.done():
                    ready.set_result(None)
                assert self._stop is not None
                await self._stop.wait()
        except BaseException as exc:  # the server died or the session could not be opened
            self.broken = self.broken or _describe(exc)
            if not ready.done():
                ready.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.broken = self.broken or "the connection was closed"

    def _transport(self) -> Any:
        if self.server.url:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            client = httpx2.AsyncClient(headers=dict(self.server.headers), timeout=self.server.timeout)
            return _with_client(client, streamable_http_client(self.server.url, http_client=client))
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=self.server.command[0],
            args=list(self.server.command[1:]),
            env=dict(self.server.env) or None,
            cwd=self.server.cwd,
        )
        return stdio_client(params, errlog=self._log)

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        from mcp.shared.exceptions import MCPError
        from mcp_types.jsonrpc import INVALID_PARAMS

        if self.broken:
            raise InfraError(f"the MCP server {self.server.label!r} is down ({self.broken})")
        try:
            return await asyncio.wait_for(self.session.call_tool(name, arguments), self.server.timeout)
        except asyncio.TimeoutError:
            self.broken = f"no answer within {self.server.timeout:g} s"
        except MCPError as exc:
            if exc.code == INVALID_PARAMS:  # the server refused arguments our schema check let through
                raise ToolCallError(exc.error.message) from None
            self.broken = _describe(exc)
        except Exception as exc:
            self.broken = _describe(exc)
        raise InfraError(f"the MCP server {self.server.label!r} failed: {self.broken}" + self._stderr_tail())

    async def stop(self) -> None:
        self.broken = self.broken or "stopped"
        if self._stop is not None:
            self._stop.set()
        if self._owner is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._owner), 10)
            if not self._owner.done():
                self._owner.cancel()
                with contextlib.suppress(BaseException):
                    await self._owner
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def _stderr_tail(self) -> str:
        try:
            with open(self._log.name, encoding="utf-8", errors="replace") as f:
                lines = [ln.rstrip() for ln in f.read()[-2000:].splitlines() if ln.strip()]
        except OSError:
            return ""
        return f"; its stderr ended with: {' | '.join(lines[-3:])}" if lines else ""


@contextlib.asynccontextmanager
async def _with_client(client: Any, transport: Any) -> Any:
    async with client, transport as streams:
        yield streams


def _describe(exc: BaseException) -> str:
    """One line for an error, looking inside anyio's exception groups for the cause."""
    while getattr(exc, "exceptions", None):  # an exception group (anyio task groups raise them)
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not str(exc).startswith(type(exc).__name__) else text


class ToolCallError(Exception):
    """The server says the call failed (``isError``, or refused arguments): the model reads why."""


# ----- the loop every connection lives on ------------------------------------------------------------------------
class _Loop:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None or self.loop.is_closed():
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name="agentrl-mcp", daemon=True).start()
            return self.loop

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the MCP loop from a thread that is not on it, and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.get()).result(timeout)

    async def arun(self, coro: Any) -> Any:
        """Await ``coro`` on the MCP loop from another loop; cancelling the awaiter cancels it there."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.get())
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()
            raise


_LOOP = _Loop()
_SHARED: dict[tuple, _Connection] = {}
_LISTED: dict[tuple, list[Any]] = {}
_STARTING: dict[tuple, asyncio.Lock] = {}
_LIVE: set[_Connection] = set()


async def _connect(server: MCPServer) -> _Connection:
    conn = _Connection(server)
    _LIVE.add(conn)
    try:
        await conn.start()
    except BaseException:
        _LIVE.discard(conn)
        raise
    return conn


async def _shared(server: MCPServer) -> _Connection:
    """The run's connection to ``server``, (re)started when there is none or the last one broke."""
    lock = _STARTING.setdefault(server.key, asyncio.Lock())
    async with lock:  # 32 episodes arriving at once start one process, not 32
        conn = _SHARED.get(server.key)
        if conn is None or conn.broken:
            if conn is not None:
                _SHARED.pop(server.key, None)
                await _release(conn)
            conn = _SHARED[server.key] = await _connect(server)
        return conn


async def _release(conn: _Connection) -> None:
    await conn.stop()
    _LIVE.discard(conn)  # only now: close_servers() waits for stops still under way


def _listing(server: MCPServer) -> list[Any]:
    """The server's tools (all pages), read once per process."""
    if server.key not in _LISTED:

        async def read() -> list[Any]:
            conn = await (_shared(server) if not server.per_episode else _connect(server))
            try:
                tools, cursor = [], None
                while True:
                    from mcp_types import PaginatedRequestParams

                    params = PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await asyncio.wait_for(conn.session.list_tools(params=params), server.startup_timeout)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        return tools
            except asyncio.TimeoutError:
                raise InfraError(f"the MCP server {server.label!r} did not list its tools in time") from None
            finally:
                if server.per_episode:
                    await _release(conn)

        _LISTED[server.key] = _LOOP.run(read())
    return _LISTED[server.key]


def close_servers() -> None:
    """Stop every MCP server this process started and wait for their processes to be reaped."""
    if _LOOP.loop is None or _LOOP.loop.is_closed() or not _LIVE:
        _SHARED.clear()
        return

    async def stop_all() -> None:
        _SHARED.clear()
        await asyncio.gather(*(_release(c) for c in list(_LIVE)), return_exceptions=True)

    with contextlib.suppress(Exception):
        _LOOP.run(stop_all(), timeout=30)


atexit.register(close_servers)


# ----- a server's tools as agentrl tools ---------------------------------------------------------------------------
@dataclass
class _Handle:
    """The tools of one ``from_mcp`` call: their server, and this environment's connection to it."""

    server: MCPServer
    episode: _Connection | None = field(default=None, repr=False)

    async def connection(self) -> _Connection:
        if not self.server.per_episode:
            return await _shared(self.server)
        if self.episode is None or self.episode.broken:
            old, self.episode = self.episode, None
            if old is not None:
                await _release(old)
            self.episode = await _connect(self.server)
        return self.episode

    def end_episode(self) -> None:
        """Stop this episode's server (per-episode servers only); the next episode's first call starts one.

        Not waited for: this runs on the caller's event loop when an episode ends, and waiting for a process
        to exit there would stall every other episode on it. :func:`close_servers` waits for all of them."""
        conn, self.episode = self.episode, None
        if conn is not None:
            asyncio.run_coroutine_threadsafe(_release(conn), _LOOP.get())


def _as_tool(spec: Any, handle: _Handle) -> Tool:
    server = handle.server

    async def call(**arguments: Any) -> str:
        async def on_loop() -> Any:
            conn = await handle.connection()
            return await conn.call(spec.name, arguments)

        return result_text(await _LOOP.arun(on_loop()))

    schema = dict(spec.input_schema or {"type": "object", "properties": {}})
    schema.pop("$schema", None)  # validated as JSON Schema 2020-12, like every agentrl tool
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
