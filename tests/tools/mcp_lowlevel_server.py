"""An MCP server on the SDK's low-level API, for what the high-level one will not produce: a tool list in two
pages, JSON-RPC error replies, structured results that break their own output schema, and input schemas
in an older JSON Schema draft or with a reference to nowhere. Run over stdio."""

import os

import anyio
import mcp.server.stdio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

EMPTY = {"type": "object", "properties": {}}
FIRST = [
    types.Tool(name="pid", description="The server's process id.", input_schema=EMPTY),
    types.Tool(
        name="fail",
        description="Answer with a JSON-RPC error reply.",
        input_schema={"type": "object", "properties": {"code": {"type": "integer"}}, "required": ["code"]},
    ),
]
SECOND = [
    types.Tool(
        name="miscount",
        description="A structured result that breaks the tool's own output schema.",
        input_schema=EMPTY,
        output_schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    ),
    types.Tool(
        name="positive",
        description="Takes a number above zero, in draft-04 terms.",
        input_schema={
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": True}},
            "required": ["n"],
        },
    ),
    types.Tool(
        name="dangling",
        description="Its schema refers to a definition that does not exist.",
        input_schema={"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}},
    ),
]


async def list_tools(ctx, params):
    if params is None or params.cursor is None:
        return types.ListToolsResult(tools=FIRST, next_cursor="page-2")
    return types.ListToolsResult(tools=SECOND)


def text(value):
    return types.CallToolResult(content=[types.TextContent(type="text", text=str(value))])


async def call_tool(ctx, params):
    args = params.arguments or {}
    if params.name == "pid":
        return text(os.getpid())
    if params.name == "fail":
        raise MCPError(code=args["code"], message=f"refused with code {args['code']}")
    if params.name == "miscount":
        return types.CallToolResult(content=[types.TextContent(type="text", text="n?")], structured_content={"n": "x"})
    return text("ok")


server = Server("agentrl-lowlevel-test-server", on_list_tools=list_tools, on_call_tool=call_tool)


async def main():
    async with mcp.server.stdio.stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
