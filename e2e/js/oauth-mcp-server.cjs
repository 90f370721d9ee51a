#!/usr/bin/env node
// Reflow e2e upstream that requires OAuth: an MCP server on the official TypeScript SDK whose
// /mcp sits behind the SDK's `requireBearerAuth` middleware. Tokens are verified by RFC 7662
// introspection at the authorization server (oidc-provider, issuing opaque tokens for this
// resource), so a revoked grant is refused at once; a token for another resource is refused
// (`expectedResource`). A 401 carries `WWW-Authenticate: Bearer resource_metadata=…` and the
// RFC 9728 metadata is served at /.well-known/oauth-protected-resource/mcp. Stateless
// Streamable HTTP (a transport per request), so every request is verified on its own.
//
// With `--verify jwt` (instead of --introspection-client) tokens are verified locally instead:
// RS256 JWTs signed by a key in `<issuer>/jwks`, `iss` = the issuer, unexpired, `aud` = this
// server's /mcp (an RFC 8693 exchanged token, which the provider does not introspect).
//
// POST /test/reject-next makes the next token check fail once (a refresh-on-401 test).
// Tools: `whoami` -> "sub=<subject> client=<client_id>" of the caller's token;
//        `auth_stats` -> {"unauthorized": n, "verified": n} counted since start;
//        `token_tail` -> the last 24 characters of the caller's token.
// Tokens are never printed.
//
// Usage: node --require force-loopback.cjs oauth-mcp-server.cjs --sdk PREFIX --port PORT
//        --issuer URL (--introspection-client ID:SECRET | --verify jwt)
'use strict';

const crypto = require('node:crypto');

const path = require('node:path');
const { createRequire } = require('node:module');

function optArg(name) {
  const i = process.argv.indexOf(name);
  return i < 0 || i + 1 >= process.argv.length ? null : process.argv[i + 1];
}

// An RS256 JWT of `issuer` for `audience`, verified with the issuer's JWKS; null if not.
async function verifyJwt(issuer, audience, token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
  } catch { return null; }
  if (header.alg !== 'RS256') return null;
  const resp = await fetch(`${issuer}/jwks`, { signal: AbortSignal.timeout(5000) });
  const { keys } = resp.ok ? await resp.json() : { keys: [] };
  const jwk = (keys || []).find((k) => k.kid === header.kid);
  if (!jwk) return null;
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const ok = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), key,
    Buffer.from(parts[2], 'base64url'));
  if (!ok || claims.iss !== issuer) return null;
  if (typeof claims.exp !== 'number' || claims.exp <= Math.floor(Date.now() / 1000)) return null;
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  return aud.includes(audience) ? claims : null;
}

function arg(name) {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`${name} is required`);
  return process.argv[i + 1];
}

async function main() {
  const sdk = createRequire(path.join(path.resolve(arg('--sdk')), 'reflow-e2e.cjs'));
  const port = Number(arg('--port'));
  const issuer = arg('--issuer');
  const jwtMode = optArg('--verify') === 'jwt';
  const [clientId, clientSecret] = jwtMode ? ['', ''] : arg('--introspection-client').split(':');
  const { McpServer } = sdk('@modelcontextprotocol/sdk/server/mcp.js');
  const { StreamableHTTPServerTransport } = sdk('@modelcontextprotocol/sdk/server/streamableHttp.js');
  const { createMcpExpressApp } = sdk('@modelcontextprotocol/sdk/server/express.js');
  const { requireBearerAuth } = sdk('@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js');
  const { InvalidTokenError } = sdk('@modelcontextprotocol/sdk/server/auth/errors.js');

  const base = `http://127.0.0.1:${port}`;
  const resource = `${base}/mcp`;
  const metadataUrl = `${base}/.well-known/oauth-protected-resource/mcp`;
  const stats = { unauthorized: 0, verified: 0 };
  const basic = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64');

  // POST /test/reject-next: the next token check fails as if the token had been revoked
  // (exercises a gateway's refresh-on-401; loopback test server only).
  let rejectNext = 0;
  const verifier = {
    async verifyAccessToken(token) {
      if (rejectNext > 0) {
        rejectNext -= 1;
        throw new InvalidTokenError('rejected once by the test');
      }
      if (jwtMode) {
        const claims = await verifyJwt(issuer, resource, token);
        if (!claims) throw new InvalidTokenError('not a valid token for this resource');
        return {
          token,
          clientId: claims.client_id,
          scopes: typeof claims.scope === 'string' ? claims.scope.split(' ') : [],
          expiresAt: claims.exp,
          resource: new URL(resource),
          extra: { sub: claims.sub },
        };
      }
      const resp = await fetch(`${issuer}/token/introspection`, {
        method: 'POST',
        headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }).toString(),
        signal: AbortSignal.timeout(5000),
      });
      const body = resp.ok ? await resp.json() : { active: false };
      if (!body.active) throw new InvalidTokenError('token is not active');
      return {
        token,
        clientId: body.client_id,
        scopes: typeof body.scope === 'string' ? body.scope.split(' ') : [],
        expiresAt: body.exp,
        resource: new URL(Array.isArray(body.aud) ? body.aud[0] : body.aud),
        extra: { sub: body.sub },
      };
    },
  };
  const auth = requireBearerAuth({ verifier, resourceMetadataUrl: metadataUrl, expectedResource: new URL(resource) });
  const counted = (req, res, next) => {
    res.on('finish', () => {
      if (res.statusCode === 401) stats.unauthorized += 1;
      else stats.verified += 1;
    });
    auth(req, res, next);
  };

  const app = createMcpExpressApp();
  app.get('/.well-known/oauth-protected-resource/mcp', (_req, res) => {
    res.json({ resource, authorization_servers: [issuer], scopes_supported: ['mcp'], bearer_methods_supported: ['header'] });
  });

  app.post('/mcp', counted, async (req, res) => {
    const server = new McpServer({ name: 'reflow-oauth-upstream', version: '1.0.0' });
    server.registerTool('whoami', { description: 'Who the bearer token is for', inputSchema: {} },
      async (_args, extra) => ({ content: [{ type: 'text', text: `sub=${extra.authInfo.extra.sub} client=${extra.authInfo.clientId}` }] }));
    // The token's last 24 characters (its signature's end): lets a test tell tokens apart
    // and look for them in logs without the server ever printing one.
    server.registerTool('token_tail', { description: 'The end of the bearer token', inputSchema: {} },
      async (_args, extra) => ({ content: [{ type: 'text', text: String(extra.authInfo.token).slice(-24) }] }));
    server.registerTool('auth_stats', { description: 'Token checks so far', inputSchema: {} },
      async () => ({ content: [{ type: 'text', text: JSON.stringify(stats) }] }));
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => { transport.close(); server.close(); });
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
  app.post('/test/reject-next', (_req, res) => { rejectNext += 1; res.json({ rejectNext }); });
  const notAllowed = (_req, res) => res.status(405).set('allow', 'POST').end();
  app.get('/mcp', counted, notAllowed);
  app.delete('/mcp', counted, notAllowed);

  app.listen(port, '127.0.0.1', (err) => {
    if (err) { console.error(err); process.exit(1); }
    console.log(`reflow-oauth-upstream listening on ${port}`);
  });
}

main().catch((e) => { console.error(`oauth-mcp-server failed: ${e && e.stack ? e.stack : e}`); process.exit(1); });
