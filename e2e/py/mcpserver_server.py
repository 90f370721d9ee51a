"""Reflow e2e MCP server on the official Python SDK's MCPServer (FastMCP before mcp 2.x).

Usage: mcpserver_server.py --transport streamable-http|stateless-http|stdio [--port PORT]

Its tools ask the client (sampling, form and URL elicitation, roots) and report progress and
log lines, from the SDK's documented Context API. Run by reflow_e2e::harness::py_server.
"""

import argparse
import asyncio
import uuid

import anyio

from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent

server = MCPServer("reflow-py-server")


class Name(BaseModel):
    name: str


@server.tool()
def echo(text: str) -> str:
    """Echoes text."""
    return f"py: {text}"


@server.tool()
async def sample(prompt: str, ctx: Context) -> str:
    """Asks the client to sample."""
    res = await ctx.session.create_message(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=32,
        related_request_id=ctx.request_id,
    )
    text = res.content.text if isinstance(res.content, TextContent) else res.content.type
    return f"sampled: {text}"


@server.tool()
async def elicit(ctx: Context) -> str:
    """Asks the client a form question."""
    res = await ctx.elicit("What is your name?", Name)
    data = res.data.name if res.action == "accept" else ""
    return f"elicited: {res.action} {data}"


@server.tool()
async def elicit_url(ctx: Context) -> str:
    """Asks the client to open a URL."""
    res = await ctx.elicit_url("Please sign in", "https://example.com/reflow-e2e/sign-in", uuid.uuid4().hex)
    return f"url elicitation: {res.action}"


@server.tool()
async def roots(ctx: Context) -> str:
    """Lists the client roots."""
    res = await ctx.session.list_roots()
    return "roots: " + ",".join(str(r.uri) for r in res.roots)


@server.tool()
async def progress(ctx: Context) -> str:
    """Reports three steps of progress, logging each."""
    for step in range(1, 4):
        await ctx.report_progress(step, 3, f"step {step}")
        await ctx.info(f"py step {step}")
    return "progressed"


CANCELLED = {"calls": 0}


@server.tool()
async def grow(ctx: Context) -> str:
    """Tells the client its tool list changed."""
    await ctx.session.send_tool_list_changed()
    return "grew"


@server.tool()
async def slow() -> str:
    """Waits until cancelled (20 s at most)."""
    try:
        await anyio.sleep(20)
    except anyio.get_cancelled_exc_class():
        CANCELLED["calls"] += 1
        raise
    return "not cancelled"


@server.tool()
def cancelled() -> str:
    """How many slow calls were cancelled."""
    return f"cancelled: {CANCELLED['calls']}"


@server.tool()
async def forget(ctx: Context) -> str:
    """Forgets this session right after answering: its next request gets 404, as after a restart."""
    request = ctx.request_context.request
    sid = request.headers.get("mcp-session-id") if request is not None else None
    if sid is None:
        return "no session to forget"
    # The session manager keeps live sessions by id; dropping the entry is what a restart does.
    instances = server.session_manager._server_instances
    asyncio.get_running_loop().call_later(0.05, instances.pop, sid, None)
    return "forgotten"


@server.resource("py://static/greeting")
def greeting() -> str:
    return "Hello from Python"


@server.prompt()
def greet(name: str) -> str:
    return f"Hello, {name}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=["streamable-http", "stateless-http", "stdio"], required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.port,
            stateless_http=args.transport == "stateless-http",
        )


if __name__ == "__main__":
    main()
