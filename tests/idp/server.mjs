// A local OpenID Provider for Clusterra's tests, CI and demo: panva's oidc-provider with its own
// login form, real passwords, automatic consent, RP-initiated logout and (OP_TEST_HOOKS=1 only)
// hooks that tamper with the next ID token. See docs/oidc-test-provider.md.
//
// Environment:
//   OP_PORT (9000), OP_HOST (127.0.0.1), OP_ISSUER (http://127.0.0.1:$OP_PORT)
//   OP_CONFIG      JSON file {"clients": [...], "users": [...], "claims": {scope: [claim...]}}; clients
//                  and users are re-read at every lookup, so rewriting the file takes effect at once
//   OP_KEY_FILE    private signing JWK (RS256); created if missing; without it a key per start
//   OP_TEST_HOOKS  1: serve POST /__test__/next-id-token and POST /__test__/reset
//   OP_PKCE_REQUIRED  0: PKCE optional for confidential clients (default: required for every client)
import crypto from 'node:crypto';
import fs from 'node:fs';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.OP_PORT || 9000);
const host = process.env.OP_HOST || '127.0.0.1';
const issuer = process.env.OP_ISSUER || `http://127.0.0.1:${port}`;
const configPath = process.env.OP_CONFIG;
const testHooks = process.env.OP_TEST_HOOKS === '1';
const pkceRequired = process.env.OP_PKCE_REQUIRED !== '0';

if (!configPath) {
  console.error('OP_CONFIG must name a JSON file with "clients" and "users"');
  process.exit(2);
}

function readConfig() {
  const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
  return { clients: config.clients ?? [], users: config.users ?? [], claims: config.claims ?? {} };
}

// ---------- signing key ----------
async function loadSigningKey(path) {
  if (path && fs.existsSync(path)) {
    return JSON.parse(fs.readFileSync(path, 'utf8'));
  }
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
  if (path) {
    fs.writeFileSync(path, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600 });
  }
  return jwk;
}
const signingJwk = await loadSigningKey(process.env.OP_KEY_FILE);

// ---------- users (re-read from OP_CONFIG at every lookup) ----------
const STANDARD_CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'preferred_username', 'given_name', 'family_name', 'nickname', 'picture', 'locale', 'zoneinfo', 'updated_at'],
  groups: ['groups'],
};

// Claims per scope, fixed at start: the standard ones, the config's "claims", and every other key a
// user has at start (released with "openid", so always). A claim first added to a user later is not
// released unless the config's "claims" named it at start.
function claimsConfig() {
  const { users, claims } = readConfig();
  const known = new Set([...Object.values(STANDARD_CLAIMS).flat(), ...Object.values(claims).flat(), 'password']);
  const extra = [...new Set(users.flatMap(Object.keys))].filter((key) => !known.has(key));
  const merged = { ...STANDARD_CLAIMS, openid: [...STANDARD_CLAIMS.openid, ...extra] };
  for (const [scope, names] of Object.entries(claims)) {
    merged[scope] = [...new Set([...(merged[scope] ?? []), ...names])];
  }
  return merged;
}
const claims = claimsConfig();

function sameSecret(a, b) {
  const digest = (value) => crypto.createHash('sha256').update(String(value)).digest();
  return crypto.timingSafeEqual(digest(a), digest(b));
}

function userBySub(sub) {
  return readConfig().users.find((user) => user.sub === sub);
}

function userByLogin(login, password) {
  const wanted = String(login ?? '').trim().toLowerCase();
  const user = readConfig().users.find((u) => [u.email, u.preferred_username, u.sub]
    .some((value) => typeof value === 'string' && value.toLowerCase() === wanted));
  // Compare a password even for an unknown login, so both take the same time.
  const ok = sameSecret(user?.password ?? crypto.randomUUID(), password ?? '');
  return user && ok ? user : undefined;
}

async function findAccount(ctx, sub) {
  if (!userBySub(sub)) {
    return undefined;
  }
  return {
    accountId: sub,
    async claims() {
      const { password, ...rest } = userBySub(sub) ?? { sub };
      return { email_verified: true, ...rest };
    },
  };
}

// ---------- storage: in memory, clients from OP_CONFIG ----------
const store = new Map(); // "Model:id" -> {payload, expiresAt}
const grantMembers = new Map(); // grantId -> Set of "Model:id"
const sessionUids = new Map(); // Session uid -> id

class MemoryStore {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (this.model === 'Session') sessionUids.set(payload.uid, id);
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() { return undefined; }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

function forgetEverything() {
  store.clear();
  grantMembers.clear();
  sessionUids.clear();
}

// Clients are looked up in OP_CONFIG each time (oidc-provider caches a client by its metadata, so
// a changed entry is a new client): a test can add a redirect URI while the provider runs.
const configClients = {
  async find(id) {
    const client = readConfig().clients.find((c) => c.client_id === id);
    if (!client) return undefined;
    return {
      response_types: ['code'],
      grant_types: ['authorization_code'],
      post_logout_redirect_uris: [],
      ...client,
    };
  },
};

// Consent is automatic: every client in OP_CONFIG is first party. The grant holds what was asked.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  const grant = (grantId && await oidc.provider.Grant.find(grantId))
    || new oidc.provider.Grant({ accountId: oidc.account.accountId, clientId: oidc.client.clientId });
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

// ---------- pages ----------
function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:24em;margin:3em auto}label,input,button{display:block;width:100%;margin:.3em 0}.error{color:#b00}</style>
</head><body><h1>${esc(title)}</h1>
${body}
</body></html>`;
}

function loginPage(uid, clientId, { login = '', error = '' } = {}) {
  return page('Sign in', `<p>Local test identity provider, for <code>${esc(clientId)}</code>.</p>
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="login">Email or username</label><input id="login" name="login" value="${esc(login)}" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form>`);
}

// RP-initiated logout: the provider's form (its xsrf field) plus logout=yes, submitted by a script;
// without scripts (requests) the client posts the form itself.
async function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `${form.replace('</form>', '<input type="hidden" name="logout" value="yes"><button type="submit">Sign out</button></form>')}
<script>document.getElementById('op.logoutForm').submit()</script>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p>You are signed out of the local test identity provider.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out).map(([key, value]) => `<p><strong>${esc(key)}</strong>: ${esc(value)}</p>`).join('\n'));
}

// ---------- the provider ----------
const provider = new Provider(issuer, {
  adapter: (model) => (model === 'Client' ? configClients : new MemoryStore(model)),
  jwks: { keys: [signingJwk] },
  findAccount,
  loadExistingGrant,
  claims,
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  pkce: { required: () => pkceRequired },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  ttl: { AccessToken: 3600, IdToken: 3600, Interaction: 3600, Session: 86400, Grant: 86400 }, // seconds
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError,
});

async function readBody(req, limit = 64 * 1024) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// Our interaction routes: GET /interaction/:uid shows the form, POST /interaction/:uid/login checks it.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
  if (!match) return next();
  ctx.set('Cache-Control', 'no-store');
  try {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, params } = details;
    if (uid !== match[1]) throw Object.assign(new Error('interaction mismatch'), { status: 400 });
    if (prompt.name === 'consent') { // not expected (loadExistingGrant grants), but never stop here
      const grant = new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      grant.addOIDCScope(params.scope);
      const grantId = await grant.save();
      ctx.status = 303;
      return ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } }));
    }
    if (ctx.method === 'GET' && !match[2]) {
      ctx.type = 'html';
      ctx.body = loginPage(uid, params.client_id);
      return undefined;
    }
    if (ctx.method !== 'POST' || !match[2]) {
      ctx.status = 405;
      return undefined;
    }
    const form = new URLSearchParams(await readBody(ctx.req));
    const user = userByLogin(form.get('login'), form.get('password'));
    if (!user) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(uid, params.client_id, { login: form.get('login'), error: 'Invalid credentials' });
      return undefined;
    }
    const returnTo = await provider.interactionResult(
      ctx.req, ctx.res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false },
    );
    ctx.status = 303;
    return ctx.redirect(returnTo);
  } catch (err) {
    ctx.status = err.status || err.statusCode || 500;
    ctx.type = 'html';
    ctx.body = page('Error', `<p>${esc(err.error || 'error')}: ${esc(err.error_description || err.message)}</p>`);
    return undefined;
  }
});

// ---------- test hooks: tamper with the next ID token from the token endpoint ----------
const MODES = new Set(['forged', 'wrong-aud', 'wrong-iss', 'expired', 'wrong-nonce', 'wrong-azp']);
let nextIdTokenMode = null;

async function tamper(idToken, mode) {
  const header = jose.decodeProtectedHeader(idToken);
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  const other = 'another-client';
  switch (mode) {
    case 'wrong-aud': claims.aud = other; break;
    case 'wrong-iss': claims.iss = 'http://wrong-issuer.invalid'; break;
    case 'expired': claims.iat = now - 7200; claims.exp = now - 3600; break;
    case 'wrong-nonce': claims.nonce = 'not-the-nonce-that-was-sent'; break;
    case 'wrong-azp': claims.aud = [claims.aud, other].flat(); claims.azp = other; break;
    default: break; // forged: the same claims
  }
  const key = mode === 'forged'
    ? (await jose.generateKeyPair(header.alg)).privateKey
    : await jose.importJWK(signingJwk, header.alg);
  return new jose.SignJWT(claims).setProtectedHeader(header).sign(key); // forged keeps the real kid
}

if (testHooks) {
  const tokenPath = provider.pathFor('token');
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.path === '/__test__/next-id-token') {
      let mode;
      try {
        ({ mode } = JSON.parse(await readBody(ctx.req)));
      } catch {
        mode = undefined;
      }
      if (!MODES.has(mode)) {
        ctx.status = 400;
        ctx.body = { error: `mode must be one of ${[...MODES].join(', ')}` };
        return undefined;
      }
      nextIdTokenMode = mode;
      ctx.body = { mode };
      return undefined;
    }
    if (ctx.method === 'POST' && ctx.path === '/__test__/reset') {
      nextIdTokenMode = null;
      forgetEverything();
      ctx.body = { reset: true };
      return undefined;
    }
    await next();
    // One shot: only a token response that carries an ID token uses up the pending mode.
    if (nextIdTokenMode && ctx.method === 'POST' && ctx.path === tokenPath && ctx.status === 200 && ctx.body?.id_token) {
      const mode = nextIdTokenMode;
      nextIdTokenMode = null;
      ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token, mode) };
    }
    return undefined;
  });
}

const server = provider.listen(port, host, () => {
  console.log(`listening ${issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
