"""An MCP server written with the ``mcp`` SDK, for the tests of ``agentrl.tools.mcp_tools``.

Run over stdio: ``python tests/tools/mcp_server.py``; over streamable HTTP: ``... --http PORT``.
Its tools cover what a client meets in practice: structured results, text, an image, errors the server
marks, a crash in the middle of a call, a call that never returns, and state kept by the process.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.utilities.types import Image

server = MCPServer("agentrl-test-server", log_level="WARNING")
_calls = {"n": 0}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str, times: int = 1) -> str:
    """Repeat a text.

    Args:
        text: What to repeat.
        times: How many times, 1 to 3.
    """
    return " ".join([text] * times)


@server.tool()
def lookup(city: str, fields: list[str] | None = None) -> dict:
    """Facts about a city, as structured content."""
    facts = {"paris": {"country": "France", "population": 2100000}, "oslo": {"country": "Norway", "population": 709000}}
    if city.lower() not in facts:
        raise ValueError(f"unknown city {city!r}")
    row = facts[city.lower()]
    return {k: v for k, v in row.items() if fields is None or k in fields}


@server.tool()
def picture() -> Image:
    """A 1x1 PNG image."""
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
    return Image(data=png, format="png")


@server.tool()
def count() -> int:
    """How many times this process has been asked (state that lives as long as the server)."""
    _calls["n"] += 1
    return _calls["n"]


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def crash() -> str:
    """Kill the server in the middle of the call."""
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answer."""
    await asyncio.sleep(3600)
    return "unreachable"


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after a pause."""
    await asyncio.sleep(seconds)
    return "done"


if __name__ == "__main__":
    if "--http" in sys.argv:
        port = int(sys.argv[sys.argv.index("--http") + 1])
        server.run("streamable-http", host="127.0.0.1", port=port)
    else:
        server.run()
