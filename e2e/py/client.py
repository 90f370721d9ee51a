#!/usr/bin/env python3
# Reflow e2e MCP client: drives the official Python `mcp` SDK against one server and prints a JSON report.
# Run by the Rust harness (reflow_e2e::harness::python) against the fixture, server-everything and the gateway.
"""Usage:
  client.py --transport streamable-http --url URL [--token T] [--header K=V]... --actions JSON
  client.py --transport sse --url URL [--token T] [--header K=V]... --actions JSON
  client.py --transport stdio --command PROG [--arg A]... [--env K=V]... --actions JSON

--actions is a JSON list of objects, each with an "op":
  {"op": "list_tools"}, {"op": "list_resources"}, {"op": "list_resource_templates"},
  {"op": "list_prompts"}                      every page is fetched; the result has the items and "pages"
  {"op": "call_tool", "name": N, "arguments": {...}, "progress": true|false}
  {"op": "read_resource", "uri": U}
  {"op": "get_prompt", "name": N, "arguments": {...}}
  {"op": "complete", "ref": {"type": "ref/prompt", "name": N} | {"type": "ref/resource", "uri": U},
   "argument": {"name": A, "value": V}}
  {"op": "set_logging_level", "level": L}
  {"op": "ping"}
  {"op": "wait_notification", "method": M, "timeout": S}
  {"op": "set_token", "token": T}             later requests carry this bearer token (streamable-http)
  {"op": "sleep", "seconds": S}
                                              waits up to S seconds (default 10) for a server
                                              notification M not yet waited for (e.g.
                                              "notifications/tools/list_changed")
--answer-client-requests declares sampling and elicitation: sampling answers "sampled: <last
user text>", elicitation accepts with {"username": "py-user", "email": "py@example.com"}; each
request is listed in the report's "client_requests" ({"method", "params"}), and every log
message the server sends in "logs".

The last stdout line is the report:
  {"ok": bool, "protocol_version": str, "server_info": {...}, "server_capabilities": {...},
   "results": [{"op": ..., "ok": bool, "result": {...} | "error": {...}, "progress": [...]}],
   "notifications": [method, ...]  every server notification, in arrival order,
   "error": null | {"type": ..., "message": ..., "code": ...}}
"ok" is about the connection as a whole; each action has its own "ok".
"""

import argparse
import asyncio
import json
import sys
import traceback
import warnings
from contextlib import AsyncExitStack

import httpx2
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

MAX_PAGES = 1000


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def describe_error(exc):
    if isinstance(exc, MCPError):
        return {"type": "MCPError", "code": exc.code, "message": exc.message, "data": exc.data}
    if isinstance(exc, BaseExceptionGroup):
        inner = [describe_error(e) for e in exc.exceptions]
        if len(inner) == 1:
            return inner[0]
        return {"type": type(exc).__name__, "message": str(exc), "errors": inner}
    return {"type": type(exc).__name__, "message": str(exc)}


async def list_all(fetch, key):
    items, pages, cursor = [], 0, None
    while True:
        page = await fetch(cursor=cursor)
        pages += 1
        items.extend(dump(page).get(key, []))
        cursor = page.next_cursor
        if not cursor or pages >= MAX_PAGES:
            return {key: items, "pages": pages}


def completion_ref(ref):
    if ref.get("type") == "ref/prompt":
        return types.PromptReference(type="ref/prompt", name=ref["name"])
    return types.ResourceTemplateReference(type="ref/resource", uri=ref["uri"])


class Inbox:
    """Server notifications as they arrive; wait_notification takes them one at a time."""

    def __init__(self, report):
        self.report = report
        self.pending = []
        self.arrived = asyncio.Event()

    async def on_message(self, message):
        method = getattr(message, "method", None)
        if method is None:  # a transport-level exception, not a notification
            return
        self.report["notifications"].append(method)
        self.pending.append(method)
        self.arrived.set()

    async def take(self, method, timeout):
        async with asyncio.timeout(timeout):
            while method not in self.pending:
                self.arrived.clear()
                await self.arrived.wait()
        self.pending.remove(method)
        return {"method": method}


async def run_action(client, action, inbox, http):
    op = action.get("op")
    record = {"op": op, "ok": False}
    progress = []

    async def on_progress(value, total, message):
        progress.append({"progress": value, "total": total, "message": message})

    try:
        if op == "list_tools":
            result = await list_all(client.list_tools, "tools")
        elif op == "list_resources":
            result = await list_all(client.list_resources, "resources")
        elif op == "list_resource_templates":
            result = await list_all(client.list_resource_templates, "resourceTemplates")
        elif op == "list_prompts":
            result = await list_all(client.list_prompts, "prompts")
        elif op == "call_tool":
            callback = on_progress if action.get("progress") else None
            res = await client.call_tool(action["name"], action.get("arguments"), progress_callback=callback)
            result = dump(res)
            if callback is not None:
                record["progress"] = progress
        elif op == "read_resource":
            result = dump(await client.read_resource(action["uri"]))
        elif op == "subscribe":
            result = dump(await client.subscribe_resource(action["uri"]))
        elif op == "get_prompt":
            result = dump(await client.get_prompt(action["name"], action.get("arguments")))
        elif op == "complete":
            res = await client.complete(completion_ref(action["ref"]), action["argument"], action.get("context"))
            result = dump(res)
        elif op == "set_logging_level":
            result = dump(await client.set_logging_level(action["level"]))
        elif op == "ping":
            result = dump(await client.send_ping())
        elif op == "wait_notification":
            result = await inbox.take(action["method"], float(action.get("timeout", 10)))
        elif op == "set_token":
            if http is None:
                raise ValueError("set_token needs the streamable-http transport")
            http.headers["Authorization"] = f"Bearer {action['token']}"
            result = {}
        elif op == "call_tool_cancelled":
            # The caller gives up after `after` seconds: the SDK cancels the request (a
            # `notifications/cancelled`, or on 2026-07-28 closing the response stream).
            try:
                async with asyncio.timeout(float(action["after"])):
                    await client.call_tool(action["name"], action.get("arguments"))
                result = {"cancelled": False}
            except TimeoutError:
                result = {"cancelled": True}
        elif op == "listen":
            # 2026-07-28: a subscriptions/listen stream; the first `events` change events it yields.
            wanted = int(action.get("events", 1))
            events = []
            async with asyncio.timeout(float(action.get("timeout", 10))):
                async with client.listen(
                    tools_list_changed=bool(action.get("tools")),
                    prompts_list_changed=bool(action.get("prompts")),
                    resources_list_changed=bool(action.get("resources")),
                    resource_subscriptions=action.get("uris", []),
                ) as sub:
                    async for event in sub:
                        events.append(type(event).__name__)
                        if len(events) >= wanted:
                            break
            result = {"events": events}
        elif op == "sleep":
            await asyncio.sleep(float(action["seconds"]))
            result = {}
        else:
            raise ValueError(f"unknown op {op!r}")
        record["ok"] = True
        record["result"] = result
    except Exception as exc:  # each action reports its own failure; the run goes on
        record["error"] = describe_error(exc)
    return record


def key_values(pairs):
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value
    return out


def client_callbacks(args, report, inbox):
    """Sampling/elicitation answers, a logging sink and the notification inbox."""
    async def on_log(params):
        report["logs"].append(dump(params))

    callbacks = {"logging_callback": on_log, "message_handler": inbox.on_message}
    if not args.answer_client_requests:
        return callbacks

    async def on_sampling(context, params):
        report["client_requests"].append({"method": "sampling/createMessage", "params": dump(params)})
        said = ""
        for message in params.messages:
            content = message.content
            if getattr(content, "type", None) == "text":
                said = content.text
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled: {said}"),
            model="reflow-e2e",
            stop_reason="endTurn",
        )

    async def on_elicitation(context, params):
        report["client_requests"].append({"method": "elicitation/create", "params": dump(params)})
        if getattr(params, "mode", None) == "url":
            return types.ElicitResult(action="accept")
        content = {"username": "py-user", "email": "py@example.com"}
        # Every field the form asks for gets a value of its type (strings name the user).
        schema = dump(params).get("requestedSchema") or {}
        for name, prop in (schema.get("properties") or {}).items():
            kind = prop.get("type") if isinstance(prop, dict) else None
            content.setdefault(name, {"boolean": True, "integer": 1, "number": 1}.get(kind, "py-user"))
        return types.ElicitResult(action="accept", content=content)

    async def on_roots(context):
        report["client_requests"].append({"method": "roots/list", "params": {}})
        return types.ListRootsResult(roots=[types.Root(uri="file:///reflow-e2e", name="e2e")])

    callbacks["sampling_callback"] = on_sampling
    callbacks["elicitation_callback"] = on_elicitation
    callbacks["list_roots_callback"] = on_roots
    return callbacks


async def connect(stack, args, report, inbox):
    headers = key_values(args.header)
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    http = None
    if args.transport == "streamable-http":
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(args.timeout), trust_env=False)
        )
        server = streamable_http_client(args.url, http_client=http)
    elif args.transport == "sse":
        server = sse_client(args.url, headers=headers, timeout=args.timeout, sse_read_timeout=args.timeout)
    else:
        server = StdioServerParameters(command=args.command, args=args.arg, env=key_values(args.env) or None)
    client = Client(
        server, mode=args.mode, cache=None, read_timeout_seconds=args.timeout, **client_callbacks(args, report, inbox)
    )
    return await stack.enter_async_context(client), http


async def run(args, report):
    actions = json.loads(args.actions)
    inbox = Inbox(report)
    async with AsyncExitStack() as stack:
        client, http = await connect(stack, args, report, inbox)
        report["protocol_version"] = client.protocol_version
        report["server_info"] = dump(client.server_info) if client.server_info else None
        report["server_capabilities"] = dump(client.server_capabilities)
        for action in actions:
            report["results"].append(await run_action(client, action, inbox, http))
    report["ok"] = True


def parse_args():
    p = argparse.ArgumentParser(description="Reflow e2e MCP client (official Python SDK)")
    p.add_argument("--transport", choices=["streamable-http", "sse", "stdio"], default="streamable-http")
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("--header", action="append", default=[], help="extra HTTP header K=V")
    p.add_argument("--command", help="stdio: program to run")
    p.add_argument("--arg", action="append", default=[], help="stdio: one program argument")
    p.add_argument("--env", action="append", default=[], help="stdio: extra environment K=V")
    p.add_argument("--mode", default="legacy", help="Client mode: legacy (initialize) or auto (discover first)")
    p.add_argument("--timeout", type=float, default=20.0, help="per-request timeout, seconds")
    p.add_argument("--deadline", type=float, default=50.0, help="whole-run deadline, seconds")
    p.add_argument("--actions", default="[]")
    p.add_argument("--answer-client-requests", action="store_true", help="declare sampling and elicitation")
    args = p.parse_args()
    if args.transport == "stdio" and not args.command:
        p.error("--command is required for stdio")
    if args.transport != "stdio" and not args.url:
        p.error("--url is required for HTTP transports")
    return args


async def main():
    args = parse_args()
    report = {
        "ok": False,
        "protocol_version": None,
        "server_info": None,
        "results": [],
        "client_requests": [],
        "logs": [],
        "notifications": [],
        "error": None,
    }
    try:
        async with asyncio.timeout(args.deadline):
            await run(args, report)
    except BaseException as exc:  # noqa: BLE001 - the report must always be printed
        report["ok"] = False
        report["error"] = describe_error(exc)
        traceback.print_exc(file=sys.stderr)
    print(json.dumps(report, default=str), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    sys.exit(asyncio.run(main()))
