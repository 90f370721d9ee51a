#!/usr/bin/env node
// Reflow e2e identity provider and authorization server: `oidc-provider` (npm, panva) configured
// from JSON in $REFLOW_OIDC_CONFIG, set by reflow_e2e::harness::oidc. It plays the users' IdP (the gateway
// verifies its RS256 JWT access tokens through discovery + JWKS) and an upstream's authorization
// server (authorization code + PKCE S256, RFC 8707 resource indicators -> JWT access tokens with
// `aud` = the resource, refresh tokens, RFC 7009 revocation, RFC 7662 introspection, optional
// dynamic client registration, an RFC 8693 token-exchange grant, and optional OAuth Client ID
// Metadata Documents: with `client_id_metadata_documents`, discovery says
// `client_id_metadata_document_supported: true` and an unknown client id that is an http(s) URL
// on a loopback host is fetched (no redirect) and accepted when the document's `client_id` is
// that URL and it holds no secret. oidc-provider's own CIMD feature insists on https, which
// the loopback e2e gateway does not speak; each fetch is recorded as a `cimd_fetch` event).
//
// Login and consent are oidc-provider's devInteractions pages (`/interaction/<uid>`): a form with
// `login` + `password` (the password is not checked; the login must be a configured account) and
// a consent page with one "Continue" button; a headless browser fills them.
//
// Test-only endpoints, all under /test/ and guarded by the header `x-test-secret` (random per
// run, known only to the harness):
//   POST /test/mint    {sub, aud, ttl?, scope?} -> {access_token}: a JWT exactly like the ones
//                      the token endpoint issues, for tests that need a caller without a browser.
//   POST /test/opaque  {resource}: access tokens for that resource are opaque from now on
//                      (RFC 7662 introspection sees a revoked grant at once; JWTs it cannot).
//   GET  /test/events  every token-endpoint success (grant_type, client, account) and every
//                      revoked grant, in order; tokens themselves are never recorded.
//
// Usage: node --require force-loopback.cjs oidc-provider.cjs --provider PREFIX --port PORT
'use strict';

const http = require('node:http');
const path = require('node:path');
const crypto = require('node:crypto');
const { pathToFileURL } = require('node:url');

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

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
      case '--provider': args.provider = next(); break;
      case '--port': args.port = Number(next()); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!args.provider || !args.port) throw new Error('--provider and --port are required');
  return args;
}

// The built-in users; a test may add more in `accounts`.
const BUILTIN_ACCOUNTS = {
  alice: { email: 'alice@example.test', groups: ['engineering'] },
  bob: { email: 'bob@example.test', groups: ['sales'] },
  admin: { email: 'admin@example.test', groups: ['reflow-admins'] },
};

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

// RS256 over header.payload with the provider's own signing key (so its JWKS verifies it).
function signJwt(key, kid, payload) {
  const header = { alg: 'RS256', typ: 'at+jwt', kid };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const sig = crypto.sign('sha256', Buffer.from(input), key);
  return `${input}.${b64url(sig)}`;
}

function verifyJwt(publicKey, issuer, token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  const ok = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), publicKey,
    Buffer.from(parts[2], 'base64url'));
  if (!ok) return null;
  let claims;
  try { claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString()); } catch { return null; }
  if (claims.iss !== issuer) return null;
  if (typeof claims.exp !== 'number' || claims.exp <= Math.floor(Date.now() / 1000)) return null;
  return claims;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 64 * 1024) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString()));
    req.on('error', reject);
  });
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function clientMetadata(c) {
  const m = {
    client_id: c.client_id,
    redirect_uris: c.redirect_uris || [],
    grant_types: c.grant_types || ['authorization_code', 'refresh_token'],
    response_types: c.response_types || (c.redirect_uris && c.redirect_uris.length ? ['code'] : []),
    token_endpoint_auth_method: c.client_secret ? 'client_secret_basic' : 'none',
  };
  if (c.client_secret) m.client_secret = c.client_secret;
  if (c.token_endpoint_auth_method) m.token_endpoint_auth_method = c.token_endpoint_auth_method;
  return m;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const cfg = JSON.parse(process.env.REFLOW_OIDC_CONFIG || '{}');
  const issuer = cfg.issuer;
  const accounts = { ...BUILTIN_ACCOUNTS, ...(cfg.accounts || {}) };
  const ttl = {
    access: cfg.access_token_ttl || 300,
    refresh: cfg.refresh_token_ttl || 3600,
    exchange: cfg.exchange_token_ttl || cfg.access_token_ttl || 300,
  };
  const resourceScope = cfg.resource_scope || 'mcp';
  const testSecret = cfg.test_secret;
  const events = [];
  // Resources whose access tokens are opaque (introspectable, so revocation shows at once);
  // added at run time through POST /test/opaque.
  const opaqueResources = new Set();

  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = crypto.randomBytes(8).toString('hex');
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

  const claimsOf = (sub) => {
    const a = accounts[sub];
    return a ? { sub, email: a.email, groups: a.groups || [] } : null;
  };

  const entry = path.join(args.provider, 'node_modules', 'oidc-provider', 'lib', 'index.js');
  const { default: Provider, errors } = await import(pathToFileURL(entry).href);

  const cimd = Boolean(cfg.client_id_metadata_documents);
  const memoryEntry = path.join(args.provider, 'node_modules', 'oidc-provider', 'lib', 'adapters',
    'memory_adapter.js');
  const { createMemoryAdapter } = await import(pathToFileURL(memoryEntry).href);
  const memory = createMemoryAdapter(0);
  const fetchDocument = async (id) => {
    let url;
    try { url = new URL(id); } catch { return undefined; }
    if (!['http:', 'https:'].includes(url.protocol)) return undefined;
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) return undefined;
    if (url.username || url.password || url.hash) return undefined;
    const res = await fetch(id, { redirect: 'manual', headers: { accept: 'application/json' } });
    if (res.status !== 200) return undefined;
    const text = await res.text();
    if (text.length > 5 * 1024) return undefined;
    let doc;
    try { doc = JSON.parse(text); } catch { return undefined; }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return undefined;
    if (doc.client_id !== id || 'client_secret' in doc) return undefined;
    if (doc.token_endpoint_auth_method !== 'none') return undefined;
    events.push({ kind: 'cimd_fetch', client_id: id });
    return doc;
  };
  const adapter = (model) => {
    const inner = memory(model);
    if (!cimd || model !== 'Client') return inner;
    return new Proxy(inner, {
      get(target, prop) {
        if (prop === 'find') {
          return async (id) => (await target.find(id)) || fetchDocument(id);
        }
        const v = target[prop];
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  };

  const provider = new Provider(issuer, {
    adapter,
    discovery: cimd ? { client_id_metadata_document_supported: true } : {},
    clients: (cfg.clients || []).map(clientMetadata),
    jwks: { keys: [jwk] },
    scopes: ['openid', 'offline_access', 'email', 'groups', 'profile', ...(cfg.scopes || [])],
    claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
    findAccount: async (_ctx, sub) => {
      const claims = claimsOf(sub);
      if (!claims) return undefined;
      return { accountId: sub, claims: async () => claims };
    },
    pkce: { required: () => true },
    ttl: {
      AccessToken: ttl.access,
      AuthorizationCode: 60,
      ClientCredentials: ttl.access,
      IdToken: ttl.access,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      RefreshToken: ttl.refresh,
    },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // JWT access tokens carry who the caller is, so a gateway needs no userinfo round trip.
    extraTokenClaims: async (_ctx, token) => {
      const claims = token.accountId ? claimsOf(token.accountId) : null;
      return claims ? { email: claims.email, groups: claims.groups } : undefined;
    },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      clientCredentials: { enabled: true },
      registration: { enabled: Boolean(cfg.registration) },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf || cfg.default_resource || undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource) => {
          let url;
          try { url = new URL(resource); } catch { throw new errors.InvalidTarget(); }
          if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new errors.InvalidTarget();
          return {
            scope: resourceScope,
            audience: resource,
            accessTokenTTL: ttl.access,
            ...(opaqueResources.has(resource)
              ? { accessTokenFormat: 'opaque' }
              : { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
          };
        },
      },
    },
  });
  provider.proxy = false;

  provider.on('grant.success', (ctx) => {
    events.push({
      kind: 'token',
      grant_type: ctx.oidc.params.grant_type,
      client_id: ctx.oidc.client && ctx.oidc.client.clientId,
      account: (ctx.oidc.entities.Account && ctx.oidc.entities.Account.accountId)
        || (ctx.oidc.entities.RefreshToken && ctx.oidc.entities.RefreshToken.accountId)
        || null,
    });
  });
  provider.on('grant.revoked', (ctx, grantId) => {
    const token = ctx.oidc.entities.RefreshToken || ctx.oidc.entities.AccessToken;
    events.push({
      kind: 'revoked',
      grant_id: grantId,
      client_id: ctx.oidc.client && ctx.oidc.client.clientId,
      account: token ? token.accountId : null,
    });
  });

  // RFC 8693: a subject token this provider issued (any audience) for an audience-scoped token.
  const exchange = async (ctx) => {
    const p = ctx.oidc.params;
    if (p.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('subject_token_type must be an access token');
    }
    const subject = verifyJwt(publicKey, issuer, p.subject_token);
    if (!subject || !claimsOf(subject.sub)) throw new errors.InvalidGrant('subject_token is not valid');
    const audience = p.audience || p.resource;
    if (!audience) throw new errors.InvalidRequest('audience or resource is required');
    const now = Math.floor(Date.now() / 1000);
    const claims = claimsOf(subject.sub);
    const token = signJwt(privateKey, kid, {
      iss: issuer, sub: subject.sub, aud: audience, iat: now, exp: now + ttl.exchange,
      jti: crypto.randomUUID(), client_id: ctx.oidc.client.clientId, scope: p.scope || resourceScope,
      email: claims.email, groups: claims.groups,
    });
    ctx.oidc.entity('Account', { accountId: subject.sub });
    ctx.body = {
      access_token: token, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer',
      expires_in: ttl.exchange,
    };
  };
  provider.registerGrantType(TOKEN_EXCHANGE, exchange,
    ['subject_token', 'subject_token_type', 'audience', 'resource', 'scope', 'requested_token_type']);

  const callback = provider.callback();
  const testRoute = async (req, res) => {
    if (!testSecret || req.headers['x-test-secret'] !== testSecret) {
      sendJson(res, 403, { error: 'forbidden' });
      return;
    }
    if (req.method === 'GET' && req.url === '/test/events') {
      sendJson(res, 200, events);
      return;
    }
    if (req.method === 'POST' && req.url === '/test/mint') {
      const body = JSON.parse((await readBody(req)) || '{}');
      const claims = claimsOf(body.sub);
      if (!claims || !body.aud) { sendJson(res, 400, { error: 'unknown sub or missing aud' }); return; }
      const now = Math.floor(Date.now() / 1000);
      const token = signJwt(privateKey, kid, {
        iss: issuer, sub: body.sub, aud: body.aud, iat: now, exp: now + (body.ttl || ttl.access),
        jti: crypto.randomUUID(), scope: body.scope || resourceScope, client_id: 'test-mint',
        email: claims.email, groups: claims.groups,
      });
      sendJson(res, 200, { access_token: token, expires_in: body.ttl || ttl.access });
      return;
    }
    if (req.method === 'POST' && req.url === '/test/opaque') {
      const body = JSON.parse((await readBody(req)) || '{}');
      if (typeof body.resource !== 'string') { sendJson(res, 400, { error: 'resource is required' }); return; }
      opaqueResources.add(body.resource);
      sendJson(res, 200, { opaque: [...opaqueResources] });
      return;
    }
    sendJson(res, 404, { error: 'not found' });
  };
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/test/')) {
      testRoute(req, res).catch((e) => sendJson(res, 400, { error: String(e.message || e) }));
    } else {
      callback(req, res);
    }
  });
  server.listen(args.port, '127.0.0.1', () => {
    process.stdout.write(`oidc-provider listening on ${issuer}\n`);
  });
}

main().catch((e) => {
  process.stderr.write(`oidc-provider failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
