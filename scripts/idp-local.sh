#!/usr/bin/env bash
# A local OpenID Provider for trying OIDC sign-in with the demo (tests/idp/server.mjs, the one the tests use):
# client clusterra-demo, the test users of tests/idp/users.json, on http://127.0.0.1:${OP_PORT:-9000}.
# Ctrl-C stops it. See docs/oidc-test-provider.md.
#   OP_PORT                 the provider's port (9000)
#   CLUSTERRA_PORT          the portal's port, for the redirect URIs (8000, as make demo)
#   CLUSTERRA_IDP_PASSWORD  every user's password (idp-password-123)
# Its files are in data/idp/: config.json (rewritten at each start; edits take effect while it runs),
# signing-key.json and client-secret (both kept across restarts).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "Node.js is needed (scripts/system-deps.sh demo installs it)." >&2; exit 1; }
if [ ! -f tests/idp/node_modules/.package-lock.json ] || [ tests/idp/package-lock.json -nt tests/idp/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
fi

op_port=${OP_PORT:-9000}
portal_port=${CLUSTERRA_PORT:-8000}
issuer=http://127.0.0.1:$op_port
dir=data/idp
mkdir -p "$dir"
chmod 700 "$dir"
[ -s "$dir/client-secret" ] || (umask 077 && node -e "process.stdout.write(require('node:crypto').randomBytes(24).toString('base64url'))" >"$dir/client-secret")

IDP_PASSWORD=${CLUSTERRA_IDP_PASSWORD:-idp-password-123} PORTAL_PORT=$portal_port CLIENT_SECRET=$(cat "$dir/client-secret") CONFIG_PATH=$dir/config.json \
node --input-type=module -e "
import fs from 'node:fs';
const env = process.env;
const origins = ['127.0.0.1', 'localhost'].map((host) => 'http://' + host + ':' + env.PORTAL_PORT);
const users = JSON.parse(fs.readFileSync('tests/idp/users.json', 'utf8')).map((u) => ({ ...u, password: env.IDP_PASSWORD }));
const client = {
  client_id: 'clusterra-demo',
  client_secret: env.CLIENT_SECRET,
  redirect_uris: origins.map((o) => o + '/oidc/callback/'),
  post_logout_redirect_uris: origins.map((o) => o + '/'),
};
fs.writeFileSync(env.CONFIG_PATH, JSON.stringify({ clients: [client], users }, null, 2), { mode: 0o600 });
"

cat <<EOF
Local OpenID Provider: $issuer (Ctrl-C stops it)
Users (tests/idp/users.json): alice@demo.test, bob@demo.test, carol@example.test, dave@example.test, eve@example.test
Password: ${CLUSTERRA_IDP_PASSWORD:-idp-password-123}
For the portal (redirect URIs http://127.0.0.1:$portal_port/oidc/callback/ and http://localhost:$portal_port/oidc/callback/):
  export CLUSTERRA_OIDC_ISSUER=$issuer
  export CLUSTERRA_OIDC_CLIENT_ID=clusterra-demo
  export CLUSTERRA_OIDC_CLIENT_SECRET=$(cat "$dir/client-secret")
  export CLUSTERRA_OIDC_TENANT=demo

EOF
OP_PORT=$op_port OP_HOST=127.0.0.1 OP_ISSUER=$issuer OP_CONFIG=$dir/config.json OP_KEY_FILE=$dir/signing-key.json \
  exec node tests/idp/server.mjs
