"""Connections to MCP servers: one event loop for all of them, shared and per-episode servers, failure handling.

Why it is built this way:

* **One loop, in a daemon thread.** An SDK session is bound to the loop that opened it, while environments
  step from whatever loop (or none) their caller runs. Every connection lives on this module's loop and
  callers hand work over with ``run_coroutine_threadsafe``. All bookkeeping (``_POOL``, a handle's episode)
  changes on that loop only, so it needs no locks.
* **A connection is owned by one task** (``_Connection._run``): anyio's cancel scopes must exit in the task
  that entered them. It opens the transport and the session, reads the tool list (so the SDK can check
  structured results without asking again), and waits until it is told to stop or the transport closes.
* **What breaks a connection**: the transport closing (a crash, a dropped HTTP session) and a call that gets
  no answer in time (the server is wedged). Then the episode's call is an ``InfraError`` and the connection is
  replaced on its next use. An error *reply* (a JSON-RPC error, a result marked ``isError``) leaves it up.
* **A replaced shared connection is stopped only when its last call ends**, so one episode's hang does not
  cut off the calls other episodes have in flight there; a wedged server still answers none of them, and
  each ends at its own timeout.
* **No server outlives its parent**: stdio servers start under a small supervisor (``_LAUNCHER``) that the
  kernel signals when this process dies (``PR_SET_PDEATHSIG`` on Linux) and that then kills its process
  group: the server, and whatever a wrapper (``sh -c``, npx) forked, even while a forked child of ours still
  holds the server's stdin open. When a connection closes, its group goes too.
* **Per-episode servers are never restarted within an episode**: their state went with them, so the rest
  of the episode fails as infra, and the next episode starts a new one.
* **After a fork**, the child forgets the parent's loop and connections, and never stops or signals them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

from agentrl.tools.tool import InfraError

FAILED_START_MEMORY = 5.0
"""Seconds a failed start of a shared server is remembered: calls in that window fail at once instead of each
starting the server again."""

# A small supervisor between us and the server, for what stdin's end-of-file cannot do alone: the kernel sends
# it SIGTERM when this process dies, even by SIGKILL (PR_SET_PDEATHSIG, Linux), and it then kills its whole
# process group, the server and whatever the server started (a wrapper such as `sh -c` or npx that forks,
# its workers). It says its pid (the group's id) on stderr's first line. -I -S: nothing of the server's
# environment (PYTHONPATH, PYTHONHOME) reaches it, and it starts in milliseconds.
_LAUNCHER = """
import ctypes, os, signal, sys
def die(*_):
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(1)
signal.signal(signal.SIGTERM, die)
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    die()
sys.stderr.write(f"agentrl-mcp-pid {os.getpid()}\\n")
sys.stderr.flush()
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write(f"cannot run {sys.argv[2]!r}: {exc}\\n")
        os._exit(127)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
while True:
    try:
        _, status = os.waitpid(child, 0)
        break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


class ToolCallError(Exception):
    """The server says the call failed (``isError``, or a JSON-RPC error reply): the model reads why."""


class _Connection:
    """One SDK session to one server."""

    def __init__(self, server: Any):
        self.server = server
        self.session: Any = None
        self.broken: str | None = None
        self.owner_pid = os.getpid()
        """The process that started it: after a fork, the child must neither stop nor signal it."""
        self.released = False
        self.inflight = 0
        self.retired = False
        self.stopping = False
        self._stop = asyncio.Event()
        self._owner: asyncio.Task | None = None
        # The server writes its stderr here; unlinked at once, so nothing is left behind if we are killed. O_APPEND:
        # the server shares the file offset, so its writes must not depend on it; we read with pread.
        self._log = tempfile.TemporaryFile("w+b", prefix="agentrl-mcp-")  # noqa: SIM115
        fcntl.fcntl(self._log.fileno(), fcntl.F_SETFL, fcntl.fcntl(self._log.fileno(), fcntl.F_GETFL) | os.O_APPEND)

    async def start(self) -> None:
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._run(ready))
        try:
            # _run bounds its own start; this only guards against a transport that ignores cancellation.
            await asyncio.wait_for(asyncio.shield(ready), self.server.startup_timeout + 15)
            return
        except asyncio.TimeoutError:
            why = f"did not start within {self.server.startup_timeout:g} s"
        except BaseException as exc:
            why = f"failed to start: {describe(exc)}"
        why += self.stderr_tail()
        await self.stop()
        raise InfraError(f"the MCP server {self.server.label!r} {why}")

    async def _run(self, ready: asyncio.Future) -> None:
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                self.session = await stack.enter_async_context(ClientSession(read, write))
                try:
                    await asyncio.wait_for(self._handshake(), self.server.startup_timeout)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"no answer within {self.server.startup_timeout:g} s") from None
                if not ready.done():
                    ready.set_result(None)
                await self._wait_for_stop_or_close()
        except BaseException as exc:  # the server died, or the session could not be opened
            self.broken = self.broken or describe(exc)
            if not ready.done():
                ready.set_exception(exc)
                ready.exception()  # retrieved here; start() reports it
            if not isinstance(exc, Exception):
                raise
        finally:
            self.broken = self.broken or "the connection was closed"
            self._kill_group()

    async def _handshake(self) -> None:
        """Initialize, and read every page of the tool list on this very session: the SDK checks structured
        results against the schemas of tools its session has listed, and would otherwise list again per tool."""
        from mcp_types import PaginatedRequestParams

        await self.session.initialize()
        self.tools, cursor, seen = [], None, set()
        while True:
            page = await self.session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            self.tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor or cursor in seen:  # a server that repeats a cursor would page forever
                return
            seen.add(cursor)

    async def _wait_for_stop_or_close(self) -> None:
        """Until stop() or the transport closes. The SDK notices a closed transport (a crash) but ends no task
        the session's owner waits on, so its dispatcher's flag is read; without it, the first call finds out."""
        dispatcher = getattr(self.session, "_dispatcher", None)
        while not self._stop.is_set():
            if getattr(dispatcher, "_closed", False):
                self.broken = self.broken or "the server closed the connection"
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.25)

    def _transport(self) -> Any:
        if self.server.url:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            # Calls are bounded by our own timeout; the read timeout would also cut the server's event stream.
            limits = httpx2.Timeout(self.server.timeout, read=None)
            client = httpx2.AsyncClient(headers=dict(self.server.headers), timeout=limits)
            return _with_client(client, streamable_http_client(self.server.url, http_client=client))
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=sys.executable,
            args=["-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *self.server.command],
            env=dict(self.server.env) or None,
            cwd=self.server.cwd,
        )
        return stdio_client(params, errlog=self._log)

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> Any:
        import anyio
        from mcp.shared.exceptions import MCPError

        if self.broken:
            raise InfraError(f"the MCP server {self.server.label!r} is down ({self.broken})")
        self.inflight += 1
        try:
            return await asyncio.wait_for(self.session.call_tool(name, arguments), timeout)
        except asyncio.TimeoutError:
            self.broken = f"no answer within {timeout:g} s"
        except MCPError as exc:
            if not _breaks(exc):  # an error reply: the server is up, and the model reads why
                raise ToolCallError(exc.error.message) from None
            self.broken = describe(exc)
        except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self.broken = describe(exc)
        except Exception as exc:  # e.g. structured content that fails the tool's own output schema
            raise InfraError(f"the MCP server {self.server.label!r} sent a bad result: {describe(exc)}") from None
        finally:
            self.inflight -= 1
            if self.retired and self.inflight == 0:
                retire(self)
        raise InfraError(f"the MCP server {self.server.label!r} failed: {self.broken}" + self.stderr_tail())

    async def stop(self) -> None:
        self.broken = self.broken or "stopped"
        if self.owner_pid != os.getpid():  # inherited through a fork: the parent's to stop, not ours
            return
        self._stop.set()
        if self._owner is not None and not self._owner.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._owner), 10)
            if not self._owner.done():
                self._owner.cancel()  # its finally still kills the group
                with contextlib.suppress(BaseException):
                    await self._owner
        self._log.close()

    def _kill_group(self) -> None:
        """Whatever the server started goes with it. Only here, as the transport closes: the group (the
        supervisor's pid) is known to be ours now, while a later kill could hit a group that reused the pid."""
        pid = self._read_pid()
        if pid is not None and self.owner_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            first = os.pread(self._log.fileno(), 64, 0).decode("ascii", errors="replace")
            if first.startswith("agentrl-mcp-pid "):
                return int(first.split()[1])
        return None

    def stderr_tail(self) -> str:
        try:
            size = os.fstat(self._log.fileno()).st_size
            text = os.pread(self._log.fileno(), 4000, max(0, size - 4000)).decode("utf-8", errors="replace")
        except (OSError, ValueError):
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("agentrl-mcp-pid ")]
        return f"; its stderr ended with: {' | '.join(lines[-3:])}" if lines else ""


def _breaks(exc: Any) -> bool:
    """Whether a JSON-RPC error means the connection is gone rather than the server answering. Besides a
    closed connection and a timeout, the SDK's HTTP transport reports an expired session (-32600), a body
    it cannot parse (-32700) and a proxy's 5xx (-32603 with its own message) as error replies."""
    from mcp_types.jsonrpc import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, REQUEST_TIMEOUT

    if exc.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT, INVALID_REQUEST, PARSE_ERROR):
        return True
    return exc.code == INTERNAL_ERROR and str(exc.error.message).startswith("Server returned an error response")


@contextlib.asynccontextmanager
async def _with_client(client: Any, transport: Any) -> Any:
    async with client, transport as streams:
        yield streams


def describe(exc: BaseException) -> str:
    """One line for an error, looking inside anyio's exception groups for the cause."""
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


# ----- the loop every connection lives on ------------------------------------------------------------------------
class _Loop:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.loop.is_closed():
                self.loop = asyncio.new_event_loop()
                self.thread = threading.Thread(target=self.loop.run_forever, name="agentrl-mcp", daemon=True)
                self.thread.start()
            return self.loop

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the MCP loop from another thread and wait for its result."""
        loop = self.get()
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("MCP tools cannot be set up or closed from code running on the MCP loop itself")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def arun(self, coro: Any) -> Any:
        """Await ``coro`` on the MCP loop from another loop; cancelling the awaiter cancels it there."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.get())
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()
            raise

    def submit(self, coro: Any) -> None:
        """Start ``coro`` on the MCP loop without waiting for it."""
        asyncio.run_coroutine_threadsafe(coro, self.get())


LOOP = _Loop()
_POOL: dict[tuple, _Connection] = {}
"""The shared connection to each server (by ``MCPServer.key``)."""
_STARTING: dict[tuple, asyncio.Task] = {}
"""Shared starts under way: every episode that arrives meanwhile waits for the same one."""
_FAILED: dict[tuple, tuple[float, str]] = {}
_LIVE: set[_Connection] = set()
_BACKGROUND: set[asyncio.Future] = set()


def _after_fork() -> None:
    """A forked child has none of the parent's threads: forget the loop and the parent's connections."""
    LOOP.__init__()
    _POOL.clear()
    _STARTING.clear()
    _FAILED.clear()
    _LIVE.clear()
    _BACKGROUND.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


async def connect(server: Any) -> _Connection:
    conn = _Connection(server)
    _LIVE.add(conn)
    try:
        await conn.start()
    except BaseException:
        _LIVE.discard(conn)
        raise
    return conn


def retire(conn: _Connection) -> None:
    """No new calls go to ``conn``; it is stopped now, or when its last call in flight ends."""
    conn.retired = True
    if conn.inflight == 0 and not conn.stopping:
        conn.stopping = True
        task = asyncio.ensure_future(release(conn))
        _BACKGROUND.add(task)  # a reference, so the task is not collected before it ends
        task.add_done_callback(_BACKGROUND.discard)


async def release(conn: _Connection) -> None:
    if conn.released:
        return
    conn.released = conn.stopping = True
    await conn.stop()
    _LIVE.discard(conn)  # only now: close_all() waits for stops still under way


async def shared(server: Any) -> _Connection:
    """The process's connection to ``server``, started (once, however many episodes ask) when there is none or
    the last one broke. A broken one is retired: stopped when its last call ends."""
    conn = _POOL.get(server.key)
    if conn is not None and not conn.broken:
        return conn
    if conn is not None:
        _POOL.pop(server.key, None)
        retire(conn)
    failed = _FAILED.get(server.key)
    if failed and time.monotonic() - failed[0] < FAILED_START_MEMORY:
        raise InfraError(failed[1])
    task = _STARTING.get(server.key)
    if task is None:
        task = _STARTING[server.key] = asyncio.ensure_future(connect(server))
        task.add_done_callback(lambda t: _started(server.key, t))
    return await asyncio.shield(task)


def _started(key: tuple, task: asyncio.Task) -> None:
    _STARTING.pop(key, None)
    if task.cancelled():
        return
    if task.exception() is not None:
        _FAILED[key] = (time.monotonic(), str(task.exception()))
    else:
        _FAILED.pop(key, None)
        _POOL[key] = task.result()


class Handle:
    """The tools of one ``from_mcp`` call: their server, and (per-episode servers) this environment's connection.

    Its state changes on the MCP loop only. ``generation`` counts episodes, so a server started for an episode
    that has since ended is stopped, never handed to the next one."""

    def __init__(self, server: Any):
        self.server = server
        self.generation = 0
        self.episode: _Connection | None = None
        self._starting: asyncio.Task | None = None
        self._pid = os.getpid()

    def _forget_if_forked(self) -> None:
        """A handle inherited through a fork holds the parent's server: drop it, never stop or signal it."""
        if self._pid != os.getpid():
            self._pid, self.episode, self._starting = os.getpid(), None, None

    async def connection(self) -> _Connection:
        if not self.server.per_episode:
            return await shared(self.server)
        self._forget_if_forked()
        if self.episode is not None:
            # Even broken: a per-episode server's state went with it, so the rest of the episode fails as infra
            # (conn.call says it is down) and the next episode starts a new one. Never restarted mid-episode.
            return self.episode
        if self._starting is None:  # several calls of one turn share one start
            self._starting = asyncio.ensure_future(self._start(self.generation))
        return await asyncio.shield(self._starting)

    async def _start(self, generation: int) -> _Connection:
        try:
            conn = await connect(self.server)
        finally:
            if generation == self.generation:
                self._starting = None
        if generation != self.generation:  # the episode ended while its server started: never hand it on
            retire(conn)
            raise InfraError("the episode ended while its MCP server was starting")
        self.episode = conn
        return conn

    def end_episode(self) -> None:
        """Called from the caller's thread when an episode starts or ends; not waited for, since waiting for a
        process to exit there would stall every other episode on that loop. ``close_all`` waits for all."""
        LOOP.submit(self._end())

    async def _end(self) -> None:
        self._forget_if_forked()
        self.generation += 1
        conn, self.episode, self._starting = self.episode, None, None
        if conn is not None:
            retire(conn)


def close_all() -> None:
    """Stop every MCP server this process started and wait for their processes to be reaped."""
    if LOOP.loop is None or LOOP.loop.is_closed() or LOOP.thread is threading.current_thread():
        return

    async def stop_all() -> None:
        await asyncio.gather(*_STARTING.values(), return_exceptions=True)  # starts under way end first
        _POOL.clear()
        _FAILED.clear()
        await asyncio.gather(*(release(c) for c in list(_LIVE)), return_exceptions=True)

    with contextlib.suppress(Exception):
        LOOP.run(stop_all(), timeout=30)
