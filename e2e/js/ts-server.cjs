#!/usr/bin/env node
// Reflow e2e MCP server on the official TypeScript SDK (@modelcontextprotocol/sdk, McpServer +
// Express + stateful Streamable HTTP), written from the SDK's documented API. Its tools ask the
// client through `server.server.createMessage` / `elicitInput` / `listRoots`, which carry no
// related request id: the SDK sends those on the session's standalone GET stream, and drops them
// when no GET stream is open. Run by reflow_e2e::harness::ts_server.
//
// With --event-store, each session keeps what it sent in memory (the SDK's `EventStore`
// interface), so a client that reconnects with `Last-Event-ID` gets what it missed.
//
// Usage: node --require force-loopback.cjs ts-server.cjs --sdk PREFIX --port PORT [--event-store]
'use strict';

const path = require('node:path');
const { randomUUID } = require('node:crypto');
const { createRequire } = require('node:module');

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`${a} needs a value`);
      return argv[i];
    };
    switch (a) {
      case '--sdk': args.sdk = next(); break;
      case '--port': args.port = Number(next()); break;
      case '--event-store': args.eventStore = true; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!args.sdk || !args.port) throw new Error('--sdk and --port are required');
  return args;
}

function text(t) {
  return { content: [{ type: 'text', text: t }] };
}

// Calls of `slow` that saw their cancellation (the client's notifications/cancelled, relayed).
let cancelledCalls = 0;

// The SDK's EventStore interface, in memory: ids are `<stream>|<n>`; an unknown id throws
// (the SDK answers the GET with an error, and the client may reconnect without it).
function memoryEventStore() {
  const events = [];
  return {
    async storeEvent(streamId, message) {
      const id = `${streamId}|${events.length + 1}`;
      events.push({ id, streamId, message });
      return id;
    },
    async replayEventsAfter(lastEventId, { send }) {
      const at = events.findIndex((e) => e.id === lastEventId);
      if (at < 0) throw new Error(`unknown event id ${lastEventId}`);
      const { streamId } = events[at];
      for (const e of events.slice(at + 1)) {
        if (e.streamId === streamId && e.message.jsonrpc) await send(e.id, e.message);
      }
      return streamId;
    },
  };
}

// `session`: `forget()` drops the session (404 from now on), `dropStream()` ends its GET stream.
function buildServer(sdk, session) {
  const { McpServer, ResourceTemplate } = sdk('@modelcontextprotocol/sdk/server/mcp.js');
  const z = sdk('zod');
  const server = new McpServer(
    { name: 'reflow-ts-server', version: '1.0.0' },
    { capabilities: { logging: {}, resources: { subscribe: true } } },
  );
  const types = sdk('@modelcontextprotocol/sdk/types.js');
  const subscribed = new Set();
  server.server.setRequestHandler(types.SubscribeRequestSchema, async (req) => {
    subscribed.add(req.params.uri);
    return {};
  });
  server.server.setRequestHandler(types.UnsubscribeRequestSchema, async (req) => {
    subscribed.delete(req.params.uri);
    return {};
  });
  // Tells this session about every URI it subscribed to (on the standalone stream).
  server.registerTool('touch', { description: 'Updates the subscribed resources', inputSchema: {} },
    async () => {
      for (const uri of subscribed) await server.server.sendResourceUpdated({ uri });
      return text(`touched ${subscribed.size}`);
    });

  server.registerTool('echo', { description: 'Echoes text', inputSchema: { text: z.string() } },
    async ({ text: t }) => text(`ts: ${t}`));

  // Not tied to the tools/call: goes out on the standalone GET stream.
  server.registerTool('sample', { description: 'Asks the client to sample', inputSchema: { prompt: z.string() } },
    async ({ prompt }) => {
      const res = await server.server.createMessage({
        messages: [{ role: 'user', content: { type: 'text', text: prompt } }],
        maxTokens: 32,
      });
      return text(`sampled: ${res.content.type === 'text' ? res.content.text : res.content.type}`);
    });

  server.registerTool('elicit', { description: 'Asks the client a form question', inputSchema: {} },
    async () => {
      const res = await server.server.elicitInput({
        message: 'What is your name?',
        requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] },
      });
      return text(`elicited: ${res.action} ${JSON.stringify(res.content || {})}`);
    });

  server.registerTool('elicit_url', { description: 'Asks the client to open a URL', inputSchema: {} },
    async () => {
      const res = await server.server.elicitInput({
        mode: 'url',
        message: 'Please sign in',
        url: 'https://example.com/reflow-e2e/sign-in',
        elicitationId: randomUUID(),
      });
      return text(`url elicitation: ${res.action}`);
    });

  server.registerTool('roots', { description: 'Lists the client roots', inputSchema: {} },
    async () => {
      const res = await server.server.listRoots();
      return text(`roots: ${res.roots.map((r) => r.uri).join(',')}`);
    });

  // The tied variant: the request goes out on the tools/call's own response stream.
  server.registerTool('sample_related', { description: 'Samples on the call stream', inputSchema: { prompt: z.string() } },
    async ({ prompt }, extra) => {
      const { CreateMessageResultSchema } = sdk('@modelcontextprotocol/sdk/types.js');
      const res = await extra.sendRequest({
        method: 'sampling/createMessage',
        params: { messages: [{ role: 'user', content: { type: 'text', text: prompt } }], maxTokens: 32 },
      }, CreateMessageResultSchema);
      return text(`sampled: ${res.content.text}`);
    });

  // Progress on the call's own stream, and a log line per step.
  server.registerTool('progress', { description: 'Reports three steps', inputSchema: {} },
    async (_args, extra) => {
      const token = extra._meta && extra._meta.progressToken;
      for (let step = 1; step <= 3; step++) {
        if (token !== undefined) {
          await extra.sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress: step, total: 3 } });
        }
        await server.sendLoggingMessage({ level: 'info', data: `ts step ${step}` }, extra.sessionId);
      }
      return text('progressed');
    });

  // Registers one more tool: the SDK tells the client on the standalone stream (list_changed).
  let grown = 0;
  server.registerTool('grow', { description: 'Adds a tool', inputSchema: {} }, async () => {
    grown += 1;
    server.registerTool(`grown_${grown}`, { description: 'Grown', inputSchema: {} }, async () => text('grown'));
    return text(`grew grown_${grown}`);
  });

  // Forgets this session right after answering: its next request gets 404, as after a restart.
  server.registerTool('forget', { description: 'Forgets the session', inputSchema: {} },
    async (_args, extra) => {
      setTimeout(() => session.forget(extra.sessionId), 50);
      return text('forgotten');
    });

  // Ends the session's GET stream (the SDK's `closeStandaloneSSEStream`, its polling hook),
  // waits `delayMs`, then asks the client on the standalone stream: the request reaches the
  // client only if the client reopened the stream in time, or resumed it from an event store.
  server.registerTool('sample_after_drop', { description: 'Drops the GET stream, then samples', inputSchema: { delayMs: z.number() } },
    async ({ delayMs }) => {
      session.dropStream();
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      const res = await server.server.createMessage({
        messages: [{ role: 'user', content: { type: 'text', text: 'after drop' } }],
        maxTokens: 32,
      });
      return text(`sampled: ${res.content.type === 'text' ? res.content.text : res.content.type}`);
    });

  server.registerTool('slow', { description: 'Waits until cancelled (20 s at most)', inputSchema: {} },
    async (_args, extra) => new Promise((resolve) => {
      const timer = setTimeout(() => resolve(text('not cancelled')), 20000);
      extra.signal.addEventListener('abort', () => {
        cancelledCalls += 1;
        clearTimeout(timer);
        resolve(text('cancelled'));
      });
    }));
  server.registerTool('cancelled', { description: 'How many slow calls were cancelled', inputSchema: {} },
    async () => text(`cancelled: ${cancelledCalls}`));

  server.registerResource('greeting', 'ts://static/greeting', { mimeType: 'text/plain' },
    async (uri) => ({ contents: [{ uri: uri.href, text: 'Hello from the TS SDK' }] }));
  server.registerResource('item', new ResourceTemplate('ts://items/{id}', { list: undefined }), {},
    async (uri, { id }) => ({ contents: [{ uri: uri.href, text: `item ${id}` }] }));
  server.registerPrompt('greet', { description: 'A greeting', argsSchema: { name: z.string() } },
    ({ name }) => ({ messages: [{ role: 'user', content: { type: 'text', text: `Hello, ${name}` } }] }));
  return server;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const sdk = createRequire(path.join(path.resolve(args.sdk), 'reflow-e2e.cjs'));
  const { StreamableHTTPServerTransport } = sdk('@modelcontextprotocol/sdk/server/streamableHttp.js');
  const { createMcpExpressApp } = sdk('@modelcontextprotocol/sdk/server/express.js');
  const { isInitializeRequest } = sdk('@modelcontextprotocol/sdk/types.js');

  const app = createMcpExpressApp();
  const transports = {};

  app.post('/mcp', async (req, res) => {
    const sid = req.headers['mcp-session-id'];
    let transport = sid ? transports[sid] : undefined;
    if (!transport) {
      if (sid || !isInitializeRequest(req.body)) {
        res.status(sid ? 404 : 400).json({
          jsonrpc: '2.0', id: null,
          error: { code: -32000, message: sid ? 'Session not found' : 'No session' },
        });
        return;
      }
      const created = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => { transports[id] = created; },
        eventStore: args.eventStore ? memoryEventStore() : undefined,
      });
      transport = created;
      created.onclose = () => {
        if (created.sessionId) delete transports[created.sessionId];
      };
      const session = {
        forget: (id) => { delete transports[id]; },
        dropStream: () => created.closeStandaloneSSEStream(),
      };
      await buildServer(sdk, session).connect(created);
    }
    await transport.handleRequest(req, res, req.body);
  });

  const onSession = async (req, res) => {
    const transport = transports[req.headers['mcp-session-id']];
    if (!transport) {
      res.status(404).json({ jsonrpc: '2.0', id: null, error: { code: -32000, message: 'Session not found' } });
      return;
    }
    await transport.handleRequest(req, res);
  };
  app.get('/mcp', onSession);
  app.delete('/mcp', onSession);

  app.listen(args.port, '127.0.0.1', (err) => {
    if (err) {
      console.error(err);
      process.exit(1);
    }
    console.log(`reflow-ts-server listening on ${args.port}`);
  });
}

main();
