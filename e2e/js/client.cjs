#!/usr/bin/env node
// Reflow e2e MCP client: drives the official TypeScript SDK (@modelcontextprotocol/sdk) against
// one Streamable HTTP server and prints a JSON report. Run by reflow_e2e::harness::typescript.
//
// Usage: node client.cjs --sdk PREFIX --url URL [--token T] [--header K=V]... --actions JSON
//        [--sampling-reply TEXT] [--elicitation-reply JSON] [--no-sampling] [--no-elicitation]
//        [--timeout SECONDS] [--deadline SECONDS]
//
// --sdk is the npm prefix the SDK is installed under (the harness's cache). --actions is a JSON
// list with the same shapes as e2e/py/client.py's (list_tools, call_tool with "progress", ...).
// The client declares sampling, elicitation and roots unless told not to, and answers sampling
// with --sampling-reply and elicitation with --elicitation-reply (accept + that content).
//
// The last stdout line is the report:
//   {"ok": bool, "protocol_version": str, "server_info": {...}, "server_capabilities": {...},
//    "results": [{"op", "ok", "result" | "error", "progress"?}],
//    "server_requests": [{"method", "params"}], "notifications": [{"method", "params"}],
//    "error": null | {...}}
'use strict';

const path = require('node:path');
const { createRequire } = require('node:module');

function parseArgs(argv) {
  const args = {
    header: [],
    actions: '[]',
    timeout: 20,
    deadline: 50,
    sampling: true,
    elicitation: true,
    samplingReply: 'reflow-e2e sampled',
    elicitationReply: '{}',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`${a} needs a value`);
      return argv[i];
    };
    switch (a) {
      case '--sdk': args.sdk = next(); break;
      case '--url': args.url = next(); break;
      case '--token': args.token = next(); break;
      case '--header': args.header.push(next()); break;
      case '--actions': args.actions = next(); break;
      case '--timeout': args.timeout = Number(next()); break;
      case '--deadline': args.deadline = Number(next()); break;
      case '--sampling-reply': args.samplingReply = next(); break;
      case '--elicitation-reply': args.elicitationReply = next(); break;
      case '--no-sampling': args.sampling = false; break;
      case '--no-elicitation': args.elicitation = false; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!args.sdk || !args.url) throw new Error('--sdk and --url are required');
  return args;
}

function describeError(err) {
  if (err && typeof err.code === 'number') {
    // McpError's message is prefixed "MCP error <code>: "; report the server's own message.
    const message = String(err.message || '').replace(/^MCP error -?\d+: /, '');
    return { type: 'McpError', code: err.code, message, data: err.data };
  }
  return { type: (err && err.name) || 'Error', message: String((err && err.message) || err) };
}

async function listAll(fetch, key) {
  const items = [];
  let cursor;
  let pages = 0;
  do {
    const page = await fetch(cursor === undefined ? {} : { cursor });
    pages += 1;
    items.push(...(page[key] || []));
    cursor = page.nextCursor;
  } while (cursor && pages < 1000);
  return { [key]: items, pages };
}

async function runAction(client, action, options) {
  const record = { op: action.op, ok: false };
  const progress = [];
  try {
    let result;
    switch (action.op) {
      case 'list_tools': result = await listAll((p) => client.listTools(p, options), 'tools'); break;
      case 'list_resources': result = await listAll((p) => client.listResources(p, options), 'resources'); break;
      case 'list_resource_templates':
        result = await listAll((p) => client.listResourceTemplates(p, options), 'resourceTemplates');
        break;
      case 'list_prompts': result = await listAll((p) => client.listPrompts(p, options), 'prompts'); break;
      case 'call_tool': {
        const opts = { ...options };
        if (action.progress) {
          opts.onprogress = (p) => progress.push(p);
          record.progress = progress;
        }
        result = await client.callTool({ name: action.name, arguments: action.arguments || {} }, undefined, opts);
        break;
      }
      case 'call_tool_cancelled': {
        // Gives up after `after` seconds: the SDK sends notifications/cancelled for the request.
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort('reflow-e2e gave up'), action.after * 1000);
        try {
          await client.callTool({ name: action.name, arguments: action.arguments || {} }, undefined,
            { ...options, signal: controller.signal });
          result = { cancelled: false };
        } catch (err) {
          if (!controller.signal.aborted) throw err;
          result = { cancelled: true };
        } finally {
          clearTimeout(timer);
        }
        break;
      }
      case 'read_resource': result = await client.readResource({ uri: action.uri }, options); break;
      case 'get_prompt':
        result = await client.getPrompt({ name: action.name, arguments: action.arguments || {} }, options);
        break;
      case 'complete':
        result = await client.complete({ ref: action.ref, argument: action.argument }, options);
        break;
      case 'set_logging_level': result = await client.setLoggingLevel(action.level, options); break;
      case 'ping': result = await client.ping(options); break;
      case 'subscribe': result = await client.subscribeResource({ uri: action.uri }, options); break;
      case 'sleep':
        await new Promise((resolve) => setTimeout(resolve, action.seconds * 1000));
        result = {};
        break;
      default: throw new Error(`unknown op ${action.op}`);
    }
    record.ok = true;
    record.result = result;
  } catch (err) {
    record.error = describeError(err);
  }
  return record;
}

async function run(args, report) {
  const sdk = createRequire(path.join(path.resolve(args.sdk), 'reflow-e2e.cjs'));
  const { Client } = sdk('@modelcontextprotocol/sdk/client/index.js');
  const { StreamableHTTPClientTransport } = sdk('@modelcontextprotocol/sdk/client/streamableHttp.js');
  const types = sdk('@modelcontextprotocol/sdk/types.js');

  const headers = {};
  for (const pair of args.header) {
    const i = pair.indexOf('=');
    headers[pair.slice(0, i)] = pair.slice(i + 1);
  }
  if (args.token) headers.Authorization = `Bearer ${args.token}`;

  const capabilities = { roots: { listChanged: true } };
  if (args.sampling) capabilities.sampling = {};
  if (args.elicitation) capabilities.elicitation = { form: {}, url: {} };
  const client = new Client({ name: 'reflow-e2e-ts', version: '1.0.0' }, { capabilities });

  if (args.sampling) {
    client.setRequestHandler(types.CreateMessageRequestSchema, async (req) => {
      report.server_requests.push({ method: req.method, params: req.params });
      return {
        role: 'assistant',
        content: { type: 'text', text: args.samplingReply },
        model: 'reflow-e2e',
        stopReason: 'endTurn',
      };
    });
  }
  if (args.elicitation) {
    client.setRequestHandler(types.ElicitRequestSchema, async (req) => {
      report.server_requests.push({ method: req.method, params: req.params });
      if (req.params && req.params.mode === 'url') return { action: 'accept' };
      return { action: 'accept', content: JSON.parse(args.elicitationReply) };
    });
  }
  client.setRequestHandler(types.ListRootsRequestSchema, async (req) => {
    report.server_requests.push({ method: req.method, params: req.params });
    return { roots: [{ uri: 'file:///reflow-e2e', name: 'e2e' }] };
  });
  for (const schema of [
    types.LoggingMessageNotificationSchema,
    types.ToolListChangedNotificationSchema,
    types.ResourceListChangedNotificationSchema,
    types.PromptListChangedNotificationSchema,
    types.ResourceUpdatedNotificationSchema,
  ]) {
    client.setNotificationHandler(schema, (n) => {
      report.notifications.push({ method: n.method, params: n.params });
    });
  }

  const transport = new StreamableHTTPClientTransport(new URL(args.url), { requestInit: { headers } });
  await client.connect(transport);
  report.protocol_version = transport.protocolVersion || null;
  report.server_info = client.getServerVersion() || null;
  report.server_capabilities = client.getServerCapabilities() || null;
  const options = { timeout: args.timeout * 1000 };
  for (const action of JSON.parse(args.actions)) {
    report.results.push(await runAction(client, action, options));
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
  report.ok = true;
}

async function main() {
  const report = {
    ok: false,
    protocol_version: null,
    server_info: null,
    server_capabilities: null,
    results: [],
    server_requests: [],
    notifications: [],
    error: null,
  };
  let timer;
  try {
    const args = parseArgs(process.argv.slice(2));
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`deadline of ${args.deadline}s passed`)), args.deadline * 1000);
    });
    await Promise.race([run(args, report), deadline]);
  } catch (err) {
    report.ok = false;
    report.error = describeError(err);
    process.stderr.write(`${(err && err.stack) || err}\n`);
  } finally {
    clearTimeout(timer);
  }
  // Open sockets (a GET stream) must not keep the process alive after the report, but exiting
  // before a pipe has taken a report over 64 KiB would cut it: exit once it is written.
  process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(report.ok ? 0 : 1));
}

main();
